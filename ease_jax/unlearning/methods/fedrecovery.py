"""FedRecovery (Zhang et al. 2023): w^T − scale · Σ_t ρ_t r_t + N(0, σ² I), from the stored
updates only (no client computation).

[ours]: residual of round t = FedAvg aggregate with the forget side − without it; the correction
is `scale` × Σ_t ρ_t r_t with ρ_t = 1 (`weighting='uniform'`, first-order removal; with it
FedRecovery without noise equals FedEraser without calibration) or ρ_t = T ‖r_t‖² / Σ_s ‖r_s‖²
(`'norm'`, emphasises rounds where the client mattered). The paper's exact ρ_t is not
reproduced. Noise: `noise_std` if > 0, else the Gaussian mechanism σ = Δ₂ √(2 ln(1.25/δ)) / ε
with Δ₂ = `sensitivity` (0 = the correction's own norm). Sample / concept: a holder's D_f cannot
be separated inside its stored update; the residual only re-weights holders by their retain
counts (so it barely moves the model; reported as is).
"""
from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ease_jax import lora as lora_lib
from ease_jax import rng as rng_lib
from ease_jax import validation as check
from ease_jax.unlearning import base
from ease_jax.unlearning import common
from ease_jax.unlearning.methods import federaser as fe
from ease_jax.unlearning.methods import pga as pga_lib

_HIGHEST = jax.lax.Precision.HIGHEST

DEFAULTS: dict[str, Any] = dict(
    weighting="uniform",      # 'uniform' | 'norm' (see module docstring)
    scale=1.0,                # multiplier of the correction
    noise_std=0.0,            # σ of the Gaussian noise (> 0 overrides the (ε, δ) rule)
    epsilon=0.0,              # > 0: σ from the Gaussian mechanism with (ε, δ)
    delta=1e-5,
    sensitivity=0.0,          # Δ₂ of the mechanism (0 = ‖correction‖)
)
RULES = {"fedrecovery.weighting": check.one_of("uniform", "norm"),
"fedrecovery.scale": check.real(),
         "fedrecovery.noise_std": check.non_negative, "fedrecovery.epsilon": check.non_negative,
         "fedrecovery.delta": check.real(0.0, 1.0, lo_open=True, hi_open=True),
         "fedrecovery.sensitivity": check.non_negative}


def aggregate_residuals(updates: jax.Array, weights: jax.Array, kept_weights: jax.Array
                        ) -> jax.Array:
  """FedRecovery's gradient residuals: per round, the aggregate with − without the forget side.

  Args:
    updates: `[T, K, P]` per round, each client's update (anything where it did not take part).
    weights: `[T, K]` FedAvg weights as trained (0 = did not take part).
    kept_weights: `[T, K]` weights without the forget data (0 for removed clients).

  Returns:
    `[T, P]` r_t = Σ_k w_tk Δ_tk / Σ_k w_tk − Σ_k v_tk Δ_tk / Σ_k v_tk, where an empty sum of
    weights makes its mean 0: a round only the forget side took part in (Σ_k v_tk = 0) has the
    whole aggregate as its residual (without that side nobody would have taken a step), a round
    nobody took part in has 0.
  """
  def mean(w):
    # Σ w = 0 gives w / 1e-12 = 0: the mean of an empty round is 0.
    total = jnp.sum(w, axis=1, keepdims=True)
    return jnp.einsum("tk,tkp->tp", w / jnp.maximum(total, 1e-12), updates, precision=_HIGHEST)

  return mean(weights) - mean(kept_weights)


def fedrecovery_correction(residuals: jax.Array, weighting: str = "uniform") -> jax.Array:
  """Σ_t ρ_t r_t over `[T, P]` residuals (ρ_t: see the module docstring)."""
  if weighting == "uniform":
    return jnp.sum(residuals, axis=0)
  if weighting == "norm":
    sq = jnp.sum(jnp.square(residuals), axis=1)
    rho = residuals.shape[0] * sq / jnp.maximum(jnp.sum(sq), 1e-30)
    return rho @ residuals
  raise ValueError(f"fedrecovery.weighting must be 'uniform' or 'norm', got {weighting!r}.")


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
  """σ of the classical Gaussian mechanism: Δ₂ √(2 ln(1.25/δ)) / ε (needs 0 < ε, 0 < δ < 1)."""
  if epsilon <= 0 or not 0 < delta < 1:
    raise ValueError(f"Gaussian mechanism needs epsilon > 0 and 0 < delta < 1, got "
                     f"epsilon={epsilon}, delta={delta}.")
  return float(sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon)


def fedrecovery_apply(global_flat: jax.Array, correction: jax.Array, key: jax.Array,
                      noise_std: float, noise_mask: jax.Array | None = None) -> jax.Array:
  """w^T − correction + N(0, σ² I), the noise only where `noise_mask` (`[params]`, 1 = trained;
  None = everywhere) is 1."""
  noise = noise_std * jax.random.normal(key, global_flat.shape, global_flat.dtype)
  if noise_mask is not None:
    noise = noise * noise_mask
  return global_flat - correction + noise


def trained_mask(trainable: Any, freeze_a: bool) -> jax.Array:
  """`[params]` float, 1 on the parameters the federation trains: under FFA-LoRA
  (`lora.freeze_a`) every A factor stays at its init in every model, so noise there would move
  what no client can move back (and break FedAvg's exactness for the products A·B)."""
  if not freeze_a:
    return jnp.ones_like(ravel_pytree(trainable)[0])
  labels = lora_lib.frozen_a_labels(trainable)
  ones = jax.tree.map(lambda x, label: jnp.full_like(x, label == "trainable"), trainable, labels)
  return ravel_pytree(ones)[0]


def fedrecovery(ctx: base.UnlearningContext) -> base.MethodResult:
  c = common.block(ctx.config, "fedrecovery", DEFAULTS)
  pga_lib.check_plain_server(ctx.config, "FedRecovery")
  t0 = time.perf_counter()
  counts = common.client_counts(ctx.setup)
  rounds, ups, w = fe.round_major(ctx.history, counts)
  fe.check_full_history(rounds, ctx.config, "FedRecovery")
  kept = w * (common.kept_counts(ctx) / np.maximum(counts, 1.0))[None, :]
  residuals = aggregate_residuals(jnp.asarray(ups), jnp.asarray(w), jnp.asarray(kept))
  correction = c.scale * ctx.config.fed.server_lr * fedrecovery_correction(residuals, c.weighting)
  if c.noise_std > 0:
    sigma = float(c.noise_std)
  elif c.epsilon > 0:
    sens = c.sensitivity or float(jnp.linalg.norm(correction))
    sigma = gaussian_sigma(c.epsilon, c.delta, sens)
  else:
    sigma = 0.0
  flat, unravel = ravel_pytree(ctx.trained)
  key = rng_lib.jax_key(ctx.config.seeds.unlearning, rng_lib.Stream.FEDRECOVERY_NOISE)
  mask = trained_mask(ctx.trained, ctx.setup.lora_config.freeze_a)
  theta = unravel(jax.block_until_ready(fedrecovery_apply(flat, correction, key, sigma, mask)))
  wall = time.perf_counter() - t0
  diag = dict(noise_std=sigma, correction_norm=float(jnp.linalg.norm(correction)),
              residual_norms=np.linalg.norm(np.asarray(residuals), axis=1).round(6).tolist(),
              weighting=c.weighting)
  return base.MethodResult(theta, wall_time_s=wall, diagnostics=diag)
