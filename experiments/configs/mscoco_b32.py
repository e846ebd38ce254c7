r"""mscoco (Karpathy split) with CLIP vit-base-patch32 from a local Hugging Face checkpoint.

Needs a GPU. Point it at your copies:

  python experiments/train.py --config=experiments/configs/mscoco_b32.py \
      --config.model.checkpoint=/path/to/clip-vit-base-patch32 \
      --config.data.json_path=/path/to/dataset_coco.json \
      --config.data.image_root=/path/to/coco --workdir=/tmp/mscoco_b32
"""
import pathlib

import ml_collections

from ease_jax import configs


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = configs.from_file(pathlib.Path(__file__).with_name("flickr30k_b32.py"), arg)
  c.model.checkpoint = "openai/clip-vit-base-patch32"
  # COCO's Karpathy file adds 'restval' (30,504 images that train); its 5,000 'test' images test.
  # All 123,287 images are held in memory as uint8: about 18.6 GB at 224 px (data.max_images caps).
  c.data.splits = ("train", "restval", "val", "test")
  c.fed.batch_size = 64
  return c
