"""Pretrains the embedded default backbone: a tiny CLIP on the emoji public split.

  python experiments/pretrain.py --config=experiments/configs/pretrain_emoji.py \
      --workdir=/tmp/pretrain --export_to=ease_jax/assets/emoji_clip
"""
import ml_collections

from ease_jax import configs


def get_config() -> ml_collections.ConfigDict:
  c = configs.base_config()
  # Public split (base_config's 'skin_tone'): every emoji without a skin-tone modifier, 1,870
  # images; the toned variants stay with the clients and the test split.
  c.arch = ml_collections.ConfigDict(dict(
      image_size=32, patch_size=8, width=128, mlp_dim=512, heads=4,
      vision_layers=4, text_layers=4, projection_dim=128, context_length=24))
  c.pretrain = ml_collections.ConfigDict(dict(
      steps=1500, batch_size=128, learning_rate=2e-3, weight_decay=0.1, warmup=50,
      learn_logit_scale=False))
  return c
