"""Baseline unlearning methods, behind the same interface as EASE (`@register`ed).

Every method reads its knobs from a config block (`config.<name>`, defaults in `DEFAULTS`; a
missing block means the defaults, an unknown key is an error) and reports its wall time like the
retrain reference: federated rounds by `retrain.round_timing` (the first, compiling round
replaced by the median round), single jitted calls compiled ahead of time and timed apart.

| name | paper | what runs |
|---|---|---|
| `finetune` | — | continued FedAvg on the retained clients' retain data only |
| `gradient_ascent` | — (federated GA) | holders ascend the CLIP loss on their D_f, FedAvg, with a stopping rule |
| `pga` | Halimi et al. 2022 | projected GA inside an ℓ2 ball around the other clients' mean model, then FedAvg |
| `federaser` | Liu et al. 2021 | replay of the stored retained updates from the initial model, calibrated by a few new local steps |
| `fedrecovery` | Zhang et al. 2023 | subtract the forget side's weighted gradient residuals, add Gaussian noise |
| `ccu` | arXiv 2509.23895 | inverse contrastive (visual) + cross-modal retention + dual-set separation, at the holders |
| `mvi_causal` | ICML 2026 "Beyond Sample-Level Forgetting" | shared / modality-specific factors, contrastive semantic editing of the shared factor |

The maths is in small pure functions (`project_to_ball`, `pga_reference`, `federaser_calibrate`,
`federaser_replay`, `aggregate_residuals`, `fedrecovery_correction`, `gaussian_sigma`,
`ccu_losses`, `shared_basis`, `mvi_losses`, `ascent_should_stop`) that the tests check directly.

Choices made where a paper's detail is not available here ([ours], all config knobs):
  * Stopping rule of the ascent methods (GA, PGA): the forget data's mean matched cosine reaches
    the non-member level (the `stop_quantile` quantile of the held-out split's matched cosines
    under the trained model, the same calibration as EASE's BKE target) — PGA's "accuracy on the
    target's data below τ" with τ = what unseen data scores. A divergence guard reverts the last
    round and stops if the alignment gap (matched − unmatched cosine) of a fixed public sample
    falls by more than `max_utility_drop` × its initial value.
  * PGA: the reference is w_ref = w^{T−1} + mean of the non-target participants' last updates
    (Halimi et al.'s (N w^T − w_k)/(N − 1), sample-weighted); w^{T−1} is recovered from the stored
    last-round updates (plain FedAvg server, no momentum). Ascent starts at w_ref. Radius: `radius`
    if > 0, else `radius_fraction` (paper: 1/3) × the mean distance from w_ref to `num_random`
    fresh LoRA initialisations (the paper's "random model"). Sample / concept requests have no
    target client: the ball is centred at the trained model and every holder ascends on its D_f.
  * FedEraser: calibration steps = ceil(`calibration_ratio` × a client's local steps of one round);
    the calibrated update keeps the old update's norm (per leaf = per layer, the paper's code, or
    global) and the new update's direction. It replays every `retain_interval`-th stored round.
    Sample / concept requests: the holders' stored updates include D_f; calibration re-derives
    their direction on D_r only, their magnitude still comes from the old update.
  * FedRecovery: residual of round t = FedAvg aggregate with the forget side − without it;
    the correction is `scale` × Σ_t ρ_t r_t with ρ_t = 1 (`weighting='uniform'`, first-order
    removal; with it FedRecovery without noise equals FedEraser without calibration) or
    ρ_t = T ‖r_t‖² / Σ_s ‖r_s‖² (`'norm'`, emphasises rounds where the client mattered). The
    paper's exact ρ_t is not reproduced. Noise: `noise_std` if > 0, else the Gaussian mechanism
    σ = Δ₂ √(2 ln(1.25/δ)) / ε with Δ₂ = `sensitivity` (0 = the correction's own norm).
    Sample / concept: a holder's D_f cannot be separated inside its stored update; the residual
    only re-weights holders by their retain counts (so it barely moves the model; reported as is).
  * CCU (federated): the holders run `steps` local steps of
      L = L_inv + λ_ret L_ret + λ_sep L_sep + λ_clip CLIP(retain batch)
    and the server averages their updates (weights |D_f ∩ D_h|). L_inv ("inverse contrastive",
    visual side only): InfoNCE image→text on D_f with each image's positive re-assigned to another
    forget caption (cyclic shift) and the text side stop-gradient'ed, so only the visual tower
    dissociates. L_ret (cross-modal retention): 1 − cos between current and original text
    embeddings of the forget captions and of retain pairs (both towers). L_sep (dual-set
    separation): squared change of the retain–retain image similarity matrix (intra-set
    structure) + hinge on forget–retain image similarities rising above their original values
    (the forget perturbation must not spill into the retain structure).
  * MVI (`mvi_causal`): the variational posterior over shared / modality-specific factors is
    replaced by its linear-Gaussian limit (probabilistic CCA): the shared subspace is the top
    `shared_dim` eigenvectors of the symmetrised image–text cross-covariance of public pairs
    under the trained model; shared factor = B Bᵀ u, specific = (I − B Bᵀ) u. Contrastive semantic
    editing on D_f: the shared-factor similarity rows of forget pairs are pushed towards
    uniform (logsumexp − mean, both directions, bounded below by 0: the matched pair no longer
    stands out), the specific factors of forget pairs and the embeddings of retain pairs are kept
    at their original values (locality), plus λ_clip CLIP on retain data.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ease_jax import experiment
from ease_jax import federated
from ease_jax import lora as lora_lib
from ease_jax import losses
from ease_jax.model import CLIP
from ease_jax.unlearning import base
from ease_jax.unlearning import ease
from ease_jax.unlearning import retrain as retrain_lib

PyTree = Any
_HIGHEST = jax.lax.Precision.HIGHEST

# Documented defaults of each method's config block.
DEFAULTS: dict[str, dict[str, Any]] = dict(
    finetune=dict(
        rounds=3,                 # FedAvg rounds on the retained clients (EASE's PFL has 3)
    ),
    gradient_ascent=dict(
        max_rounds=5,             # upper bound on ascent rounds
        local_steps=0,            # holder steps per round (0 = one epoch over its D_f)
        batch_size=32,
        optimizer="sgd",
        lr=0.05,
        clip_norm=1.0,            # global-norm gradient clipping (0 = none)
        stop_quantile=0.5,        # stop at this quantile of non-member matched cosines
        calibration_split="test", # non-member pairs of the stopping level ('test' | 'public')
        max_utility_drop=0.5,     # divergence guard on the public alignment gap
    ),
    pga=dict(
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
    ),
    federaser=dict(
        calibration_ratio=0.5,    # calibration steps / original local steps (0 = plain replay)
        retain_interval=1,        # replay every k-th stored round
        norm="leaf",              # 'leaf' (per layer, as the paper's code) | 'global'
    ),
    fedrecovery=dict(
        weighting="uniform",      # 'uniform' | 'norm' (see module docstring)
        scale=1.0,                # multiplier of the correction
        noise_std=0.0,            # σ of the Gaussian noise (> 0 overrides the (ε, δ) rule)
        epsilon=0.0,              # > 0: σ from the Gaussian mechanism with (ε, δ)
        delta=1e-5,
        sensitivity=0.0,          # Δ₂ of the mechanism (0 = ‖correction‖)
    ),
    ccu=dict(
        steps=30,                 # holder steps (EASE's BKE has 30)
        batch_size=32,
        optimizer="adam",
        lr=2e-3,
        temperature=0.07,         # InfoNCE temperature of L_inv
        retention_weight=1.0,     # λ_ret
        separation_weight=1.0,    # λ_sep
        clip_weight=1.0,          # λ_clip of the CLIP retain term
        retain_source="public",   # 'local' | 'public' (as EASE's bke.retain_source)
        rounds=0,                 # continued FedAvg rounds on the retained clients
    ),
    mvi_causal=dict(
        steps=30,
        batch_size=32,
        optimizer="adam",
        lr=2e-3,
        shared_dim=32,            # dimension of the shared (modality-consistent) factor
        temperature=0.07,         # of the shared-factor similarity rows
        specific_weight=1.0,      # keep forget pairs' modality-specific factors
        locality_weight=1.0,      # keep retain pairs' embeddings
        clip_weight=1.0,
        retain_source="public",
        calibration_pairs=1024,   # public pairs for the shared subspace
        rounds=0,
    ),
)


def method_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`DEFAULTS[name]` overridden by `config.<name>` (if present); unknown keys are errors."""
  out = dict(DEFAULTS[name])
  block = config.get(name)
  if block is not None:
    unknown = sorted(set(block.keys()) - set(out))
    if unknown:
      raise KeyError(f"Unknown key(s) {unknown} in config.{name}; known: {sorted(out)}.")
    out.update(block.to_dict())
  return ml_collections.ConfigDict(out)


