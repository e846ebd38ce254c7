"""The thin driver: run a federated algorithm for R rounds, resumably.

`run(algorithm, plan, state, num_rounds, workdir, options)` does only what every run needs: round
inputs from the plan, `algorithm.apply`, a progress bar, one JSON line of metrics per round
(`metrics.jsonl`), periodic evaluation, orbax checkpoints of the whole state (resumed from the
newest intact one, guarded by a config fingerprint) and a clear error when a round failed
(`round_failed`, e.g. every update non-finite) or the state is not finite — before anything is
checkpointed. Method-specific behaviour lives in the algorithm.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import auto as tqdm

from ease_jax import checkpointing
from ease_jax import jsonio
from ease_jax.federated.algorithms import FederatedAlgorithm

PyTree = Any
FAILURE_KEY = "round_failed"
# Set on the first round of each `run` call, fresh or resumed: its time includes compiling the
# round, which timing summaries replace by a steady round's (`unlearning.common.round_timing`).
ROUND_COMPILES = "round_compiles"


class RoundFailedError(RuntimeError):
  """A round produced no usable update (see the message); nothing of it was checkpointed."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """What the driver does around the rounds.

  eval_fn: `trainable -> {name: value}`, every `eval_every` rounds and after the last one.
  checkpoint_every: rounds between checkpoints (and the last round) when a workdir is given.
  fingerprint: the config entries that define the run (a checkpoint of another is refused).
  """
  eval_fn: Callable[[PyTree], dict[str, float]] | None = None
  eval_every: int = 0
  checkpoint_every: int = 1
  fingerprint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  desc: str = "federated"
  progress: bool = True


@dataclasses.dataclass
class RunResult:
  state: PyTree
  metrics: list[dict[str, Any]]
  wall_time_s: float          # this process's training time (excludes evaluation)
  final_eval: dict[str, Any]

  @property
  def trainable(self) -> PyTree:
    return self.state.trainable

  @property
  def history(self):
    """The update history on the host (None when the run kept none)."""
    return None if self.state.history is None else self.state.history.to_host()


def _host_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
  row = {}
  for k, v in metrics.items():
    v = np.asarray(v)
    row[k] = v.item() if v.ndim == 0 else v.tolist()
  return row


def _all_finite_on_host(tree: PyTree) -> bool:
  """Whether every entry is finite, checked on the host (the checkpoint copies it there anyway):
  a reduction in XLA over a state split across devices (a population's members) would be a
  cross-device all-reduce, and XLA:CPU's in-process rendezvous for it timed out on a 2-core CPU
  with two devices (one device's thread never arrived within 40 s)."""
  return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(tree))


def _client_ids(ids: np.ndarray) -> list:
  """`[..., rows]` ids of a round's rows as lists, without padding rows (id -1: no client)."""
  if ids.ndim == 0:
    return ids.tolist()
  return [_client_ids(i) for i in ids] if ids.ndim > 1 else ids[ids >= 0].tolist()


def run(algorithm: FederatedAlgorithm, plan: Any, state: PyTree, num_rounds: int,
        workdir: str | pathlib.Path | None = None, options: RunOptions = RunOptions()
        ) -> RunResult:
  """Runs `algorithm` from `state` (its `init`, or a resumed checkpoint) until round
  `num_rounds`; `plan.inputs(r)` gives round r's inputs."""
  workdir = pathlib.Path(workdir) if workdir is not None else None
  ckpt, writer, rows, start = None, None, [], 0
  if workdir is not None:
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", options.fingerprint)
    restored = ckpt.restore_latest(state)
    if restored is not None:
      # Placed like the fresh state (a population's members stay split over the devices).
      state = jax.tree.map(
          lambda r, like: (jax.device_put(r, like.sharding) if isinstance(like, jax.Array)
                           else jnp.asarray(r)), restored.state, state)
      start = int(np.max(np.asarray(state.round)))
      if start > num_rounds:  # The loop would not run, and the longer-trained model come back.
        raise checkpointing.CheckpointMismatchError(
            f"{ckpt.directory} holds {options.desc or 'a run'} at round {start}, past the "
            f"{num_rounds} rounds asked for; use another workdir, or ask for at least {start} "
            "rounds.")
      logging.info("Resumed %s from round %d in %s", options.desc, start, workdir)
    writer = jsonio.JsonlWriter(workdir / "metrics.jsonl",
                                start if restored is not None else None)
    rows = jsonio.read_jsonl(writer.path)
    if restored is not None and len(rows) < start:
      logging.warning("%s holds rows for %d of the %d restored rounds (emptied or damaged): "
                      "their metrics and round times are lost; the rounds themselves are not "
                      "redone.", writer.path, len(rows), start)
  evaluate = lambda s: options.eval_fn(s.trainable) if options.eval_fn else {}
  train_time = 0.0
  last_eval = None  # the evaluation of the current state, when the last round made one
  bar = tqdm.trange(start, num_rounds, desc=options.desc, disable=not options.progress,
                    initial=start, total=num_rounds)
  try:
    for r in bar:
      t0 = time.perf_counter()
      inputs = plan.inputs(r)
      state, metrics = algorithm.apply(state, inputs)
      jax.block_until_ready(state)
      train_time += time.perf_counter() - t0
      row = dict(round=r + 1, **_host_row(metrics))
      if hasattr(inputs, "client_ids"):
        row["clients"] = _client_ids(np.asarray(inputs.client_ids))
      row["round_time_s"] = time.perf_counter() - t0
      if r == start:  # Compiles (unless this process compiled it before): see ROUND_COMPILES.
        row[ROUND_COMPILES] = True
      if np.any(row.get(FAILURE_KEY, False)):
        raise RoundFailedError(
            f"{options.desc}: round {r + 1} failed ({row}); the model was left at round {r} and "
            "nothing of this round was checkpointed. Non-finite client updates (clients_dropped) "
            "usually mean a learning rate too high for this model (fed.client_lr); with none "
            "dropped, the server step itself gave a non-finite model.")
      last_eval = None
      if options.eval_every and ((r + 1) % options.eval_every == 0 or r + 1 == num_rounds):
        last_eval = evaluate(state)
        row.update(last_eval)
      rows.append(row)
      bar.set_postfix({k: round(v, 3) for k, v in row.items()
                       if isinstance(v, float) and (k == "train_loss" or k.endswith("mean_r1"))})
      if writer is not None:
        checkpoint = (r + 1) % options.checkpoint_every == 0 or r + 1 == num_rounds
        # Checked before the row is written: a failed round leaves no line behind.
        if checkpoint and not _all_finite_on_host(state):
          raise RoundFailedError(f"{options.desc}: the state after round {r + 1} is not "
                                 "finite; refusing to checkpoint it.")
        writer.write(row)
        if checkpoint:
          ckpt.save(r + 1, state)
  finally:
    if ckpt is not None:
      ckpt.close()
  # The last round's evaluation is the final one (the same state): not computed twice.
  final_eval = dict(last_eval) if last_eval is not None else (
      evaluate(state) if options.eval_fn else {})
  return RunResult(state, rows, train_time, final_eval)
