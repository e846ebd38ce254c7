"""The unlearning-method interface.

A method is a callable `method(ctx: UnlearningContext) -> MethodResult`, listed by name in the
registry of `ease_jax.unlearning.methods` (one module per method). `ctx` carries everything the
server and the clients could use: the setup (model, frozen backbone, data, partition), the full
config (method blocks such as `gsd`, `bke`, `pfl`), the request, the federated model before
unlearning and the server's `UpdateHistory` of transmitted updates, the evaluation image sets
and a per-run `cache` dict that methods may share (e.g. EASE's subspace decomposition, reused
by its ablations). A method returns the unlearned LoRA tree, its wall time (the unlearning work
only, compile time reported separately), JSON-able diagnostics and optional per-round curves
(e.g. continued training).

A new method is one module in `ease_jax/unlearning/methods/` with such a function (and its config
block's defaults), added to the registry there; `cell.Cell` runs it like every other.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ease_jax import builders
from ease_jax import federated
from ease_jax.unlearning import requests

PyTree = Any


@dataclasses.dataclass
class UnlearningContext:
  """Inputs of an unlearning method (read-only by convention, except `cache`)."""
  setup: builders.FederatedSetup
  config: ml_collections.ConfigDict
  request: requests.UnlearningRequest
  trained: PyTree                        # the federated model before unlearning
  history: federated.UpdateHistory       # each client's last M transmitted updates
  eval_subsets: dict[str, np.ndarray]    # forget / retain / test image indices
  workdir: pathlib.Path | None = None    # method-private outputs go under workdir/<name>
  cache: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def retain_clients(self) -> list[int]:
    return self.request.retain_clients(self.setup)

  @property
  def retain_client_texts(self) -> list[np.ndarray]:
    return self.request.retain_client_texts(self.setup)


@dataclasses.dataclass
class MethodResult:
  """Output of an unlearning method.

  Attributes:
    trainable: the unlearned LoRA tree.
    wall_time_s: wall time of the unlearning work, first-call compilation excluded.
    compile_time_s: compilation time measured separately (0 where not separable).
    diagnostics: JSON-able extras (ranks, angles, losses, timing breakdown, ...).
    curves: per-round rows of any continued training (`round` key plus metrics).
    continued: `{name: LoRA tree}` models after continued training, evaluated too.
  """
  trainable: PyTree
  wall_time_s: float
  compile_time_s: float = 0.0
  diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
  curves: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  continued: dict[str, PyTree] = dataclasses.field(default_factory=dict)


Method = Callable[[UnlearningContext], MethodResult]


class TimedJit:
  """A jitted function compiled ahead of time per argument signature, so that compilation and
  execution are timed apart; compiled executables are kept for later calls.

  `out, compile_s, run_s = TimedJit(jax.jit(f))(*args, **static_kwargs)` (compile_s is 0 when
  an executable for this signature already exists).
  """

  def __init__(self, fn: Callable):
    self.fn = fn
    self._compiled: dict[Any, Any] = {}

  def __call__(self, *args, **static_kwargs) -> tuple[Any, float, float]:
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves),
           tuple(sorted(static_kwargs.items())))
    compile_s = 0.0
    if key not in self._compiled:
      t0 = time.perf_counter()
      self._compiled[key] = self.fn.lower(*args, **static_kwargs).compile()
      compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = jax.block_until_ready(self._compiled[key](*args))
    return out, compile_s, time.perf_counter() - t1


def with_overrides(method: Method, overrides: dict[str, Any]) -> Method:
  """`method` run on the request's config with dotted-key `overrides` (see `config_with`).

  Overriding a variant overrides its own overrides: `with_overrides(ease_no_gsd, {'pfl.rounds':
  3})` runs 3 PFL rounds (wrapped naively, the variant's `pfl.rounds=0` was applied last and won).
  """
  if hasattr(method, "base_and_overrides"):
    method, inner = method.base_and_overrides
    overrides = {**inner, **overrides}
  overrides = dict(overrides)

  def variant(ctx: UnlearningContext) -> MethodResult:
    return method(dataclasses.replace(ctx, config=config_with(ctx.config, overrides)))

  variant.base_and_overrides = (method, overrides)
  return variant


def config_with(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                ) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` with dotted-key overrides (e.g. {'bke.towers': 'vision'})."""
  c = config.copy_and_resolve_references()
  c.unlock()
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"Unknown config key {key!r}.")
    node[leaf] = value
  return c
