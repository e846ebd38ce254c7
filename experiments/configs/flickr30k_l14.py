r"""flickr30k (Karpathy split) with CLIP vit-large-patch14 from a local Hugging Face checkpoint.

Needs a GPU. Point it at your copies:

  python experiments/train.py --config=experiments/configs/flickr30k_l14.py \
      --config.model.checkpoint=/path/to/clip-vit-large-patch14 \
      --config.data.json_path=/path/to/dataset_flickr30k.json \
      --config.data.image_root=/path/to/flickr30k-images --workdir=/tmp/flickr30k_l14
"""
import ml_collections

from experiments.configs import flickr30k_b32


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = flickr30k_b32.get_config(arg)
  c.model.checkpoint = "openai/clip-vit-large-patch14"
  c.fed.batch_size = 32
  return c
