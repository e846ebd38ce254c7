"""Contrastive losses for CLIP fine-tuning and EASE's bilateral knowledge excision.

All functions are pure and jittable. Embeddings are `[batch, dim]`; an optional `mask` of shape
`[batch]` (bool or 0/1 float) marks the valid (non-padded) rows so that batches can be padded to a
fixed shape without recompilation. The loss math runs in at least float32 whatever the embedding
dtype (bf16 logits lose too much precision in the log-softmax).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# CLIP clamps its temperature so that exp(logit_scale) <= 100.
DEFAULT_MAX_SCALE = 100.0
# Finite "minus infinity" for masked logits: -inf would give NaN (inf - inf) on all-padded rows.
_NEG_LARGE = -1e9
_EPS = 1e-12

_HIGHEST = jax.lax.Precision.HIGHEST


def _as_float32(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = _EPS) -> jax.Array:
  """Unit-normalises `x` along `axis`; zero vectors stay zero with a finite (zero) gradient.

  `jnp.linalg.norm` has a NaN gradient at 0, which padded (all-zero) rows would hit.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _valid_rows(mask: jax.Array | None, batch: int) -> jax.Array:
  """`[batch]` bool; a float mask counts rows with a positive weight as valid."""
  if mask is None:
    return jnp.ones((batch,), bool)
  return jnp.asarray(mask) > 0


def contrastive_logits(image_emb: jax.Array,
                       text_emb: jax.Array,
                       logit_scale: jax.Array | float,
                       normalize: bool = True,
                       max_scale: float = DEFAULT_MAX_SCALE) -> jax.Array:
  """Image-to-text logits as in CLIP.

  Args:
    image_emb: `[B, D]` image embeddings.
    text_emb: `[B, D]` text embeddings (pair i is `(image_emb[i], text_emb[i])`).
    logit_scale: scalar temperature in log space (CLIP's `logit_scale` parameter).
    normalize: unit-normalise both embeddings first (CLIP does).
    max_scale: clamp for `exp(logit_scale)`.

  Returns:
    `[B, B]` logits, `min(exp(logit_scale), max_scale) * img_i . txt_j`, rows are images.
  """
  image_emb = _as_float32(image_emb)
  text_emb = _as_float32(text_emb)
  if normalize:
    image_emb = l2_normalize(image_emb)
    text_emb = l2_normalize(text_emb)
  scale = jnp.minimum(jnp.exp(_as_float32(logit_scale)), max_scale)
  return scale * jnp.matmul(image_emb, text_emb.T, precision=_HIGHEST)


def false_negatives(text_tokens: jax.Array) -> jax.Array:
  """`[B, B]` bool: off-diagonal pairs whose captions are identical (`text_tokens [B, L]`)."""
  same = jnp.all(text_tokens[:, None, :] == text_tokens[None, :, :], axis=-1)
  return same & ~jnp.eye(text_tokens.shape[0], dtype=bool)


def clip_loss(image_emb: jax.Array,
              text_emb: jax.Array,
              logit_scale: jax.Array | float,
              mask: jax.Array | None = None,
              max_scale: float = DEFAULT_MAX_SCALE,
              text_tokens: jax.Array | None = None) -> jax.Array:
  """Symmetric InfoNCE (CLIP) loss, with optional padding mask.

  loss = 1/2 (CE(image -> text) + CE(text -> image)), each a mean over valid rows. Padded rows
  are excluded as queries and their columns as negatives. An all-padded batch gives 0 loss and
  zero (finite) gradients. With `text_tokens`, a pair whose caption is identical to the query's
  own is not a negative either: a batch holding several copies of one caption (a backdoor's
  target, captions truncated to the same tokens) would otherwise push each image away from its
  own caption.

  Args:
    image_emb: `[B, D]` image embeddings.
    text_emb: `[B, D]` text embeddings, matched row by row with `image_emb`.
    logit_scale: scalar log temperature.
    mask: `[B]` bool/float, True (or > 0) for valid rows; None means all valid.
    max_scale: clamp for `exp(logit_scale)`.
    text_tokens: `[B, L]` the captions' token ids; None treats every caption as distinct.

  Returns:
    Scalar float32 loss.
  """
  logits = contrastive_logits(image_emb, text_emb, logit_scale, max_scale=max_scale)
  batch = logits.shape[0]
  valid = _valid_rows(mask, batch)
  pair_valid = valid[:, None] & valid[None, :]
  if text_tokens is not None:
    pair_valid = pair_valid & ~false_negatives(text_tokens)
  # Invalid entries get a finite large negative logit: masked out as negatives, and rows that are
  # entirely invalid still have a finite logsumexp (their loss is weighted by 0 below).
  logits = jnp.where(pair_valid, logits, _NEG_LARGE)
  diag = jnp.diagonal(logits)
  loss_i2t = jax.nn.logsumexp(logits, axis=1) - diag
  loss_t2i = jax.nn.logsumexp(logits, axis=0) - diag
  per_row = 0.5 * (loss_i2t + loss_t2i)
  count = jnp.sum(valid.astype(jnp.float32))
  return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(count, 1.0)


