r"""mscoco (Karpathy split) with CLIP vit-large-patch14 from a local Hugging Face checkpoint.

Needs a GPU. Point it at your copies:

  python experiments/train.py --config=experiments/configs/mscoco_l14.py \
      --config.model.checkpoint=/path/to/clip-vit-large-patch14 \
      --config.data.json_path=/path/to/dataset_coco.json \
      --config.data.image_root=/path/to/coco --workdir=/tmp/mscoco_l14
"""
import pathlib

import ml_collections

from ease_jax import configs


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = configs.from_file(pathlib.Path(__file__).with_name("mscoco_b32.py"), arg)
  c.model.checkpoint = "openai/clip-vit-large-patch14"
  c.fed.batch_size = 32
  return c
