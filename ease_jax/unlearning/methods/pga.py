"""PGA (Halimi et al. 2022): projected gradient ascent on the target's data inside the ball
‖w − w_ref‖ ≤ δ around the other clients' mean model, early-stopped, then FedAvg on the retained
clients.

[ours]: w_ref = w^{T−1} + mean of the non-target participants' last updates (Halimi et al.'s
(N w^T − w_k)/(N − 1), sample-weighted); w^{T−1} is recovered from the stored last-round updates
(plain FedAvg server, no momentum). Ascent starts at w_ref. Radius: `radius` if > 0, else
`radius_fraction` (paper: 1/3) × the mean distance from w_ref to `num_random` fresh LoRA
initialisations (the paper's "random model"). Sample / concept requests have no target client:
the ball is centred at the trained model and every holder ascends on its D_f. Stopping rule and
divergence guard: `gradient_ascent`.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from ease_jax import federated
from ease_jax import lora as lora_lib
from ease_jax import rng as rng_lib
from ease_jax import validation as check
from ease_jax.unlearning import base
from ease_jax.unlearning import common
from ease_jax.unlearning.methods import gradient_ascent as ga

DEFAULTS: dict[str, Any] = dict(
    max_rounds=5,
    local_steps=0,
    batch_size=32,
    optimizer="sgd",
    lr=0.05,
    clip_norm=1.0,
    radius=0.0,               # ℓ2 radius δ (0 = radius_fraction × distance to random models)
    radius_fraction=1.0 / 3.0,  # Halimi et al.: one third of the distance to a random model
    num_random=3,             # random LoRA initialisations for that distance
    stop_quantile=0.5,
    calibration_split="test",
    max_utility_drop=0.5,
    post_rounds=3,            # FedAvg rounds on the retained clients after PGA
)
RULES = {
    **ga.ascent_rules("pga"),
    "pga.radius": check.non_negative, "pga.radius_fraction": check.positive,
    "pga.num_random": check.integer(1), "pga.post_rounds": check.integer(0),
}


def pga_reference(global_flat: jax.Array, last_updates: jax.Array, weights: jax.Array,
                  keep: jax.Array, server_lr: float = 1.0) -> jax.Array:
  """Halimi et al.'s w_ref: the mean of the other clients' models of the last round.

  Args:
    global_flat: `[P]` w^T.
    last_updates: `[K, P]` each last-round participant's update Δ_k (from w^{T−1}).
    weights: `[K]` FedAvg weights of those participants (sample counts).
    keep: `[K]` bool, False for the target client(s).
    server_lr: the FedAvg server learning rate (w^T = w^{T−1} + lr Σ p_k Δ_k).

  Returns:
    `[P]` w^{T−1} + lr · Σ_{kept} p_k Δ_k / Σ_{kept} p_k (= w^{T−1} if nothing is kept).
  """
  w = weights / jnp.sum(weights)
  previous = global_flat - server_lr * (w @ last_updates)
  kw = jnp.where(keep, weights, 0.0)
  mean_kept = (kw @ last_updates) / jnp.maximum(jnp.sum(kw), 1e-12)
  return previous + server_lr * mean_kept


def last_round_updates(history: federated.UpdateHistory, last_round: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(client ids [K'], updates [K', P]) of the clients that sent an update in `last_round`."""
  if history is None:
    raise ValueError("The run kept no client updates (fed.history_size=0): PGA needs "
                     "fed.history_size ≥ 1.")
  ids, ups = [], []
  rounds, updates = np.asarray(history.rounds), np.asarray(history.updates)
  for k in range(updates.shape[0]):
    slot = np.flatnonzero(rounds[k] == last_round)
    if len(slot):
      ids.append(k)
      ups.append(updates[k, slot[0]])
  if not ids:
    raise ValueError(f"No stored update from round {last_round}: PGA needs fed.history_size ≥ 1.")
  return np.asarray(ids), np.stack(ups)


def check_plain_server(config: ml_collections.ConfigDict, name: str) -> None:
  if config.fed.get("server_momentum", 0.0):
    raise ValueError(f"{name} reconstructs past global models from the stored updates and needs "
                     "a plain FedAvg server (fed.server_momentum = 0).")


def pga(ctx: base.UnlearningContext) -> base.MethodResult:
  c = common.block(ctx.config, "pga", DEFAULTS)
  check_plain_server(ctx.config, "PGA")
  setup, req = ctx.setup, ctx.request
  t0 = time.perf_counter()
  flat, unravel = ravel_pytree(ctx.trained)
  if req.kind == "client":
    ids, ups = last_round_updates(ctx.history, ctx.config.fed.rounds - 1)
    keep = ~np.isin(ids, req.forget_clients)
    ref_flat = pga_reference(flat, jnp.asarray(ups), jnp.asarray(common.client_counts(setup)[ids]),
                             jnp.asarray(keep), ctx.config.fed.server_lr)
    center = unravel(ref_flat)
  else:
    center = ctx.trained
  dists = []
  if c.radius > 0:
    radius = float(c.radius)
  else:
    center_flat = ravel_pytree(center)[0]
    for i in range(c.num_random):
      rand = lora_lib.init_lora(jax.random.key(rng_lib.Stream.PGA_RANDOM_MODELS + i),
                                setup.backbone, setup.lora_config)
      rand = {**rand, **{k: v for k, v in ctx.trained.items() if k not in rand}}
      dists.append(float(jnp.linalg.norm(ravel_pytree(rand)[0] - center_flat)))
    radius = float(c.radius_fraction * np.mean(dists))
  ref_s = time.perf_counter() - t0
  theta, diag, run_s, compile_s = ga.ascend(ctx, c, center, center, radius)
  dist = float(ga.tree_norm(jax.tree.map(jnp.subtract, theta, center)))
  final, rows, post_s = common.continue_fedavg(ctx, theta, c.post_rounds)
  diag.update(radius=radius, random_distances=dists, distance_to_center=dist,
              reference=("mean of the other clients' models" if req.kind == "client"
                         else "trained model"), post_rounds=c.post_rounds, post_time_s=post_s)
  return base.MethodResult(final, wall_time_s=ref_s + run_s + post_s, compile_time_s=compile_s,
                           diagnostics=diag, curves=rows)