def bounded_unalignment_loss(image_emb: jax.Array,
                             text_emb: jax.Array,
                             mask: jax.Array | None = None,
                             margin: float = 0.0,
                             target: float | None = None,
                             stop_gradient_reference: bool = True,
                             text_tokens: jax.Array | None = None) -> jax.Array:
  """Bounded bilateral excision loss on forget pairs [ours].

  With u_i, w_i the unit image / text embeddings of forget pair i and V the valid rows:

    ref_i = mean_{j in V, j != i} cos(u_i, w_j)        (level of unmatched pairs)
    loss  = mean_{i in V} relu(cos(u_i, w_i) - (ref_i + margin))

  or, with an explicit `target` cosine, `ref_i + margin` is replaced by `target`. It pushes each
  matched pair's cosine down to the level of the unmatched pairs (plus `margin`) and stops there:
  the loss is bounded below by 0 and its gradient vanishes once a pair is under the bound, unlike
  unbounded gradient ascent. Both embeddings (visual and language branches) receive gradients.
  If a batch has a single valid pair there are no unmatched pairs and ref_i = 0. With
  `text_tokens`, a pair whose caption is identical to pair i's is no unmatched pair of i: on a
  backdoor's D_f, one target caption over every pair, ref_i would otherwise equal the matched
  cosine and the loss would be 0 however aligned the pairs are; such a row has ref_i = 0.

  Args:
    image_emb: `[B, D]` image embeddings of forget pairs.
    text_emb: `[B, D]` text embeddings of forget pairs.
    mask: `[B]` valid rows; None means all valid.
    margin: offset added to the unmatched level (may be negative to push further).
    target: optional explicit cosine bound used instead of `ref_i + margin`.
    stop_gradient_reference: treat ref_i as a constant (default), so the loss only lowers matched
      cosines and does not raise unmatched ones.
    text_tokens: `[B, L]` the captions' token ids; None treats every caption as distinct.

  Returns:
    Scalar float32 loss (0 for an all-padded batch).
  """
  u = l2_normalize(_as_float32(image_emb))
  w = l2_normalize(_as_float32(text_emb))
  cos = jnp.matmul(u, w.T, precision=_HIGHEST)  # [B, B]
  batch = cos.shape[0]
  valid = _valid_rows(mask, batch)
  pos = jnp.diagonal(cos)
  if target is None:
    off_diag = valid[None, :] & ~jnp.eye(batch, dtype=bool)
    if text_tokens is not None:
      off_diag = off_diag & ~false_negatives(text_tokens)
    neg_sum = jnp.sum(jnp.where(off_diag, cos, 0.0), axis=1)
    neg_count = jnp.sum(off_diag, axis=1).astype(jnp.float32)
    ref = jnp.where(neg_count > 0, neg_sum / jnp.maximum(neg_count, 1.0), 0.0)
    if stop_gradient_reference:
      ref = jax.lax.stop_gradient(ref)
    bound = ref + margin
  else:
    bound = jnp.asarray(target, jnp.float32)
  per_pair = jax.nn.relu(pos - bound)
  count = jnp.sum(valid.astype(jnp.float32))
  return jnp.sum(jnp.where(valid, per_pair, 0.0)) / jnp.maximum(count, 1.0)
