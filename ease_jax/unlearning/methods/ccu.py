"""CCU (cross-modal contrastive unlearning, arXiv 2509.23895), federated: the holders minimise
L_inv + λ_ret L_ret + λ_sep L_sep + λ_clip CLIP(retain) for `steps` local steps, the server
averages (weights |D_f ∩ D_h|).

[ours]: L_inv ("inverse contrastive", visual side only): InfoNCE image→text on D_f with each
image's positive re-assigned to another forget caption of the batch, and the text side
stop-gradient'ed, so only the visual tower dissociates. The new positive of row i is the next
row (cyclically) whose caption tokens differ from row i's and whose image differs from row i's
(`inverse_targets`): a caption identical to its own (a backdoor's forget set is one target
caption) or another true caption of its image (several captions per image) would leave the
pair associated. A row with no such partner in the batch (every forget caption the same: its
InfoNCE row would be constant, log B with zero gradient) falls back to ascent on its own
positive: it minimises its matched logit cos(u_i, w_i) / τ instead, which pushes the image away
from its caption. L_ret (cross-modal retention): 1 − cos between current and original text
embeddings of the forget captions and of retain pairs (both towers). L_sep (dual-set
separation): squared change of the retain–retain image similarity matrix (intra-set structure)
+ hinge on forget–retain image similarities rising above their original values (the forget
perturbation must not spill into the retain structure).
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


def related_rows(tokens: jax.Array, pixels: jax.Array) -> jax.Array:
  """`[B, B]` bool: rows i, j with identical caption tokens (`tokens [B, L]`) or identical images
  (`pixels [B, ...]`), the diagonal included: the rows L_inv must not re-assign to each other."""
  flat = pixels.reshape(pixels.shape[0], -1)
  same_image = jnp.all(flat[:, None, :] == flat[None, :, :], axis=-1)
  same_caption = losses.false_negatives(tokens) | jnp.eye(tokens.shape[0], dtype=bool)
  return same_caption | same_image


def inverse_targets(valid: jax.Array, related: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Each row's re-assigned positive for L_inv.

  Args:
    valid: `[B]` valid rows.
    related: `[B, B]` bool, True where rows share the caption or the image (see `related_rows`;
      the diagonal must be True).

  Returns:
    `(targets [B], has_partner [B])`: the next valid unrelated row after i (cyclically), and
    whether row i has one (targets of rows without one are unused).
  """
  b = valid.shape[0]
  idx = jnp.arange(b)
  ok = valid[None, :] & ~related
  # For row i, the first candidate j > i, else the first candidate overall.
  order = jnp.where(idx[None, :] > idx[:, None], idx[None, :], b + idx[None, :])
  first = jnp.min(jnp.where(ok, order, 2 * b), axis=1)
  return jnp.where(first >= 2 * b, 0, first % b), jnp.any(ok, axis=1)


def ccu_losses(img_f: jax.Array, txt_f: jax.Array, img_r: jax.Array, txt_r: jax.Array,
               orig: Mapping[str, jax.Array], f_mask: jax.Array, r_mask: jax.Array,
               temperature: float, related: jax.Array) -> dict[str, jax.Array]:
  """CCU's three terms on one step's embeddings (see the module docstring).

  Args:
    img_f, txt_f: `[B, D]` current embeddings of forget pairs.
    img_r, txt_r: `[B', D]` current embeddings of retain pairs.
    orig: the original (trained-model) embeddings under the same keys: `img_f`, `txt_f`,
      `img_r`, `txt_r` (treated as constants).
    f_mask, r_mask: `[B]`, `[B']` valid rows.
    temperature: InfoNCE temperature of L_inv.
    related: `[B, B]` forget rows sharing a caption or an image (`related_rows`; the identity
      when every forget row is a distinct image with a distinct caption).

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
  targets, has_partner = inverse_targets(fv, related)
  masked = jnp.where(fv[None, :], logits, -1e9)
  ce = jax.nn.logsumexp(masked, axis=1) - jnp.take_along_axis(masked, targets[:, None], 1)[:, 0]
  # No partner: ascent on its own positive (its matched logit), see the module docstring.
  per_row = jnp.where(has_partner, ce, jnp.diagonal(logits))
  inverse = jnp.sum(jnp.where(fv, per_row, 0.0)) / jnp.maximum(jnp.sum(fv), 1.0)

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

  def step_loss(p, backbone, emb, orig, fb, rb, aux):
    del aux
    t = ccu_losses(emb["img_f"], emb["txt_f"], emb["img_r"], emb["txt_r"], orig, fb["mask"],
                   rb["mask"], c.temperature, related_rows(fb["input_ids"], fb["pixels"]))
    clip = common.clip_term(model, p, backbone, rb, c.clip_weight)
    total = (t["inverse"] + c.retention_weight * t["retention"]
             + c.separation_weight * t["separation"] + clip)
    return total, dict(t, clip=clip)

  return common.run_embedding_holders(ctx, "ccu", c, step_loss, jnp.zeros(()),
                                      (rng_lib.Stream.CCU_FORGET, rng_lib.Stream.CCU_RETAIN), 0.0)
