"""Federated LoRA training on the embedded emoji dataset with the embedded tiny CLIP backbone.

  python experiments/train.py --config=experiments/configs/emoji_default.py --workdir=/tmp/emoji
"""
import ml_collections

from ease_jax import configs


def get_config() -> ml_collections.ConfigDict:
  return configs.base_config()
