"""FedEraser (Liu et al. 2021): replay the retained clients' stored updates from the initial
model; every `retain_interval`-th round, each retained participant of that round runs
ceil(ratio × its local steps) calibration steps from the current unlearned model, and its stored
update is replaced by ‖old‖ · new/‖new‖. With `calibration_ratio = 0` it is plain replay.

Round 0 is not calibrated (the paper and its code apply the first stored updates directly): the
replay starts from the initial model the stored round-0 updates were computed from, so a client
that still holds all the data it trained on would only re-derive the same update. A client whose
data lost D_f (a holder of a sample / concept request) is calibrated in round 0 too.

The replay is a federated algorithm (`replay_algorithm`, init / apply) run by the driver; its
round inputs (`ReplayPlan`) are the stored updates of one replayed round's retained participants
and their calibration batches, and the calibration runs on `fed.backend` (resolved like
training's). [ours]: the calibrated update keeps the old update's norm per leaf (= per layer, the
paper's code) or globally; sample / concept requests: the holders' stored updates include D_f,
calibration re-derives their direction on D_r only, their magnitude still comes from the old
update.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ease_jax import builders
from ease_jax import federated
from ease_jax import rng as rng_lib
from ease_jax.federated import driver
from ease_jax import validation as check
from ease_jax.unlearning import base
from ease_jax.unlearning import common
from ease_jax.unlearning.methods import gradient_ascent as ga

PyTree = Any

DEFAULTS: dict[str, Any] = dict(
    calibration_ratio=0.5,    # calibration steps / original local steps (0 = plain replay)
    retain_interval=1,        # replay every k-th stored round
    norm="leaf",              # 'leaf' (per layer, as the paper's code) | 'global'
)
RULES = {"federaser.calibration_ratio": check.probability,
         "federaser.retain_interval": check.integer(1),
         "federaser.norm": check.one_of("leaf", "global")}


def federaser_calibrate(old_update: PyTree, new_update: PyTree, norm: str = "leaf") -> PyTree:
  """FedEraser's calibration: ‖old‖ · new / ‖new‖ (0 where new is 0).

  Args:
    old_update, new_update: trees of one client's stored and freshly calibrated updates (any
      leading axes are treated as part of the leaf when `norm='leaf'`; use `jax.vmap` for a
      client axis).
    norm: 'leaf' (per parameter leaf = per layer) or 'global' (one norm over the tree).
  """
  if norm == "leaf":
    def one(o, n):
      no, nn = jnp.linalg.norm(o), jnp.linalg.norm(n)
      return jnp.where(nn > 0, no / jnp.maximum(nn, 1e-30), 0.0) * n
    return jax.tree.map(one, old_update, new_update)
  if norm == "global":
    no, nn = ga.tree_norm(old_update), ga.tree_norm(new_update)
    factor = jnp.where(nn > 0, no / jnp.maximum(nn, 1e-30), 0.0)
    return jax.tree.map(lambda n: factor * n, new_update)
  raise ValueError(f"federaser.norm must be 'leaf' or 'global', got {norm!r}.")


def round_major(history: federated.UpdateHistory, weights: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The stored history by round: rounds `[T]`, updates `[T, K, P]`, weights `[T, K]`
  (`weights[k]` where client k sent an update that round, else 0; no rounds when the run kept
  no history, `fed.history_size=0`)."""
  if history is None:
    return np.zeros((0,), np.int64), np.zeros((0, len(weights), 0), np.float32), np.zeros(
        (0, len(weights)), np.float32)
  h_rounds, h_updates = np.asarray(history.rounds), np.asarray(history.updates)
  rounds = np.unique(h_rounds[h_rounds >= 0])
  k, _, p = h_updates.shape
  ups = np.zeros((len(rounds), k, p), np.float32)
  w = np.zeros((len(rounds), k), np.float32)
  for c in range(k):
    for slot, r in enumerate(h_rounds[c]):
      if r >= 0:
        t = int(np.searchsorted(rounds, r))
        ups[t, c] = h_updates[c, slot]
        w[t, c] = weights[c]
  return rounds, ups, w


def check_full_history(rounds: np.ndarray, config: ml_collections.ConfigDict, name: str) -> None:
  """Every round's updates from round 0 on, for every client that sent them: the union of the
  stored rounds can be complete while a client that took part often lost its oldest updates
  (partial participation, `fed.history_size < fed.rounds`), so the size is required too."""
  expected = np.arange(config.fed.rounds)
  if (config.fed.history_size < config.fed.rounds or len(rounds) != len(expected)
      or np.any(rounds != expected)):
    raise ValueError(f"{name} needs every round's stored updates from round 0 (it replays the "
                     f"training from the initial model), but the history holds rounds "
                     f"{rounds.tolist()[:5]}...; set fed.history_size ≥ fed.rounds "
                     f"({config.fed.rounds}).")