def add_config_blocks(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds every baseline's block with its defaults (so `--config.pga.radius=...` works)."""
  for name, block in DEFAULTS.items():
    if name not in config:
      config[name] = ml_collections.ConfigDict(block)
  return config


# ------------------------------------------------------------------------------ pure pieces


def tree_norm(tree: PyTree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def project_to_ball(x: PyTree, center: PyTree, radius: jax.Array | float) -> PyTree:
  """Euclidean projection of `x` onto {w: ‖w − center‖₂ ≤ radius} (global norm over the tree).

  Points inside the ball (and any point, for an infinite radius) are returned unchanged.
  """
  diff = jax.tree.map(jnp.subtract, x, center)
  norm = tree_norm(diff)
  factor = radius / jnp.maximum(norm, 1e-12)
  scaled = jax.tree.map(lambda c, d: c + factor * d, center, diff)
  return federated.tree_where(norm <= radius, x, scaled)


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
    no, nn = tree_norm(old_update), tree_norm(new_update)
    factor = jnp.where(nn > 0, no / jnp.maximum(nn, 1e-30), 0.0)
    return jax.tree.map(lambda n: factor * n, new_update)
  raise ValueError(f"federaser.norm must be 'leaf' or 'global', got {norm!r}.")


def federaser_replay(start: PyTree, updates: Sequence[PyTree], weights: Sequence[jax.Array],
                     optimizer: optax.GradientTransformation) -> PyTree:
  """Plain replay: FedAvg server steps with the given per-round client updates.

  Args:
    start: the initial model w^0.
    updates: per replayed round, a tree with a leading client axis `[C_t, ...]`.
    weights: per round, `[C_t]` FedAvg weights.
    optimizer: the server optimizer of the original run.
  """
  state = federated.init_server(start, optimizer)
  for deltas, w in zip(updates, weights):
    state, _ = federated.fedavg(state, deltas, jnp.asarray(w, jnp.float32), optimizer)
  return state.trainable


def aggregate_residuals(updates: jax.Array, weights: jax.Array, kept_weights: jax.Array
                        ) -> jax.Array:
  """FedRecovery's gradient residuals: per round, the aggregate with − without the forget side.

  Args:
    updates: `[T, K, P]` per round, each client's update (anything where it did not take part).
    weights: `[T, K]` FedAvg weights as trained (0 = did not take part).
    kept_weights: `[T, K]` weights without the forget data (0 for removed clients).

  Returns:
    `[T, P]` r_t = Σ_k w_tk Δ_tk / Σ_k w_tk − Σ_k v_tk Δ_tk / Σ_k v_tk (0 for empty rounds).
  """
  def mean(w):
    total = jnp.sum(w, axis=1, keepdims=True)
    return jnp.einsum("tk,tkp->tp", w / jnp.maximum(total, 1e-12), updates, precision=_HIGHEST)

  with_f, without_f = mean(weights), mean(kept_weights)
  ok = (jnp.sum(weights, 1) > 0) & (jnp.sum(kept_weights, 1) > 0)
  return jnp.where(ok[:, None], with_f - without_f, 0.0)


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
                      noise_std: float) -> jax.Array:
  """w^T − correction + N(0, σ² I)."""
  noise = noise_std * jax.random.normal(key, global_flat.shape, global_flat.dtype)
  return global_flat - correction + noise


def ascent_should_stop(forget_cos: float, target: float, utility: float, utility0: float,
                       max_utility_drop: float) -> tuple[bool, bool]:
  """The ascent methods' stopping rule: (stop, revert_last_round).

  Stops when the forget data's mean matched cosine has reached the non-member level
  (`forget_cos <= target`); stops and reverts when the public alignment gap has fallen by
  more than `max_utility_drop · |utility0|` (the ascent started to destroy the model).
  """
  if utility0 - utility > max_utility_drop * abs(utility0):
    return True, True
  return forget_cos <= target, False


def _rows_infonce(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over valid rows of CE(logits_i, targets_i), invalid columns masked out."""
  logits = jnp.where(valid[None, :], logits, -1e9)
  ce = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, targets[:, None], 1)[:, 0]
  return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1.0)


def shifted_targets(valid: jax.Array) -> jax.Array:
  """`[B]` index of the next valid row (cyclically) for each row: a derangement of the valid
  rows when there are ≥ 2 of them (a single valid row maps to itself)."""
  b = valid.shape[0]
  idx = jnp.arange(b)
  # For row i, the first valid j > i, else the first valid j overall.
  later = jnp.where(valid[None, :] & (idx[None, :] > idx[:, None]), idx[None, :], b + idx[None, :])
  first = jnp.min(later, axis=1)
  return jnp.where(first >= b, jnp.argmax(valid), first)


def ccu_losses(img_f: jax.Array, txt_f: jax.Array, img_r: jax.Array, txt_r: jax.Array,
               orig: Mapping[str, jax.Array], f_mask: jax.Array, r_mask: jax.Array,
               temperature: float) -> dict[str, jax.Array]:
  """CCU's three terms on one step's embeddings (see the module docstring).

  Args:
    img_f, txt_f: `[B, D]` current embeddings of forget pairs.
    img_r, txt_r: `[B', D]` current embeddings of retain pairs.
    orig: the original (trained-model) embeddings under the same keys: `img_f`, `txt_f`,
      `img_r`, `txt_r` (treated as constants).
    f_mask, r_mask: `[B]`, `[B']` valid rows.
    temperature: InfoNCE temperature of L_inv.

  Returns:
    `inverse` (L_inv, gradients reach the images only), `retention` (L_ret), `separation`
    (L_sep), each a scalar; all are 0 at the original embeddings except `inverse`.
  """
  o = jax.tree.map(lambda x: jax.lax.stop_gradient(losses.l2_normalize(x.astype(jnp.float32))),
                   dict(orig))
  u_f, w_f = losses.l2_normalize(img_f), losses.l2_normalize(txt_f)
  u_r, w_r = losses.l2_normalize(img_r), losses.l2_normalize(txt_r)
  fv, rv = f_mask > 0, r_mask > 0
  logits = jnp.matmul(u_f, jax.lax.stop_gradient(w_f).T, precision=_HIGHEST) / temperature
  inverse = _rows_infonce(logits, shifted_targets(fv), fv)

  def mean_rows(x, v):
    return jnp.sum(jnp.where(v, x, 0.0)) / jnp.maximum(jnp.sum(v), 1.0)

  retention = (mean_rows(1.0 - jnp.sum(w_f * o["txt_f"], 1), fv)
               + mean_rows(1.0 - jnp.sum(w_r * o["txt_r"], 1), rv)
               + mean_rows(1.0 - jnp.sum(u_r * o["img_r"], 1), rv))
  rr = rv[:, None] & rv[None, :]
  s_rr = jnp.matmul(u_r, u_r.T, precision=_HIGHEST)
  s_rr0 = jnp.matmul(o["img_r"], o["img_r"].T, precision=_HIGHEST)
  structure = jnp.sum(jnp.where(rr, jnp.square(s_rr - s_rr0), 0.0)) / jnp.maximum(jnp.sum(rr), 1)
  fr = fv[:, None] & rv[None, :]
  s_fr = jnp.matmul(u_f, u_r.T, precision=_HIGHEST)
  s_fr0 = jnp.matmul(o["img_f"], o["img_r"].T, precision=_HIGHEST)
  spill = jnp.sum(jnp.where(fr, jax.nn.relu(s_fr - s_fr0), 0.0)) / jnp.maximum(jnp.sum(fr), 1)
  return dict(inverse=inverse, retention=retention, separation=structure + spill)


def shared_basis(img: jax.Array, txt: jax.Array, dim: int) -> jax.Array:
  """MVI's shared-factor subspace (linear-Gaussian / probabilistic-CCA limit).

  Args:
    img, txt: `[n, D]` paired embeddings (unit-normalised inside, then centred).
    dim: k, the shared dimension (≤ D).

  Returns:
    `[D, k]` orthonormal: the top-k eigenvectors of the symmetrised cross-covariance
    (Cxy + Cyx)/2, i.e. the directions along which both modalities co-vary.
  """
  x = losses.l2_normalize(jnp.asarray(img, jnp.float32))
  y = losses.l2_normalize(jnp.asarray(txt, jnp.float32))
  x, y = x - x.mean(0), y - y.mean(0)
  c = jnp.matmul(x.T, y, precision=_HIGHEST) / x.shape[0]
  _, vecs = jnp.linalg.eigh(0.5 * (c + c.T))
  return vecs[:, ::-1][:, :dim]


def factorize(emb: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Unit embedding `[B, D]` -> (shared `[B, D]` = B Bᵀ u, specific `[B, D]` = u − shared)."""
  u = losses.l2_normalize(emb.astype(jnp.float32))
  shared = jnp.matmul(jnp.matmul(u, basis, precision=_HIGHEST), basis.T, precision=_HIGHEST)
  return shared, u - shared


def shared_margin(img: jax.Array, txt: jax.Array, basis: jax.Array) -> jax.Array:
  """How much matched pairs stand out in the shared factor: mean_i cos_s(i, i) − mean_{i≠j}
  cos_s(i, j), with cos_s the cosine of the shared factors (`[n, D]` inputs, n ≥ 2)."""
  sv, _ = factorize(img, basis)
  st, _ = factorize(txt, basis)
  s = jnp.matmul(losses.l2_normalize(sv), losses.l2_normalize(st).T, precision=_HIGHEST)
  n = s.shape[0]
  return jnp.trace(s) / n - (jnp.sum(s) - jnp.trace(s)) / (n * (n - 1))


def mvi_losses(img_f: jax.Array, txt_f: jax.Array, img_r: jax.Array, txt_r: jax.Array,
               orig: Mapping[str, jax.Array], f_mask: jax.Array, r_mask: jax.Array,
               basis: jax.Array, temperature: float) -> dict[str, jax.Array]:
  """MVI's terms (see the module docstring): `edit` (≥ 0; 0 iff each forget pair's shared-factor
  similarity row is constant over valid columns, i.e. the matched pair does not stand out),
  `specific` and `locality` (0 at the original embeddings)."""
  o = jax.tree.map(lambda x: jax.lax.stop_gradient(x.astype(jnp.float32)), dict(orig))
  fv, rv = f_mask > 0, r_mask > 0
  sv, sp_v = factorize(img_f, basis)
  st, sp_t = factorize(txt_f, basis)
  s = jnp.matmul(losses.l2_normalize(sv), losses.l2_normalize(st).T, precision=_HIGHEST)
  s = s / temperature
  pair = fv[:, None] & fv[None, :]
  masked = jnp.where(pair, s, -1e9)
  count = jnp.maximum(jnp.sum(pair, 1), 1)
  mean_row = jnp.sum(jnp.where(pair, s, 0.0), 1) / count
  mean_col = jnp.sum(jnp.where(pair, s, 0.0), 0) / count
  # logsumexp − mean − log n ≥ 0 with equality iff the row is constant (Jensen).
  e_row = jax.nn.logsumexp(masked, 1) - mean_row - jnp.log(count)
  e_col = jax.nn.logsumexp(masked, 0) - mean_col - jnp.log(count)

  def mean_rows(x, v):
    return jnp.sum(jnp.where(v, x, 0.0)) / jnp.maximum(jnp.sum(v), 1.0)

  edit = 0.5 * (mean_rows(e_row, fv) + mean_rows(e_col, fv))
  _, sp_v0 = factorize(o["img_f"], basis)
  _, sp_t0 = factorize(o["txt_f"], basis)
  specific = mean_rows(jnp.sum(jnp.square(sp_v - sp_v0), 1) + jnp.sum(jnp.square(sp_t - sp_t0), 1),
                       fv)
  u_r, w_r = losses.l2_normalize(img_r), losses.l2_normalize(txt_r)
  locality = (mean_rows(1.0 - jnp.sum(u_r * losses.l2_normalize(o["img_r"]), 1), rv)
              + mean_rows(1.0 - jnp.sum(w_r * losses.l2_normalize(o["txt_r"]), 1), rv))
  return dict(edit=edit, specific=specific, locality=locality)


# ------------------------------------------------------------------------------- helpers


def _timed(fn: Callable, *args) -> tuple[Callable, Any, float, float]:
  """AOT-compiles a jitted `fn` for `args`: (compiled, first output, compile_s, run_s)."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  t1 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return compiled, out, t1 - t0, time.perf_counter() - t1


def _client_counts(setup: experiment.FederatedSetup) -> np.ndarray:
  return np.array([len(t) for t in setup.client_texts()], np.float32)


def _kept_counts(ctx: base.UnlearningContext) -> np.ndarray:
  return np.array([len(t) for t in ctx.retain_client_texts], np.float32)


def _continue_fedavg(ctx: base.UnlearningContext, start: PyTree, rounds: int, offset: int = 0
                     ) -> tuple[PyTree, list[dict[str, Any]], float]:
  """FedAvg on the retained clients' retain data from `start`: (θ, rows, steady seconds)."""
  if rounds <= 0:
    return start, [], 0.0
  res = experiment.run_federated(
      ctx.setup, ctx.config, None, trainable=start, num_rounds=rounds,
      client_texts=ctx.retain_client_texts, active_clients=ctx.retain_clients,
      round_offset=ctx.config.fed.rounds + offset, desc="baseline FedAvg", progress=False)
  return res.trainable, res.metrics, retrain_lib.round_timing(res.metrics)["steady_time_s"]


def nonmember_level(ctx: base.UnlearningContext, quantile: float, split: str) -> float:
  """The `quantile` of matched cosines of non-member pairs under the trained model."""
  setup = ctx.setup
  images = {"test": setup.test_images, "public": setup.public_images}.get(split)
  if images is None or len(images) == 0:
    raise ValueError(f"calibration_split must be 'test' or 'public' (non-empty), got {split!r}.")
  cos = ease.matched_cosines(setup.model, setup.backbone, ctx.trained, setup.data,
                             setup.texts_of(images))
  return float(np.quantile(cos, quantile))


def alignment_gap(model: CLIP, backbone: PyTree, trainable: PyTree, data: federated.DeviceData,
                  texts: np.ndarray) -> float:
  """Mean matched − mean unmatched cosine of `texts`' pairs (a cheap utility proxy)."""
  texts = np.asarray(texts, np.int32)
  ie, te = federated.embed(model, backbone, trainable, data, np.asarray(data.text_image)[texts],
                           texts)
  ie = ie / np.linalg.norm(ie, axis=1, keepdims=True)
  te = te / np.linalg.norm(te, axis=1, keepdims=True)
  s = ie @ te.T
  n = len(texts)
  return float(np.trace(s) / n - (s.sum() - np.trace(s)) / max(n * (n - 1), 1))


def _utility_texts(ctx: base.UnlearningContext, n: int = 256) -> np.ndarray:
  pool = ctx.setup.texts_of(ctx.setup.public_images)
  if len(pool) == 0:
    pool = ctx.setup.texts_of(ctx.eval_subsets["retain"])
  rng = np.random.default_rng([ctx.config.seeds.unlearning, 11])
  return np.sort(rng.choice(pool, min(n, len(pool)), replace=False))


def _optimizer(c: ml_collections.ConfigDict, freeze_lora_a: bool) -> optax.GradientTransformation:
  opt = experiment.make_optimizer(c.optimizer, c.lr, freeze_lora_a=freeze_lora_a)
  if c.get("clip_norm", 0.0) > 0:
    opt = optax.chain(optax.clip_by_global_norm(c.clip_norm), opt)
  return opt


# ------------------------------------------------------------------------------ finetune


@base.register("finetune")
def finetune(ctx: base.UnlearningContext) -> base.MethodResult:
  """Continued FedAvg of the trained model on the retained clients' retain data only.

  D_f is never read: the holders train on `retain_client_texts` (D_f removed), leaving clients
  are inactive.
  """
  c = method_config(ctx.config, "finetune")
  theta, rows, seconds = _continue_fedavg(ctx, ctx.trained, c.rounds)
  return base.MethodResult(theta, wall_time_s=seconds, curves=rows,
                           diagnostics=dict(rounds=c.rounds))


# ----------------------------------------------------------------- gradient ascent and PGA


def make_ascent_round(model: CLIP, optimizer: optax.GradientTransformation
                      ) -> Callable[..., PyTree]:
  """Holders' local (projected) gradient ascent on the CLIP loss of their D_f, averaged.

  Returns jitted `(trainable, backbone, data, f_idx [H, S, B], f_mask, weights [H], center,
  radius) -> (θ, per-holder last loss [H])`: each holder runs S steps of `optimizer` on −CLIP,
  projecting onto the ball (center, radius) after every step (radius = inf: plain ascent); the
  server takes the |D_f ∩ D_h|-weighted mean of the holders' models (inside the ball too, by
  convexity).
  """
  neg = lambda p, b, batch: -federated.clip_objective(model)(p, b, batch)

  def holder(trainable, backbone, data, f_idx, f_mask, center, radius):
    def step(carry, xs):
      params, opt_state = carry
      i, m = xs
      loss, g = jax.value_and_grad(neg)(params, backbone, dict(data.batch(i), mask=m))
      upd, new_state = optimizer.update(g, opt_state, params)
      new = project_to_ball(optax.apply_updates(params, upd), center, radius)
      active = jnp.any(m)
      return (federated.tree_where(active, new, params),
              federated.tree_where(active, new_state, opt_state)), -loss

    (params, _), ls = jax.lax.scan(step, (trainable, optimizer.init(trainable)), (f_idx, f_mask))
    return params, ls[-1]

  @jax.jit
  def run(trainable, backbone, data, f_idx, f_mask, weights, center, radius):
    backbone = jax.lax.stop_gradient(backbone)
    params, last = jax.vmap(holder, in_axes=(None, None, None, 0, 0, None, None))(
        trainable, backbone, data, f_idx, f_mask, center, radius)
    return federated.weighted_mean(params, weights), last

  return run


def _ascent(ctx: base.UnlearningContext, c: ml_collections.ConfigDict, start: PyTree,
            center: PyTree, radius: float) -> tuple[PyTree, dict[str, Any], float, float]:
  """The ascent rounds with the stopping rule: (θ, diagnostics, run_s, compile_s)."""
  setup = ctx.setup
  t0 = time.perf_counter()
  target = nonmember_level(ctx, c.stop_quantile, c.calibration_split)
  util_texts = _utility_texts(ctx)
  utility0 = alignment_gap(setup.model, setup.backbone, start, setup.data, util_texts)
  setup_s = time.perf_counter() - t0
  forget_texts = ctx.request.forget_client_texts(setup)
  steps = c.local_steps or max(-(-len(forget_texts[h]) // c.batch_size)
                               for h in ctx.request.holders)
  run = make_ascent_round(setup.model, _optimizer(c, setup.lora_config.freeze_a))
  theta, compiled, compile_s, run_s = start, None, 0.0, setup_s
  history, stopped = [], "max_rounds"
  for r in range(c.max_rounds):
    sched = ease.holder_schedules(ctx, steps, c.batch_size, "none", stream=20 + r)
    args = (theta, setup.backbone, setup.data, jnp.asarray(sched["f_idx"]),
            jnp.asarray(sched["f_mask"]), jnp.asarray(sched["weights"]), center,
            jnp.float32(radius))
    t0 = time.perf_counter()
    if compiled is None:
      compiled, (new, last), compile_s, first_s = _timed(run, *args)
      t0 -= first_s
    else:
      new, last = jax.block_until_ready(compiled(*args))
    forget_cos = float(ease.matched_cosines(setup.model, setup.backbone, new, setup.data,
                                            ctx.request.forget_texts).mean())
    utility = alignment_gap(setup.model, setup.backbone, new, setup.data, util_texts)
    stop, revert = ascent_should_stop(forget_cos, target, utility, utility0, c.max_utility_drop)
    run_s += time.perf_counter() - t0
    history.append(dict(round=r + 1, forget_cos=forget_cos, utility=utility,
                        ascent_loss=np.asarray(last).tolist()))
    if revert:
      stopped = "diverging (reverted)"
      break
    theta = new
    if stop:
      stopped = "reached non-member level"
      break
  diag = dict(target_cos=target, utility0=utility0, rounds_run=len(history), stopped=stopped,
              local_steps=int(steps), ascent=history)
  return theta, diag, run_s, compile_s


@base.register("gradient_ascent")
def gradient_ascent(ctx: base.UnlearningContext) -> base.MethodResult:
  """Federated gradient ascent: the holders ascend the CLIP loss on their D_f, FedAvg of their
  models, round after round until the stopping rule fires (non-member level reached, or the
  divergence guard reverts the last round)."""
  c = method_config(ctx.config, "gradient_ascent")
  theta, diag, run_s, compile_s = _ascent(ctx, c, ctx.trained, ctx.trained, float("inf"))
  return base.MethodResult(theta, wall_time_s=run_s, compile_time_s=compile_s, diagnostics=diag)


def last_round_updates(history: federated.UpdateHistory, last_round: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(client ids [K'], updates [K', P]) of the clients that sent an update in `last_round`."""
  ids, ups = [], []
  for k in range(history.updates.shape[0]):
    slot = np.flatnonzero(history.rounds[k] == last_round)
    if len(slot):
      ids.append(k)
      ups.append(history.updates[k, slot[0]])
  if not ids:
    raise ValueError(f"No stored update from round {last_round}: PGA needs fed.history_size ≥ 1.")
  return np.asarray(ids), np.stack(ups)


def _check_plain_server(config: ml_collections.ConfigDict, name: str) -> None:
  if config.fed.get("server_momentum", 0.0):
    raise ValueError(f"{name} reconstructs past global models from the stored updates and needs "
                     "a plain FedAvg server (fed.server_momentum = 0).")


@base.register("pga")
def pga(ctx: base.UnlearningContext) -> base.MethodResult:
  """PGA (Halimi et al. 2022): projected gradient ascent on the target's data inside the ball
  ‖w − w_ref‖ ≤ δ, early-stopped, then `post_rounds` of FedAvg on the retained clients."""
  c = method_config(ctx.config, "pga")
  _check_plain_server(ctx.config, "PGA")
  setup, req = ctx.setup, ctx.request
  t0 = time.perf_counter()
  flat, unravel = ravel_pytree(ctx.trained)
  if req.kind == "client":
    ids, ups = last_round_updates(ctx.history, ctx.config.fed.rounds - 1)
    keep = ~np.isin(ids, req.forget_clients)
    ref_flat = pga_reference(flat, jnp.asarray(ups), jnp.asarray(_client_counts(setup)[ids]),
                             jnp.asarray(keep), ctx.config.fed.server_lr)
    center = unravel(ref_flat)
  else:
    center = ctx.trained
  if c.radius > 0:
    radius, dists = float(c.radius), []
  else:
    dists = []
    center_flat = ravel_pytree(center)[0]
    for i in range(c.num_random):
      rand = lora_lib.init_lora(jax.random.key(10_000 + i), setup.backbone, setup.lora_config)
      rand = {**rand, **{k: v for k, v in ctx.trained.items() if k not in rand}}
      dists.append(float(jnp.linalg.norm(ravel_pytree(rand)[0] - center_flat)))
    radius = float(c.radius_fraction * np.mean(dists))
  ref_s = time.perf_counter() - t0
  theta, diag, run_s, compile_s = _ascent(ctx, c, center, center, radius)
  dist = float(tree_norm(jax.tree.map(jnp.subtract, theta, center)))
  final, rows, post_s = _continue_fedavg(ctx, theta, c.post_rounds)
  diag.update(radius=radius, random_distances=dists, distance_to_center=dist,
              reference=("mean of the other clients' models" if req.kind == "client"
                         else "trained model"), post_rounds=c.post_rounds, post_time_s=post_s)
  return base.MethodResult(final, wall_time_s=ref_s + run_s + post_s, compile_time_s=compile_s,
                           diagnostics=diag, curves=rows)


# ------------------------------------------------------------------------------- FedEraser


def round_major(history: federated.UpdateHistory, weights: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The stored history by round: rounds `[T]`, updates `[T, K, P]`, weights `[T, K]`
  (`weights[k]` where client k sent an update that round, else 0)."""
  rounds = np.unique(history.rounds[history.rounds >= 0])
  k, _, p = history.updates.shape
  ups = np.zeros((len(rounds), k, p), np.float32)
  w = np.zeros((len(rounds), k), np.float32)
  for c in range(k):
    for slot, r in enumerate(history.rounds[c]):
      if r >= 0:
        t = int(np.searchsorted(rounds, r))
        ups[t, c] = history.updates[c, slot]
        w[t, c] = weights[c]
  return rounds, ups, w


def _check_full_history(rounds: np.ndarray, config: ml_collections.ConfigDict, name: str) -> None:
  expected = np.arange(config.fed.rounds)
  if len(rounds) != len(expected) or np.any(rounds != expected):
    raise ValueError(f"{name} needs every round's stored updates from round 0 (it replays the "
                     f"training from the initial model), but the history holds rounds "
                     f"{rounds.tolist()[:5]}...; set fed.history_size ≥ fed.rounds "
                     f"({config.fed.rounds}).")


@base.register("federaser")
def federaser(ctx: base.UnlearningContext) -> base.MethodResult:
  """FedEraser (Liu et al. 2021): replay the retained clients' stored updates from the initial
  model; every `retain_interval`-th round, each retained participant runs ceil(ratio × its
  local steps) calibration steps from the current unlearned model, and its stored update is
  replaced by ‖old‖ · new/‖new‖. With `calibration_ratio = 0` it is plain replay."""
  c = method_config(ctx.config, "federaser")
  setup, cfg, fed = ctx.setup, ctx.config, ctx.config.fed
  if not 0.0 <= c.calibration_ratio <= 1.0:
    raise ValueError(f"federaser.calibration_ratio must be in [0, 1], got {c.calibration_ratio}.")
  if c.retain_interval < 1:
    raise ValueError(f"federaser.retain_interval must be >= 1, got {c.retain_interval}.")
  rounds, ups, _ = round_major(ctx.history, _client_counts(setup))
  _check_full_history(rounds, cfg, "FedEraser")
  t_start = time.perf_counter()
  kept = _kept_counts(ctx)
  retained = np.asarray(ctx.retain_clients)
  _, unravel = ravel_pytree(ctx.trained)
  start = experiment.init_trainable(setup, cfg)
  server_opt = federated.server_optimizer(fed.server_lr, fed.get("server_momentum", 0.0))
  state = federated.init_server(start, server_opt)
  texts = ctx.retain_client_texts
  cal_steps = [math.ceil(c.calibration_ratio * federated.num_local_steps(
      len(texts[k]), fed.batch_size, fed.local_epochs)) for k in retained]
  num_cal = max(cal_steps) if c.calibration_ratio > 0 else 0
  round_fn = None
  if num_cal:
    update = federated.make_client_update(federated.clip_objective(setup.model),
                                          experiment.make_optimizer(
                                              fed.client_optimizer, fed.client_lr,
                                              freeze_lora_a=setup.lora_config.freeze_a))
    round_fn = federated.make_round_fn(update, "vmap")
  calibrate = jax.jit(jax.vmap(lambda o, n: federaser_calibrate(o, n, c.norm)))
  server_step = jax.jit(lambda s, d, w: federated.fedavg(s, d, w, server_opt))
  unravel_many = jax.jit(jax.vmap(unravel))
  compiled, compile_s, replayed, cal_norms = None, 0.0, [], []
  for t, r in enumerate(rounds):
    if r % c.retain_interval:
      continue
    took_part = [i for i, k in enumerate(retained) if np.any(ctx.history.rounds[k] == r)]
    if len(took_part) == 0:
      continue
    old = unravel_many(jnp.asarray(ups[t, retained]))
    weights = np.where(np.isin(np.arange(len(retained)), took_part), kept[retained], 0.0)
    deltas = old
    if num_cal:
      full = federated.build_client_schedules([texts[k] for k in retained], fed.batch_size,
                                              fed.local_epochs, max(federated.num_local_steps(
                                                  len(texts[k]), fed.batch_size,
                                                  fed.local_epochs) for k in retained),
                                              cfg.seeds.data, fed.rounds + 1000 + int(r),
                                              retained)
      idx, mask = full.text_indices[:, :num_cal].copy(), full.mask[:, :num_cal].copy()
      for row, n in enumerate(cal_steps):
        mask[row, n:] = False
      args = (state.trainable, setup.backbone, setup.data, jnp.asarray(idx), jnp.asarray(mask))
      if compiled is None:
        t0 = time.perf_counter()
        compiled = round_fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
      new, _ = compiled(*args)
      deltas = calibrate(old, new)
      cal_norms.append(float(tree_norm(new)))
    state, _ = server_step(state, deltas, jnp.asarray(weights, jnp.float32))
    replayed.append(int(r))
  theta = jax.block_until_ready(state.trainable)
  wall = time.perf_counter() - t_start - compile_s
  diag = dict(replayed_rounds=replayed, calibration_steps=[int(s) for s in cal_steps],
              calibration_ratio=c.calibration_ratio, retain_interval=c.retain_interval,
              norm=c.norm)
  return base.MethodResult(theta, wall_time_s=wall, compile_time_s=compile_s, diagnostics=diag)


# ----------------------------------------------------------------------------- FedRecovery


@base.register("fedrecovery")
def fedrecovery(ctx: base.UnlearningContext) -> base.MethodResult:
  """FedRecovery (Zhang et al. 2023): w^T − scale · Σ_t ρ_t r_t + N(0, σ² I), from the stored
  updates only (no client computation)."""
  c = method_config(ctx.config, "fedrecovery")
  _check_plain_server(ctx.config, "FedRecovery")
  t0 = time.perf_counter()
  counts = _client_counts(ctx.setup)
  rounds, ups, w = round_major(ctx.history, counts)
  _check_full_history(rounds, ctx.config, "FedRecovery")
  kept = w * (_kept_counts(ctx) / np.maximum(counts, 1.0))[None, :]
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
  key = jax.random.fold_in(jax.random.key(ctx.config.seeds.unlearning), 7)
  theta = unravel(jax.block_until_ready(fedrecovery_apply(flat, correction, key, sigma)))
  wall = time.perf_counter() - t0
  diag = dict(noise_std=sigma, correction_norm=float(jnp.linalg.norm(correction)),
              residual_norms=np.linalg.norm(np.asarray(residuals), axis=1).round(6).tolist(),
              weighting=c.weighting)
  return base.MethodResult(theta, wall_time_s=wall, diagnostics=diag)


# ------------------------------------------------------------------------------ CCU and MVI


def make_holder_update(model: CLIP, optimizer: optax.GradientTransformation,
                       step_loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
                       ) -> Callable[..., tuple[PyTree, dict[str, jax.Array]]]:
  """Holders' local steps of `step_loss(emb, orig) -> (loss, terms)`, FedAvg of their Δ.

  `emb`/`orig` hold `img_f, txt_f, img_r, txt_r` of the current / original (trained) model.
  Returns jitted `(trainable, original, backbone, data, f_idx [H, S, B], f_mask, r_idx, r_mask,
  weights [H], aux) -> (θ, last-step terms [H])`.
  """

  def embed(params, backbone, batch):
    ie, te, _ = model(backbone, params, batch["pixels"], batch["input_ids"],
                      batch["attention_mask"])
    return ie, te

  def holder(trainable, original, backbone, data, f_idx, f_mask, r_idx, r_mask, aux):
    def step(carry, xs):
      params, opt_state = carry
      fi, fm, ri, rm = xs
      fb, rb = data.batch(fi), data.batch(ri)
      o_f, o_r = embed(original, backbone, fb), embed(original, backbone, rb)
      orig = dict(img_f=o_f[0], txt_f=o_f[1], img_r=o_r[0], txt_r=o_r[1])

      def loss_fn(p):
        e_f, e_r = embed(p, backbone, fb), embed(p, backbone, rb)
        emb = dict(img_f=e_f[0], txt_f=e_f[1], img_r=e_r[0], txt_r=e_r[1])
        return step_loss(p, backbone, emb, orig, fm, rm, rb, aux)

      (_, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
      upd, opt_state = optimizer.update(g, opt_state, params)
      return (optax.apply_updates(params, upd), opt_state), terms

    (params, _), terms = jax.lax.scan(step, (trainable, optimizer.init(trainable)),
                                      (f_idx, f_mask, r_idx, r_mask))
    return jax.tree.map(jnp.subtract, params, trainable), jax.tree.map(lambda x: x[-1], terms)

  @jax.jit
  def run(trainable, original, backbone, data, f_idx, f_mask, r_idx, r_mask, weights, aux):
    backbone = jax.lax.stop_gradient(backbone)
    original = jax.lax.stop_gradient(original)
    deltas, terms = jax.vmap(holder, in_axes=(None, None, None, None, 0, 0, 0, 0, None))(
        trainable, original, backbone, data, f_idx, f_mask, r_idx, r_mask, aux)
    delta = federated.weighted_mean(deltas, weights)
    return jax.tree.map(jnp.add, trainable, delta), terms

  return run


def _clip_term(model: CLIP, params: PyTree, backbone: PyTree, rb: Mapping[str, jax.Array],
               rm: jax.Array, weight: float) -> jax.Array:
  if weight == 0:
    return jnp.zeros(())
  ie, te, ls = model(backbone, params, rb["pixels"], rb["input_ids"], rb["attention_mask"])
  return weight * losses.clip_loss(ie, te, ls, rm)


def _run_holders(ctx: base.UnlearningContext, c: ml_collections.ConfigDict, step_loss: Callable,
                 aux: Any, stream: int, prep_s: float) -> base.MethodResult:
  setup = ctx.setup
  sched = ease.holder_schedules(ctx, c.steps, c.batch_size, c.retain_source, stream)
  run = make_holder_update(setup.model, _optimizer(c, setup.lora_config.freeze_a), step_loss)
  args = (ctx.trained, ctx.trained, setup.backbone, setup.data,
          *(jnp.asarray(sched[k]) for k in ("f_idx", "f_mask", "r_idx", "r_mask", "weights")),
          aux)
  _, (theta, terms), compile_s, run_s = _timed(run, *args)
  final, rows, post_s = _continue_fedavg(ctx, theta, c.rounds)
  diag = {f"last_{k}": np.asarray(v).tolist() for k, v in terms.items()}
  diag.update(steps=c.steps, rounds=c.rounds, post_time_s=post_s)
  return base.MethodResult(final, wall_time_s=prep_s + run_s + post_s, compile_time_s=compile_s,
                           diagnostics=diag, curves=rows)


@base.register("ccu")
def ccu(ctx: base.UnlearningContext) -> base.MethodResult:
  """CCU (cross-modal contrastive unlearning), federated: the holders minimise
  L_inv + λ_ret L_ret + λ_sep L_sep + λ_clip CLIP(retain), the server averages."""
  c = method_config(ctx.config, "ccu")
  model = ctx.setup.model

  def step_loss(p, backbone, emb, orig, fm, rm, rb, aux):
    del aux
    t = ccu_losses(emb["img_f"], emb["txt_f"], emb["img_r"], emb["txt_r"], orig, fm, rm,
                   c.temperature)
    clip = _clip_term(model, p, backbone, rb, rm, c.clip_weight)
    total = (t["inverse"] + c.retention_weight * t["retention"]
             + c.separation_weight * t["separation"] + clip)
    return total, dict(t, clip=clip)

  return _run_holders(ctx, c, step_loss, jnp.zeros(()), stream=40, prep_s=0.0)


@base.register("mvi_causal")
def mvi_causal(ctx: base.UnlearningContext) -> base.MethodResult:
  """MVI-style causal unlearning, federated: shared / specific factors from public pairs, then the
  holders' contrastive semantic editing of the shared factor with specific-factor and retain
  locality terms; the server averages."""
  c = method_config(ctx.config, "mvi_causal")
  setup = ctx.setup
  model = setup.model
  t0 = time.perf_counter()
  pool = setup.texts_of(setup.public_images)
  if len(pool) == 0:
    raise ValueError("mvi_causal estimates the shared subspace on the public split, which is empty.")
  rng = np.random.default_rng([ctx.config.seeds.unlearning, 13])
  texts = np.sort(rng.choice(pool, min(c.calibration_pairs, len(pool)), replace=False))
  ie, te = federated.embed(model, setup.backbone, ctx.trained, setup.data,
                           np.asarray(setup.data.text_image)[texts], texts)
  dim = min(c.shared_dim, ie.shape[1])
  basis = jax.block_until_ready(shared_basis(jnp.asarray(ie), jnp.asarray(te), dim))
  prep_s = time.perf_counter() - t0

  def step_loss(p, backbone, emb, orig, fm, rm, rb, basis):
    t = mvi_losses(emb["img_f"], emb["txt_f"], emb["img_r"], emb["txt_r"], orig, fm, rm, basis,
                   c.temperature)
    clip = _clip_term(model, p, backbone, rb, rm, c.clip_weight)
    total = t["edit"] + c.specific_weight * t["specific"] + c.locality_weight * t["locality"] + clip
    return total, dict(t, clip=clip)

  res = _run_holders(ctx, c, step_loss, basis, stream=50, prep_s=prep_s)
  res.diagnostics["shared_dim"] = int(dim)
  # Diagnostic (not timed): the forget pairs' shared-factor margin before / after the editing.
  ft = ctx.request.forget_texts
  for tag, tree in (("before", ctx.trained), ("after", res.trainable)):
    fi, fe = federated.embed(model, setup.backbone, tree, setup.data,
                             np.asarray(setup.data.text_image)[ft], ft)
    res.diagnostics[f"forget_shared_margin_{tag}"] = float(shared_margin(fi, fe, basis))
  return res
