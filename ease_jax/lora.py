"""LoRA adapters as a pytree separate from the frozen backbone.

Targets are chosen big_vision-style, by regular expressions over `/`-joined parameter paths of the
backbone's dense kernels (e.g. `vision_model/encoder/layers/3/self_attn/q_proj/kernel`) and of the
ViT patch embedding (`vision_model/embeddings/patch_embedding/kernel`, a conv kernel
`[p, p, C, hidden]` adapted as the matrix `[p·p·C, hidden]` it applies to each flattened patch). The adapter
tree mirrors the backbone paths with `{a: [in, rank], b: [rank, out]}` in place of `kernel`:

    lora["vision_model"]["encoder"]["layers"]["3"]["self_attn"]["q_proj"] = {"a": ..., "b": ...}

`b` starts at zero, so a fresh adapter leaves the backbone's function unchanged; the layer computes
`x W + (alpha / rank) (x A) B` (see `ease_jax.model.LoRADense`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Params = Mapping[str, Any]

# Attention query and value projections of both towers (the LoRA paper's default).
DEFAULT_TARGETS = (r".*/self_attn/(q|v)_proj/kernel",)
# Named presets, for configs and command lines.
TARGET_PRESETS = {
    "qv": DEFAULT_TARGETS,
    "qkvo": (r".*/self_attn/(q|k|v|out)_proj/kernel",),
    "qv_mlp": (r".*/self_attn/(q|v)_proj/kernel", r".*/mlp/fc(1|2)/kernel"),
    "all": (r".*/self_attn/(q|k|v|out)_proj/kernel", r".*/mlp/fc(1|2)/kernel"),
    "vision_qv": (r"vision_model/.*/self_attn/(q|v)_proj/kernel",),
    "text_qv": (r"text_model/.*/self_attn/(q|v)_proj/kernel",),
}

# A pattern names the (conv) patch embedding only with this word in it (`target_paths`).
CONV_TARGET_WORD = "patch_embedding"
VISION_PREFIX = "vision_model/"
TEXT_PREFIX = "text_model/"
# The projection head after each tower belongs to that tower (LoRA can target it by regex).
_TOWER_PREFIXES = {"vision": (VISION_PREFIX, "visual_projection/"),
                   "text": (TEXT_PREFIX, "text_projection/")}


def tower_of(path: str) -> str:
  """'vision', 'text' or 'other' for a parameter or module path ('/'-joined, e.g. from
  `flatten_dict`; a module's own name, 'visual_projection', counts as its prefix)."""
  for tower, prefixes in _TOWER_PREFIXES.items():
    if (path + "/").startswith(prefixes):
      return tower
  return "other"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = DEFAULT_TARGETS
  init_std: float = 0.02  # std of A; B is zero.
  # FFA-LoRA (Sun et al., ICLR 2024): A stays at its random init and only B trains, so FedAvg of
  # the clients' B is exactly the average of their products A·B_k (averaging A and B separately
  # is not).
  freeze_a: bool = False

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def resolve_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
  """A preset name (`qv`, `qkvo`, `qv_mlp`, `all`, ...) or a sequence of regexes."""
  if isinstance(targets, str):
    if targets in TARGET_PRESETS:
      return TARGET_PRESETS[targets]
    return (targets,)
  return tuple(targets)


def target_paths(params: Params, targets: str | Sequence[str]) -> list[str]:
  """Paths of the dense (2-D) and conv (4-D) kernels matched by `targets`, in a stable order.

  A conv kernel (the patch embedding) is taken only by a pattern that names it
  (`CONV_TARGET_WORD` in the pattern's text): broad patterns such as `.*/kernel` keep meaning
  the dense kernels they meant before conv kernels could be targets.

  Raises:
    ValueError: a pattern matches no kernel (a typo would otherwise train nothing).
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  kernels = [p for p, v in flat.items() if p.endswith("/kernel") and np.ndim(v) in (2, 4)]
  conv = {p for p in kernels if np.ndim(flat[p]) == 4}
  chosen: list[str] = []
  for pattern in resolve_targets(targets):
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"Invalid LoRA target regex {pattern!r}: {e}") from e
    matched = [p for p in kernels if regex.fullmatch(p)
               and (p not in conv or CONV_TARGET_WORD in pattern)]
    if not matched:
      examples = ", ".join(kernels[:3])
      raise ValueError(f"Unknown LoRA target: {pattern!r} matches no dense or conv kernel of "
                       f"the model (paths look like: {examples}, ...).")
    chosen.extend(p for p in matched if p not in chosen)
  return sorted(chosen, key=kernels.index)


def _matrix_shape(kernel_shape: Sequence[int]) -> tuple[int, int]:
  """`(in, out)` of the matrix a kernel acts as: a dense `[in, out]`, or a conv
  `[kh, kw, in_channels, out]` on flattened patches (`kh·kw·in_channels`)."""
  return int(np.prod(kernel_shape[:-1])), int(kernel_shape[-1])


def init_lora(key: jax.Array, params: Params, config: LoRAConfig) -> dict[str, Any]:
  """Adapter tree for `params` (A ~ N(0, init_std²), B = 0)."""
  if config.rank < 1:
    raise ValueError(f"LoRA rank must be >= 1, got {config.rank}.")
  flat = traverse_util.flatten_dict(params, sep="/")
  paths = target_paths(params, config.targets)
  keys = jax.random.split(key, len(paths))
  lora = {}
  for k, path in zip(keys, paths):
    fan_in, fan_out = _matrix_shape(flat[path].shape)
    module = path[: -len("/kernel")]
    lora[module + "/a"] = config.init_std * jax.random.normal(k, (fan_in, config.rank),
                                                              jnp.float32)
    lora[module + "/b"] = jnp.zeros((config.rank, fan_out), jnp.float32)
  return traverse_util.unflatten_dict(lora, sep="/")


def frozen_a_labels(tree: Params) -> Params:
  """`'frozen'` for every A factor, `'trainable'` for the rest (for `optax.multi_transform`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if getattr(path[-1], "key", None) == "a" else "trainable", tree)


def module_paths(lora: Params) -> list[str]:
  """Paths of the adapted modules (`.../q_proj`), in tree order."""
  flat = traverse_util.flatten_dict(lora, sep="/")
  return sorted({p.rsplit("/", 1)[0] for p in flat if p.endswith("/a")},
                key=lambda p: list(flat).index(p + "/a"))


def merge(params: Params, lora: Params, scale: float) -> dict[str, Any]:
  """Backbone with each adapted kernel replaced by `W + scale · A B` (for export/inference)."""
  flat = dict(traverse_util.flatten_dict(params, sep="/"))
  lora_flat = traverse_util.flatten_dict(lora, sep="/")
  for module in module_paths(lora):
    a, b = lora_flat[module + "/a"], lora_flat[module + "/b"]
    kernel = flat[module + "/kernel"]
    flat[module + "/kernel"] = kernel + scale * (a @ b).reshape(np.shape(kernel))
  return traverse_util.unflatten_dict(flat, sep="/")


def tower_mask(lora: Params, tower: str) -> Any:
  """Pytree of bools like `lora`: True on leaves of `tower` ('vision', 'text' or 'both').

  Used for the unilateral (vision-only / text-only) ablations: multiply updates by the mask.
  """
  if tower not in ("vision", "text", "both"):
    raise ValueError(f"tower must be 'vision', 'text' or 'both', got {tower!r}.")
  flat = traverse_util.flatten_dict(lora, sep="/")
  mask = {p: tower == "both" or tower_of(p) == tower for p in flat}
  return traverse_util.unflatten_dict(mask, sep="/")


def num_params(tree: Params) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))