class ReplayInputs(NamedTuple):
  """One replayed round, padded to the plan's `R` rows (padding rows: id -1, weight 0)."""
  client_ids: np.ndarray       # [R] the round's retained participants
  updates: np.ndarray          # [R, P] their stored (flat) updates
  weights: np.ndarray          # [R] FedAvg weights
  calibrate: np.ndarray        # [R] bool: replace the stored update by its calibration
  batches: federated.Batches   # [R, S, B] calibration batches (all False where not calibrating)


@dataclasses.dataclass(frozen=True)
class ReplayPlan:
  """The replayed rounds' inputs, from the stored updates of the `C` retained clients."""
  rounds: Sequence[int]            # [T] the replayed (original) round indices
  updates: np.ndarray              # [T, C, P] stored updates of the retained clients
  weights: np.ndarray              # [T, C] FedAvg weights (0 where a client sat the round out)
  client_texts: Sequence[np.ndarray]  # [C] each retained client's retain texts
  client_ids: np.ndarray           # [C]
  calibration_steps: Sequence[int]  # [C] (empty: plain replay)
  unchanged: np.ndarray            # [C] bool: the client keeps all the data it trained on
  config: ml_collections.ConfigDict

  @property
  def num_rows(self) -> int:
    """R: the most retained participants of a replayed round (one compiled shape for all)."""
    return int(max((np.sum(w > 0) for w in self.weights), default=0))

  def calibrates(self, t: int) -> np.ndarray:
    """`[C]` bool: the clients calibrated in replayed round t (its participants, except in
    round 0 those whose data is unchanged: see the module docstring)."""
    if not self.calibration_steps:
      return np.zeros(len(self.client_ids), bool)
    took_part = self.weights[t] > 0
    return took_part & ~self.unchanged if int(self.rounds[t]) == 0 else took_part

  @property
  def step_utilization(self) -> float:
    """The share of the calibration's padded steps (R rows × the most steps, in each replayed
    round that calibrates anyone) that are real: what `federated.resolve_backend` weighs."""
    if not self.calibration_steps:
      return 1.0
    steps = np.asarray(self.calibration_steps, np.float64)
    real = [steps[self.calibrates(t)].sum() for t in range(len(self.rounds))]
    padded = sum(r > 0 for r in real) * self.num_rows * steps.max()
    return float(sum(real) / padded) if padded else 1.0

  def inputs(self, t: int) -> ReplayInputs:
    fed, num_cal = self.config.fed, max(self.calibration_steps, default=0)
    rows, num = np.flatnonzero(self.weights[t] > 0), self.num_rows
    ids = np.full(num, -1, np.int32)
    updates = np.zeros((num,) + self.updates.shape[2:], np.float32)
    weights = np.zeros(num, np.float32)
    calibrate = np.zeros(num, bool)
    ids[:len(rows)] = self.client_ids[rows]
    updates[:len(rows)] = self.updates[t, rows]
    weights[:len(rows)] = self.weights[t, rows]
    calibrate[:len(rows)] = self.calibrates(t)[rows]
    idx = np.zeros((num, num_cal, fed.batch_size), np.int32)
    mask = np.zeros(idx.shape, bool)
    cal = np.flatnonzero(calibrate)
    if len(cal):
      # A client's shuffle depends on (seed, round, client) only: scheduling just the
      # calibrated clients gives each the batches it would get among all of them.
      chosen = rows[cal]
      full = federated.build_client_schedules(
          [self.client_texts[c] for c in chosen], fed.batch_size, fed.local_epochs,
          max(federated.num_local_steps(len(x), fed.batch_size, fed.local_epochs)
              for x in self.client_texts), self.config.seeds.data,
          fed.rounds + rng_lib.Stream.FEDERASER_CALIBRATION + int(self.rounds[t]),
          self.client_ids[chosen])
      idx[cal], mask[cal] = full.text_indices[:, :num_cal], full.mask[:, :num_cal]
      for row, c in zip(cal, chosen):
        mask[row, self.calibration_steps[c]:] = False
    return ReplayInputs(ids, updates, weights, calibrate, federated.Batches(idx, mask))


