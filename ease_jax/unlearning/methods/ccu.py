"""CCU (cross-modal contrastive unlearning, arXiv 2509.23895), federated: the holders minimise
L_inv + λ_ret L_ret + λ_sep L_sep + λ_clip CLIP(retain) for `steps` local steps, the server
averages (weights |D_f ∩ D_h|).

[ours]: L_inv ("inverse contrastive", visual side only): InfoNCE image→text on D_f with each
image's positive re-assigned to another forget caption (cyclic shift) and the text side
stop-gradient'ed, so only the visual tower dissociates. L_ret (cross-modal retention): 1 − cos
between current and original text embeddings of the forget captions and of retain pairs (both
towers). L_sep (dual-set separation): squared change of the retain–retain image similarity
matrix (intra-set structure) + hinge on forget–retain image similarities rising above their
original values (the forget perturbation must not spill into the retain structure).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from ease_jax import losses
from ease_jax import rng as rng_lib
from ease_jax import validation as check
from ease_jax.unlearning import base
from ease_jax.unlearning import common

_HIGHEST = jax.lax.Precision.HIGHEST

DEFAULTS: dict[str, Any] = dict(
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
)
RULES = {
    "ccu.steps": check.integer(1), "ccu.batch_size": check.integer(1),
    "ccu.optimizer": check.one_of("adam", "adamw", "sgd"), "ccu.lr": check.positive,
    "ccu.temperature": check.positive, "ccu.clip_weight": check.non_negative,
    "ccu.retain_source": check.one_of(*common.RETAIN_SOURCES), "ccu.rounds": check.integer(0),
    "ccu.retention_weight": check.non_negative, "ccu.separation_weight": check.non_negative,
}


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


def ccu(ctx: base.UnlearningContext) -> base.MethodResult:
  c = common.block(ctx.config, "ccu", DEFAULTS)
  model = ctx.setup.model

  def step_loss(p, backbone, emb, orig, fm, rm, rb, aux):
    del aux
    t = ccu_losses(emb["img_f"], emb["txt_f"], emb["img_r"], emb["txt_r"], orig, fm, rm,
                   c.temperature)
    clip = common.clip_term(model, p, backbone, rb, c.clip_weight)
    total = (t["inverse"] + c.retention_weight * t["retention"]
             + c.separation_weight * t["separation"] + clip)
    return total, dict(t, clip=clip)

  return common.run_embedding_holders(ctx, c, step_loss, jnp.zeros(()),
                                      (rng_lib.Stream.CCU_FORGET, rng_lib.Stream.CCU_RETAIN), 0.0)
