"""The unlearning methods, one module each, and their registry.

| name | module | paper |
|---|---|---|
| `ease` and its ablations (`ease_no_lock`, `ease_no_pfl_projection`, `ease_no_pfl`, `ease_unilateral_vision`, `ease_unilateral_text`, `ease_no_gsd`) | `ease` | EASE (arXiv 2605.00733) |
| `finetune` | `finetune` | — (continued FedAvg without D_f) |
| `gradient_ascent` | `gradient_ascent` | — (federated GA) |
| `pga` | `pga` | Halimi et al. 2022 |
| `federaser` | `federaser` | Liu et al. 2021 |
| `fedrecovery` | `fedrecovery` | Zhang et al. 2023 |
| `ccu` | `ccu` | arXiv 2509.23895 |
| `mvi_causal` | `mvi_causal` | ICML 2026 "Beyond Sample-Level Forgetting" |

Every method is `method(ctx: base.UnlearningContext) -> base.MethodResult` and owns its config
block(s) and their defaults (`CONFIG_BLOCKS`); `configs.add_unlearning` adds them all.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from ease_jax.unlearning import base
from ease_jax.unlearning.methods import ccu
from ease_jax.unlearning.methods import ease
from ease_jax.unlearning.methods import federaser
from ease_jax.unlearning.methods import fedrecovery
from ease_jax.unlearning.methods import finetune
from ease_jax.unlearning.methods import gradient_ascent
from ease_jax.unlearning.methods import mvi_causal
from ease_jax.unlearning.methods import pga

METHODS: dict[str, base.Method] = {
    **ease.METHODS,
    "finetune": finetune.finetune,
    "gradient_ascent": gradient_ascent.gradient_ascent,
    "pga": pga.pga,
    "federaser": federaser.federaser,
    "fedrecovery": fedrecovery.fedrecovery,
    "ccu": ccu.ccu,
    "mvi_causal": mvi_causal.mvi_causal,
}

# Config blocks (name -> defaults); a method's block is named after it unless it has several.
CONFIG_BLOCKS: dict[str, dict[str, Any]] = {
    **ease.CONFIG_BLOCKS,
    "finetune": finetune.DEFAULTS,
    "gradient_ascent": gradient_ascent.DEFAULTS,
    "pga": pga.DEFAULTS,
    "federaser": federaser.DEFAULTS,
    "fedrecovery": fedrecovery.DEFAULTS,
    "ccu": ccu.DEFAULTS,
    "mvi_causal": mvi_causal.DEFAULTS,
}


# Code versions of the methods' rows (a method module's `ROWS_VERSION`; 1 where it has none):
# `benchmark.row_keys` puts a version above 1 in the row's key.
ROWS_VERSIONS: dict[str, int] = {name: ease.ROWS_VERSION for name in ease.METHODS}

# Validation rules of those blocks (`ease_jax.validation`), next to each method's defaults.
RULES = {**ease.RULES, **finetune.RULES, **gradient_ascent.RULES, **pga.RULES, **federaser.RULES,
         **fedrecovery.RULES, **ccu.RULES, **mvi_causal.RULES}


def get(name: str) -> base.Method:
  if name not in METHODS:
    raise ValueError(f"Unknown unlearning method {name!r}; registered: {sorted(METHODS)}.")
  return METHODS[name]


def add_config_blocks(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds every method's config block with its defaults (so `--config.pga.radius=...` works)."""
  for name, block in CONFIG_BLOCKS.items():
    if name not in config:
      config[name] = ml_collections.ConfigDict(block)
  return config
