"""FedEraser (Liu et al. 2021): replay the retained clients' stored updates from the initial
model; every `retain_interval`-th round, each retained participant runs ceil(ratio × its local
steps) calibration steps from the current unlearned model, and its stored update is replaced by
‖old‖ · new/‖new‖. With `calibration_ratio = 0` it is plain replay.

The replay is a federated algorithm (`replay_algorithm`, init / apply) run by the driver; its
round inputs (`ReplayPlan`) are the stored updates of one replayed round and the calibration
batches. [ours]: the calibrated update keeps the old update's norm per leaf (= per layer, the
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
  (`weights[k]` where client k sent an update that round, else 0)."""
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
  expected = np.arange(config.fed.rounds)
  if len(rounds) != len(expected) or np.any(rounds != expected):
    raise ValueError(f"{name} needs every round's stored updates from round 0 (it replays the "
                     f"training from the initial model), but the history holds rounds "
                     f"{rounds.tolist()[:5]}...; set fed.history_size ≥ fed.rounds "
                     f"({config.fed.rounds}).")


class ReplayInputs(NamedTuple):
  updates: np.ndarray          # [C, P] the stored (flat) updates of the retained clients
  weights: np.ndarray          # [C] FedAvg weights (0 where a client did not take part)
  batches: federated.Batches   # [C, S, B] calibration batches (S = 0: plain replay)


@dataclasses.dataclass(frozen=True)
class ReplayPlan:
  """The replayed rounds' inputs: stored updates `[T, K, P]` of the retained clients."""
  rounds: Sequence[int]            # the replayed (original) round indices
  updates: np.ndarray              # [T, C, P] stored updates of the retained clients
  weights: np.ndarray              # [T, C]
  client_texts: Sequence[np.ndarray]
  client_ids: np.ndarray
  calibration_steps: Sequence[int]
  config: ml_collections.ConfigDict

  def inputs(self, t: int) -> ReplayInputs:
    fed, num_cal = self.config.fed, max(self.calibration_steps, default=0)
    idx = np.zeros((len(self.client_ids), num_cal, fed.batch_size), np.int32)
    mask = np.zeros(idx.shape, bool)
    if num_cal:
      full = federated.build_client_schedules(
          self.client_texts, fed.batch_size, fed.local_epochs,
          max(federated.num_local_steps(len(x), fed.batch_size, fed.local_epochs)
              for x in self.client_texts), self.config.seeds.data,
          fed.rounds + rng_lib.Stream.FEDERASER_CALIBRATION + int(self.rounds[t]),
          self.client_ids)
      idx, mask = full.text_indices[:, :num_cal].copy(), full.mask[:, :num_cal].copy()
      for row, n in enumerate(self.calibration_steps):
        mask[row, n:] = False
    return ReplayInputs(self.updates[t], self.weights[t], federated.Batches(idx, mask))


def replay_algorithm(client_update: federated.LocalSteps | None,
                     server_opt: optax.GradientTransformation, backbone: PyTree,
                     data: federated.DeviceData, like: PyTree, norm: str
                     ) -> federated.FederatedAlgorithm:
  """FedAvg server steps with stored client updates, each first calibrated by `client_update`
  (None: plain replay). `like` is a tree of the trainable's structure (to unflatten)."""
  round_fn = federated.make_round_fn(client_update, "vmap") if client_update else None
  unravel = jax.vmap(federated.unravel_fn(like))
  calibrate = jax.jit(jax.vmap(lambda o, n: federaser_calibrate(o, n, norm)))

  @jax.jit
  def server_step(state, deltas, weights):
    return federated.fedavg(state, deltas, weights, server_opt)[0]

  def init(trainable):
    return federated.init_server(trainable, server_opt)

  def apply(state, inputs):
    deltas = unravel(jnp.asarray(inputs.updates))
    metrics = {}
    if round_fn is not None:
      new, _ = round_fn(state.trainable, backbone, data, inputs.batches)
      deltas = calibrate(deltas, new)
      metrics["calibration_norm"] = ga.tree_norm(new)
    return server_step(state, deltas, jnp.asarray(inputs.weights, jnp.float32)), metrics

  return federated.FederatedAlgorithm(init, apply)


def federaser(ctx: base.UnlearningContext) -> base.MethodResult:
  c = common.block(ctx.config, "federaser", DEFAULTS)
  setup, cfg, fed = ctx.setup, ctx.config, ctx.config.fed
  if not 0.0 <= c.calibration_ratio <= 1.0:
    raise ValueError(f"federaser.calibration_ratio must be in [0, 1], got {c.calibration_ratio}.")
  if c.retain_interval < 1:
    raise ValueError(f"federaser.retain_interval must be >= 1, got {c.retain_interval}.")
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
                    config=cfg)
  update = None
  if cal_steps:
    update = federated.local_steps(federated.clip_objective(setup.model),
                                   builders.client_optimizer(setup, cfg))
  algorithm = replay_algorithm(
      update, federated.server_optimizer(fed.server_lr, fed.get("server_momentum", 0.0)),
      setup.backbone, setup.data, ctx.trained, c.norm)
  start = builders.init_trainable(setup, cfg)
  res = driver.run(algorithm, plan, algorithm.init(start), len(replayed),
                   options=driver.RunOptions(desc="FedEraser replay", progress=False))
  timing = common.round_timing(res.metrics)
  diag = dict(replayed_rounds=plan.rounds, calibration_steps=[int(s) for s in cal_steps],
              calibration_ratio=c.calibration_ratio, retain_interval=c.retain_interval,
              norm=c.norm, calibration_norms=[r.get("calibration_norm") for r in res.metrics])
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
