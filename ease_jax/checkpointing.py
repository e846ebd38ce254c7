"""Orbax checkpoints of a whole federated run, guarded against mixing configs.

A checkpoint holds a pytree `state` (LoRA, optimizer states, round, RNG keys, update history, ...)
and a JSON `meta` with the config fingerprint that produced it. Restoring into a run whose
fingerprint differs is an error that names the differing keys, so a workdir is never silently
resumed, or overwritten, by another experiment.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointMismatchError(ValueError):
  """The checkpoint in a workdir was written by a different config."""


def fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
  """JSON-able, flat `{dotted.key: value}` view of the config entries that define a run."""
  flat: dict[str, Any] = {}

  def visit(prefix, value):
    if hasattr(value, "items"):
      for k, v in value.items():
        visit(f"{prefix}.{k}" if prefix else str(k), v)
    else:
      flat[prefix] = value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)

  visit("", config)
  return flat


def fingerprint_hash(fp: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def diff_fingerprints(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  keys = sorted(set(saved) | set(current))
  return [f"{k}: checkpoint={saved.get(k, '<absent>')!r} vs now={current.get(k, '<absent>')!r}"
          for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for `{state pytree, meta json}` pairs."""

  def __init__(self, directory: str | pathlib.Path, config_fingerprint: Mapping[str, Any],
               max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self.fingerprint = dict(config_fingerprint)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, extra_meta: Mapping[str, Any] | None = None) -> None:
    meta = {"fingerprint": self.fingerprint, "step": int(step), **(extra_meta or {})}
    state = jax.tree.map(np.asarray, state)
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def check_compatible(self, step: int | None = None) -> None:
    """Raises CheckpointMismatchError if the saved fingerprint differs from this run's."""
    saved = self.read_meta(step).get("fingerprint", {})
    diffs = diff_fingerprints(saved, self.fingerprint)
    if diffs:
      raise CheckpointMismatchError(
          f"The checkpoint in {self.directory} was written by a different config "
          f"({len(diffs)} differing keys: {'; '.join(diffs[:5])}). Use a new --workdir, or the "
          "config that wrote it; nothing was overwritten.")

  def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
    """Restores the state into the structure/shapes of `like` (after checking compatibility)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    self.check_compatible(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.tree.map(np.asarray, like))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])

  def close(self) -> None:
    self._manager.close()
