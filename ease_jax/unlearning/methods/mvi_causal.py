"""MVI-style causal unlearning (ICML 2026 "Beyond Sample-Level Forgetting"), federated: shared /
modality-specific factors from public pairs, then the holders' contrastive semantic editing of
the shared factor with specific-factor and retain locality terms; the server averages.

[ours]: the variational posterior over shared / modality-specific factors is replaced by its
linear-Gaussian limit (probabilistic CCA): the shared subspace is the top `shared_dim`
eigenvectors of the symmetrised image–text cross-covariance of public pairs under the trained
model; shared factor = B Bᵀ u, specific = (I − B Bᵀ) u. Contrastive semantic editing on D_f: the
shared-factor similarity rows of forget pairs are pushed towards uniform (logsumexp − mean, both
directions, bounded below by 0: the matched pair no longer stands out), the specific factors of
forget pairs and the embeddings of retain pairs are kept at their original values (locality),
plus λ_clip CLIP on retain data.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ease_jax import federated
from ease_jax import losses
from ease_jax import rng as rng_lib
from ease_jax import validation as check
from ease_jax.unlearning import base
from ease_jax.unlearning import common

_HIGHEST = jax.lax.Precision.HIGHEST

DEFAULTS: dict[str, Any] = dict(
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
)
RULES = {
    "mvi_causal.steps": check.integer(1), "mvi_causal.batch_size": check.integer(1),
    "mvi_causal.optimizer": check.one_of("adam", "adamw", "sgd"), "mvi_causal.lr": check.positive,
    "mvi_causal.temperature": check.positive, "mvi_causal.clip_weight": check.non_negative,
    "mvi_causal.retain_source": check.one_of(*common.RETAIN_SOURCES),
    "mvi_causal.rounds": check.integer(0),
    "mvi_causal.shared_dim": check.integer(1), "mvi_causal.specific_weight": check.non_negative,
    "mvi_causal.locality_weight": check.non_negative,
    "mvi_causal.calibration_pairs": check.integer(2),
}


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


def mvi_causal(ctx: base.UnlearningContext) -> base.MethodResult:
  c = common.block(ctx.config, "mvi_causal", DEFAULTS)
  setup = ctx.setup
  model = setup.model
  t0 = time.perf_counter()
  pool = setup.texts_of(setup.public_images)
  if len(pool) == 0:
    raise ValueError("mvi_causal estimates the shared subspace on the public split, which is empty.")
  rng = rng_lib.numpy_rng(ctx.config.seeds.unlearning, rng_lib.Stream.MVI_CALIBRATION)
  texts = np.sort(rng.choice(pool, min(c.calibration_pairs, len(pool)), replace=False))
  ie, te = federated.embed(model, setup.backbone, ctx.trained, setup.data,
                           np.asarray(setup.data.text_image)[texts], texts)
  dim = min(c.shared_dim, ie.shape[1])
  basis = jax.block_until_ready(shared_basis(jnp.asarray(ie), jnp.asarray(te), dim))
  prep_s = time.perf_counter() - t0

  def step_loss(p, backbone, emb, orig, fb, rb, basis):
    t = mvi_losses(emb["img_f"], emb["txt_f"], emb["img_r"], emb["txt_r"], orig, fb["mask"],
                   rb["mask"], basis, c.temperature)
    clip = common.clip_term(model, p, backbone, rb, c.clip_weight)
    total = t["edit"] + c.specific_weight * t["specific"] + c.locality_weight * t["locality"] + clip
    return total, dict(t, clip=clip)

  res = common.run_embedding_holders(ctx, "mvi_causal", c, step_loss, basis,
                                     (rng_lib.Stream.MVI_FORGET, rng_lib.Stream.MVI_RETAIN),
                                     prep_s)
  res.diagnostics["shared_dim"] = int(dim)
  # Diagnostic (not timed): the forget pairs' shared-factor margin before / after the editing.
  ft = ctx.request.forget_texts
  for tag, tree in (("before", ctx.trained), ("after", res.trainable)):
    fi, fe = federated.embed(model, setup.backbone, tree, setup.data,
                             np.asarray(setup.data.text_image)[ft], ft)
    res.diagnostics[f"forget_shared_margin_{tag}"] = float(shared_margin(fi, fe, basis))
  return res