def replay_algorithm(client_update: federated.LocalSteps | None,
                     server_opt: optax.GradientTransformation, backbone: PyTree,
                     data: federated.DeviceData, like: PyTree, norm: str,
                     backend: str = "vmap", chunk_size: int = 0
                     ) -> federated.FederatedAlgorithm:
  """FedAvg server steps with stored client updates, those marked `calibrate` first calibrated
  by `client_update` (None: plain replay) on `backend` (`federated.make_round_fn`; resolved, not
  'auto'). `like` is a tree of the trainable's structure (to unflatten)."""
  round_fn = (federated.make_round_fn(client_update, backend, chunk_size) if client_update
              else None)
  unravel = jax.vmap(federated.unravel_fn(like))
  calibrate = jax.jit(jax.vmap(lambda o, n, c: federated.tree_where(
      c, federaser_calibrate(o, n, norm), o)))

  @jax.jit
  def server_step(state, deltas, weights):
    return federated.fedavg(state, deltas, weights, server_opt)[0]

  def init(trainable):
    return federated.init_server(trainable, server_opt)

  calibrated_before = []

  def apply(state, inputs):
    deltas = unravel(jnp.asarray(inputs.updates))
    metrics = {}
    # A round without calibrated clients (round 0 of a client request) runs no local steps.
    if round_fn is not None and np.any(inputs.calibrate):
      if not calibrated_before:  # The first calibration compiles the local steps.
        metrics[driver.ROUND_COMPILES] = True
        calibrated_before.append(True)
      new, _ = round_fn(state.trainable, backbone, data, inputs.batches)
      deltas = calibrate(deltas, new, jnp.asarray(inputs.calibrate))
      metrics["calibration_norm"] = ga.tree_norm(new)
    return server_step(state, deltas, jnp.asarray(inputs.weights, jnp.float32)), metrics

  return federated.FederatedAlgorithm(init, apply)


def federaser(ctx: base.UnlearningContext) -> base.MethodResult:
  c = common.block(ctx.config, "federaser", DEFAULTS)
  setup, cfg, fed = ctx.setup, ctx.config, ctx.config.fed
  rounds, ups, _ = round_major(ctx.history, common.client_counts(setup))
  check_full_history(rounds, cfg, "FedEraser")
  kept, retained = common.kept_counts(ctx), np.asarray(ctx.retain_clients)
  texts = [ctx.retain_client_texts[k] for k in retained]
  h_rounds = np.asarray(ctx.history.rounds)
  replayed, weights = [], []
  for t, r in enumerate(rounds):
    took_part = np.asarray([np.any(h_rounds[k] == r) for k in retained])
    if r % c.retain_interval == 0 and took_part.any():
      replayed.append(t)
      weights.append(np.where(took_part, kept[retained], 0.0))
  cal_steps = [math.ceil(c.calibration_ratio * federated.num_local_steps(
      len(x), fed.batch_size, fed.local_epochs)) for x in texts] if c.calibration_ratio else []
  plan = ReplayPlan(rounds=[int(rounds[t]) for t in replayed],
                    updates=ups[replayed][:, retained], weights=np.asarray(weights, np.float32),
                    client_texts=texts, client_ids=retained, calibration_steps=cal_steps,
                    unchanged=kept[retained] == common.client_counts(setup)[retained],
                    config=cfg)
  update, backend, chunk = None, None, 0
  if cal_steps:
    update = federated.local_steps(federated.clip_objective(setup.model),
                                   builders.client_optimizer(setup, cfg))
    # As training resolves it (`builders.fedavg_options`), for the calibration's rounds.
    backend, chunk = federated.resolve_backend(fed.backend, fed.get("chunk_size", 0),
                                               plan.num_rows, utilization=plan.step_utilization)
  algorithm = replay_algorithm(
      update, federated.server_optimizer(fed.server_lr, fed.get("server_momentum", 0.0)),
      setup.backbone, setup.data, ctx.trained, c.norm, backend or "vmap", chunk)
  start = builders.init_trainable(setup, cfg)
  res = driver.run(algorithm, plan, algorithm.init(start), len(replayed),
                   options=driver.RunOptions(desc="FedEraser replay", progress=False))
  timing = common.round_timing(res.metrics)
  diag = dict(replayed_rounds=plan.rounds, calibration_steps=[int(s) for s in cal_steps],
              calibration_ratio=c.calibration_ratio, retain_interval=c.retain_interval,
              norm=c.norm, backend=backend,
              calibrated_clients=[plan.client_ids[plan.calibrates(t)].tolist()
                                  for t in range(len(plan.rounds))],
              calibration_norms=[r.get("calibration_norm") for r in res.metrics])
  return base.MethodResult(res.trainable, wall_time_s=timing["steady_time_s"],
                           compile_time_s=timing["wall_time_s"] - timing["steady_time_s"],
                           diagnostics=diag)


def federaser_replay(start: PyTree, updates: Sequence[PyTree], weights: Sequence[jax.Array],
                     optimizer: optax.GradientTransformation) -> PyTree:
  """Plain replay, the reference `federaser` without calibration must equal: FedAvg server
  steps from `start` with per-round client updates (`[C_t, ...]` trees) and weights `[C_t]`."""
  state = federated.init_server(start, optimizer)
  for deltas, w in zip(updates, weights):
    state, _ = federated.fedavg(state, deltas, jnp.asarray(w, jnp.float32), optimizer)
  return state.trainable
