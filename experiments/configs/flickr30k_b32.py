r"""Flickr30K (Karpathy split) with CLIP ViT-B/32 from a local Hugging Face checkpoint.

Needs a GPU for reasonable speed. Point it at your copies:

  python experiments/train.py --config=experiments/configs/flickr30k_b32.py \
      --config.model.checkpoint=/path/to/clip-vit-base-patch32 \
      --config.data.json_path=/path/to/dataset_flickr30k.json \
      --config.data.image_root=/path/to/flickr30k-images --workdir=/tmp/flickr_b32
"""
import ml_collections

from ease_jax import configs


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = configs.base_config()
  c.model.checkpoint = "openai/clip-vit-base-patch32"  # a folder, or a repo id in the HF cache
  c.data.name = "karpathy"
  c.data.splits = ("train", "val", "test")
  c.data.label = "split"            # Karpathy data has no concepts: partition is IID by default
  c.data.partition = "iid"
  c.data.split = "karpathy"         # test = the file's own test images (1,000), as papers report
  c.data.public_fraction = 0.0      # the backbone is pretrained already
  c.data.max_length = 0             # the checkpoint's context length (77)
  c.model.logit_scale = 0.0         # the checkpoint's own temperature
  c.lora.init_std = 0.02
  c.fed.num_clients = 10
  c.fed.rounds = 10
  c.fed.batch_size = 64
  c.fed.client_lr = 1e-4
  c.eval.every = 2
  c.eval.batch_size = 128
  c.checkpoint_every = 1
  return c
