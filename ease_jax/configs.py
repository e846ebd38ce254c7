"""Default configuration blocks shared by the experiment configs (`experiments/configs/*.py`).

Each experiment config's `get_config()` starts from `base_config()` and overrides what it needs;
every field is documented here once. Unknown keys are rejected by `ml_collections` when they are
overridden on the command line (`--config.fed.rundos=3` is an error, not a silent no-op).
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Independent random streams (the same config and seeds give the same numbers).
  c.seeds = ml_collections.ConfigDict(dict(
      split=0,       # public / test / clients split (shared with the backbone's pretraining)
      partition=0,   # assignment of client images to clients
      init=0,        # LoRA initialisation
      sampling=0,    # clients sampled per round
      data=0,        # local shuffles
      unlearning=0,  # unlearning requests and methods' own randomness
  ))
  c.data = ml_collections.ConfigDict(dict(
      name="emoji",           # 'emoji' (embedded) or 'karpathy'
      json_path="",           # karpathy: dataset_flickr30k.json / dataset_coco.json
      image_root="",          # karpathy: image folder
      splits=("train", "restval", "val", "test"),  # karpathy splits to load
      max_images=0,           # karpathy: cap (0 = all)
      max_length=0,           # tokens per caption (0 = the model's context length)
      label="subgroup",       # per-image field for non-IID partitions and concepts
      public_fraction=0.4,    # central pretraining split (never seen by clients)
      test_fraction=0.1,      # held-out split
      partition="dirichlet",  # 'iid', 'by_label' or 'dirichlet'
      dirichlet_alpha=0.5,
      min_client_size=8,
  ))
  c.model = ml_collections.ConfigDict(dict(
      checkpoint="embedded",  # 'embedded', a Hugging Face CLIP folder, or a cached repo id
  ))
  c.lora = ml_collections.ConfigDict(dict(
      rank=8,
      alpha=16.0,
      targets="qv",            # preset (qv, qkvo, qv_mlp, all, vision_qv, text_qv) or a regex
      mode="unmerged",         # 'unmerged' (x W + s x A B) or 'merged' (x (W + s A B))
      learn_logit_scale=False,
  ))
  c.fed = ml_collections.ConfigDict(dict(
      num_clients=8,
      clients_per_round=0,     # 0 = all clients every round
      rounds=20,
      local_epochs=1,
      batch_size=32,
      client_optimizer="adam",
      client_lr=2e-3,
      server_lr=1.0,           # 1.0 with no momentum = plain FedAvg
      server_momentum=0.0,
      backend="vmap",          # 'vmap', 'chunked' or 'sequential'
      chunk_size=0,            # clients per chunk for backend='chunked'
      history_size=32,         # transmitted updates kept per client (EASE's M; 0 = none)
  ))
  c.eval = ml_collections.ConfigDict(dict(every=5, batch_size=256))
  c.checkpoint_every = 5
  return c
