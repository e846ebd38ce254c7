"""Per-module projections of a LoRA tree: EASE's P_u and (I − P_u), and the drift along U_u.

* `ModuleLayout` / `module_layout`: where each adapted LoRA module's (A, B) lives in the flat
  `ravel_pytree` vector; `to_modules` gathers `[..., P] -> [..., modules, d]` (zero-padded to the
  largest module, so one `vmap` over modules serves every module), `from_modules` scatters back.
  Leaves outside any module (a trainable `logit_scale`) are never projected: P_u is 0 and
  (I − P_u) is the identity there.
* `project_tree` (P_u) / `complement_tree` (I − P_u) of a LoRA-shaped tree, `drift_fn`
  θ -> ‖P_u(θ − θ*)‖, given per-module bases `[modules, d, r]` and masks `[modules, r]`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ease_jax import lora as lora_lib
from ease_jax import subspace

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ModuleLayout:
  """Per-module slices of the flat trainable vector.

  Attributes:
    names: `[modules]` module paths (`vision_model/.../q_proj`).
    index: `[modules, d]` int32 positions in the flat vector; `num_params` where padded.
    valid: `[modules, d]` bool, False on padding.
    num_params: P, the flat vector's length.
  """
  names: tuple[str, ...]
  index: np.ndarray
  valid: np.ndarray
  num_params: int

  @property
  def num_modules(self) -> int:
    return len(self.names)

  @property
  def dim(self) -> int:
    return int(self.index.shape[1])

  def tower_of(self, name: str) -> str:
    return lora_lib.tower_of(name)


def module_layout(trainable: PyTree) -> ModuleLayout:
  """The layout of `trainable`'s LoRA modules in `ravel_pytree(trainable)` order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(trainable)
  offsets, pos = {}, 0
  for path, leaf in leaves:  # ravel_pytree concatenates the leaves in this order.
    key = "/".join(str(getattr(k, "key", k)) for k in path)
    offsets[key] = (pos, int(np.size(leaf)))
    pos += int(np.size(leaf))
  names = lora_lib.module_paths(trainable)
  if not names:
    raise ValueError("The trainable tree has no LoRA module (no `.../a`, `.../b` leaves).")
  parts = []
  for name in names:
    idx = [np.arange(o, o + n) for o, n in (offsets[f"{name}/a"], offsets[f"{name}/b"])]
    parts.append(np.concatenate(idx))
  dim = max(len(p) for p in parts)
  index = np.full((len(names), dim), pos, np.int32)
  valid = np.zeros((len(names), dim), bool)
  for m, p in enumerate(parts):
    index[m, :len(p)] = p
    valid[m, :len(p)] = True
  return ModuleLayout(tuple(names), index, valid, pos)


def to_modules(layout: ModuleLayout, flat: jax.Array) -> jax.Array:
  """`[..., P]` -> `[..., modules, d]` (zeros on padding)."""
  flat = jnp.asarray(flat)
  padded = jnp.concatenate([flat, jnp.zeros(flat.shape[:-1] + (1,), flat.dtype)], axis=-1)
  return jnp.take(padded, jnp.asarray(layout.index), axis=-1)


def from_modules(layout: ModuleLayout, x: jax.Array) -> jax.Array:
  """`[modules, d]` -> `[P]`; entries outside every module are 0."""
  out = jnp.zeros((layout.num_params + 1,), x.dtype)
  out = out.at[jnp.asarray(layout.index).reshape(-1)].set(x.reshape(-1))
  return out[:-1]


def project_flat(layout: ModuleLayout, basis: jax.Array, valid: jax.Array,
                 flat: jax.Array) -> jax.Array:
  """P_u on a flat vector `[P]` (module by module; 0 outside modules)."""
  mods = to_modules(layout, flat)
  return from_modules(layout, subspace.batched_project(basis, valid, mods))


def project_tree(layout: ModuleLayout, basis: jax.Array, valid: jax.Array, tree: PyTree
                 ) -> PyTree:
  """P_u Δ for a LoRA-shaped tree Δ."""
  flat, unravel = ravel_pytree(tree)
  return unravel(project_flat(layout, basis, valid, flat))


def complement_tree(layout: ModuleLayout, basis: jax.Array, valid: jax.Array, tree: PyTree
                    ) -> PyTree:
  """(I − P_u) Δ for a LoRA-shaped tree Δ."""
  flat, unravel = ravel_pytree(tree)
  return unravel(flat - project_flat(layout, basis, valid, flat))


def drift_fn(layout: ModuleLayout, basis: jax.Array, valid: jax.Array, anchor: PyTree
             ) -> Callable[[PyTree], jax.Array]:
  """θ -> ‖P_u(θ − θ*)‖ (jitted)."""
  anchor_flat = ravel_pytree(anchor)[0]

  @jax.jit
  def drift(trainable):
    diff = ravel_pytree(trainable)[0] - anchor_flat
    return jnp.linalg.norm(project_flat(layout, basis, valid, diff))

  return drift
