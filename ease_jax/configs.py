"""Default configuration blocks shared by the experiment configs (`experiments/configs/*.py`).

Each experiment config's `get_config()` starts from `base_config()` and overrides what it needs;
every field is documented here once. Unknown keys are rejected by `ml_collections` when they are
overridden on the command line (`--config.fed.rundos=3` is an error, not a silent no-op).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib

import ml_collections


def from_file(path: str | os.PathLike, *args: str) -> ml_collections.ConfigDict:
  """`get_config(*args)` of a Python config file, loaded by path as `--config` loads it.

  Configs built on another config call it with a sibling path
  (`configs.from_file(pathlib.Path(__file__).with_name("unlearn_emoji.py"))`), which works
  wherever the binary runs from, unlike importing `experiments.configs`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No config file {path}.")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"Config file {path} defines no get_config().")
  return module.get_config(*args)


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
      # Emoji captions are 7 tokens at the median and 15 at the 99th percentile: 16 cuts the
      # text tower's cost by a third against the backbone's 24.
      max_length=16,          # tokens per caption (0 = the model's context length)
      skin_tone_variants=True,  # emoji: keep the 1,785 skin-tone variants (the clients' data)
      label="skin_tone",      # per-image field for stratified splits (and the partition)
      partition_label="",     # per-image field of the non-IID partition ('' = `label`)
      # 'skin_tone': the backbone is pretrained on the emoji without a skin-tone modifier and the
      # clients hold the toned variants; 'random': a random `public_fraction`; 'karpathy': the
      # caption file's own test images test (see builders.split_dataset).
      split="skin_tone",
      public_fraction=0.4,    # 'random', 'karpathy': share for central backbone pretraining
      test_fraction=0.1,      # held-out share ('skin_tone': of the toned variants; unused by
                              # 'karpathy')
      partition="dirichlet",  # 'iid', 'by_label' or 'dirichlet'
      dirichlet_alpha=0.5,
      min_client_size=8,
  ))
  c.model = ml_collections.ConfigDict(dict(
      checkpoint="embedded",  # 'embedded', a Hugging Face CLIP folder, or a cached repo id
      # Fine-tuning temperature 1/τ (0 = the checkpoint's own). 5 for the embedded backbone,
      # whose pretraining scale (14.3) makes it over-confident on the clients' new pairs.
      logit_scale=5.0,
  ))
  c.lora = ml_collections.ConfigDict(dict(
      rank=8,
      alpha=16.0,
      targets="qv",            # preset (qv, qkvo, qv_mlp, all, vision_qv, text_qv) or a regex
      mode="unmerged",         # 'unmerged' (x W + s x A B) or 'merged' (x (W + s A B))
      learn_logit_scale=False,
      init_std=0.1,            # std of A (B = 0); ~1/sqrt(width) of the embedded backbone
      freeze_a=False,          # FFA-LoRA: train B only, so FedAvg of the products is exact
  ))
  c.fed = ml_collections.ConfigDict(dict(
      num_clients=8,
      clients_per_round=0,     # 0 = all clients every round
      rounds=20,
      local_epochs=1,
      batch_size=32,
      client_optimizer="adam",
      # Adam 1e-2 for the embedded backbone's q/v LoRA: it learned the planted backdoors (2e-3
      # did not: attack success ~0%) and raised test R@1 (BENCHMARKS.md, "Planting knowledge");
      # 2e-2 diverged.
      client_lr=1e-2,
      client_weight_decay=0.0,  # decoupled weight decay; needs client_optimizer='adamw'
      server_lr=1.0,           # 1.0 with no momentum = plain FedAvg
      server_momentum=0.0,
      # 'auto' (vmap or chunked, by clients per round and platform: federated/backends.py),
      # 'vmap', 'chunked', 'sequential' or 'sharded' (all devices).
      backend="auto",
      chunk_size=0,            # clients per chunk for 'chunked' (per device for 'sharded')
      history_size=32,         # transmitted updates kept per client (EASE's M; 0 = none)
      nonfinite="drop",        # a NaN/inf client update: "drop" it from the round, or "fail"
  ))
  c.eval = ml_collections.ConfigDict(dict(every=5, batch_size=256))
  c.checkpoint_every = 5
  return c


# The request block (`ease_jax/unlearning/requests.py`). Each kind reads its own keys, so a
# request built from these defaults plus its kind's keys (a benchmark scenario) inherits no
# other request's choices.
UNLEARNING_DEFAULTS = dict(
    kind="client",         # 'client' | 'sample' | 'concept'
    clients=(0,),          # client: the leaving clients
    sample_clients=(),     # sample: the clients to draw from (() = all)
    fraction=0.1,          # sample: fraction of each client's pairs
    field="subgroup",      # concept: a per-image field, or 'caption' for caption terms
    concepts=("person-sport",),  # concept: values of `field` (or caption terms)
    plant="",              # sample / concept: forget exactly this plant's pairs (config.plants)
)


def add_unlearning(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the `unlearning` request block, every method's block (`gsd`, `bke`, `pfl`,
  `finetune`, `pga`, ...; defaults next to each method's code in
  `ease_jax/unlearning/methods/`) and `methods` (registered names run by the unlearn binary).

  [ours] values wherever the paper does not state them (see /work/shared/EASE.md).
  """
  from ease_jax.unlearning import methods  # pylint: disable=g-import-not-at-top
  config.unlearning = ml_collections.ConfigDict(UNLEARNING_DEFAULTS)
  methods.add_config_blocks(config)
  # The per-example audit (populations of models with and without D_f; 0 = off), defaults in
  # ease_jax/unlearning/population.py.
  from ease_jax.unlearning import population  # pylint: disable=g-import-not-at-top
  config.audit = ml_collections.ConfigDict(population.DEFAULTS)
  config.methods = ("ease", "ease_no_lock", "ease_unilateral_vision", "ease_unilateral_text",
                    "ease_no_gsd")
  return config
