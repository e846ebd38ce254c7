"""Cross-modal retrieval metrics on precomputed embeddings (Recall@K, R-precision).

Scores are cosine similarities. Queries are processed on device in jitted chunks of a fixed size
(the last chunk padded), so an `[Ni, Nt]` score matrix is never materialised at once; each chunk
holds a `[chunk, N_candidates]` block.

Rank convention: the rank of a relevant item is the number of candidates that score *strictly
higher* than it (0-based), so ties are counted in the query's favour. A query is a hit at k if its
best relevant item has rank < k. For R-precision with R relevant items, a relevant item counts as
retrieved if its rank < R, i.e. its score is >= the R-th largest score of the row.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ease_jax.losses import l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST


def similarity(image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
  """Cosine similarity matrix.

  Args:
    image_emb: `[Ni, D]`.
    text_emb: `[Nt, D]`.

  Returns:
    `[Ni, Nt]` float32 cosines.
  """
  a = l2_normalize(jnp.asarray(image_emb, jnp.float32))
  b = l2_normalize(jnp.asarray(text_emb, jnp.float32))
  return jnp.matmul(a, b.T, precision=_HIGHEST)


def _pad_rows(x: jax.Array, n_pad: int) -> jax.Array:
  return jnp.pad(x, [(0, n_pad)] + [(0, 0)] * (x.ndim - 1))


@functools.partial(jax.jit, static_argnames=("chunk_size", "max_relevant"))
def _i2t_chunks(img: jax.Array, txt: jax.Array, text_image: jax.Array,
                chunk_size: int, max_relevant: int) -> tuple[jax.Array, jax.Array]:
  """Per image query: rank of its best caption and its R-precision.

  Args:
    img: `[Ni, D]` unit image embeddings.
    txt: `[Nt, D]` unit text embeddings.
    text_image: `[Nt]` image index of each caption.
    chunk_size: queries per chunk.
    max_relevant: static upper bound on captions per image (>= 1), for `top_k`.

  Returns:
    `([Ni], [Ni])`: int32 rank (0-based) and float32 R-precision; meaningless for images without
    captions (callers skip them).
  """
  n = img.shape[0]
  n_chunks = -(-n // chunk_size)
  pad = n_chunks * chunk_size - n
  q = _pad_rows(img, pad).reshape(n_chunks, chunk_size, -1)
  ids = jnp.arange(n_chunks * chunk_size, dtype=jnp.int32).reshape(n_chunks, chunk_size)

  def one(args):
    q_c, id_c = args
    s = jnp.matmul(q_c, txt.T, precision=_HIGHEST)  # [chunk, Nt]
    rel = text_image[None, :] == id_c[:, None]  # [chunk, Nt]
    n_rel = jnp.sum(rel, axis=1)
    best = jnp.max(jnp.where(rel, s, -jnp.inf), axis=1)
    rank = jnp.sum(s > best[:, None], axis=1).astype(jnp.int32)
    # R-th largest score of each row (R = n_rel varies per query; max_relevant is static).
    top = jax.lax.top_k(s, max_relevant)[0]  # [chunk, max_relevant] descending
    r_idx = jnp.clip(n_rel - 1, 0, max_relevant - 1)
    thresh = jnp.take_along_axis(top, r_idx[:, None], axis=1)
    hits = jnp.sum(rel & (s >= thresh), axis=1)
    rprec = hits.astype(jnp.float32) / jnp.maximum(n_rel, 1).astype(jnp.float32)
    return rank, rprec

  rank, rprec = jax.lax.map(one, (q, ids))
  return rank.reshape(-1)[:n], rprec.reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _t2i_chunks(img: jax.Array, txt: jax.Array, text_image: jax.Array,
                chunk_size: int) -> jax.Array:
  """Per text query: rank (0-based, strictly-higher count) of its image. Returns `[Nt]` int32."""
  n = txt.shape[0]
  n_chunks = -(-n // chunk_size)
  pad = n_chunks * chunk_size - n
  q = _pad_rows(txt, pad).reshape(n_chunks, chunk_size, -1)
  tgt = _pad_rows(text_image, pad).reshape(n_chunks, chunk_size)

  def one(args):
    q_c, t_c = args
    s = jnp.matmul(q_c, img.T, precision=_HIGHEST)  # [chunk, Ni]
    pos = jnp.take_along_axis(s, t_c[:, None], axis=1)
    return jnp.sum(s > pos, axis=1).astype(jnp.int32)

  return jax.lax.map(one, (q, tgt)).reshape(-1)[:n]


def retrieval_ranks(image_emb: jax.Array,
                    text_emb: jax.Array,
                    text_image: jax.Array | np.ndarray,
                    chunk_size: int = 256) -> dict[str, np.ndarray]:
  """Per-query ranks and R-precision (see the module docstring for the conventions).

  Args:
    image_emb: `[Ni, D]` image embeddings (need not be normalised).
    text_emb: `[Nt, D]` text embeddings.
    text_image: `[Nt]` int, index into `image_emb` of each caption's image.
    chunk_size: queries per jitted chunk; memory is `chunk_size * max(Ni, Nt)` floats.

  Returns:
    numpy arrays: `i2t_rank [Ni]`, `i2t_rprec [Ni]`, `i2t_valid [Ni]` (image has >= 1 caption),
    `t2i_rank [Nt]`.
  """
  text_image_np = np.asarray(text_image).astype(np.int32)
  n_img = int(np.shape(image_emb)[0])
  n_txt = int(np.shape(text_emb)[0])
  if text_image_np.shape != (n_txt,):
    raise ValueError(f"text_image must have shape ({n_txt},), got {text_image_np.shape}")
  if n_txt and (text_image_np.min() < 0 or text_image_np.max() >= n_img):
    raise ValueError("text_image entries must index image_emb")
  counts = np.bincount(text_image_np, minlength=n_img)
  max_relevant = int(max(1, min(counts.max(initial=1), n_txt)))
  img = l2_normalize(jnp.asarray(image_emb, jnp.float32))
  txt = l2_normalize(jnp.asarray(text_emb, jnp.float32))
  ti = jnp.asarray(text_image_np)
  i2t_rank, i2t_rprec = _i2t_chunks(img, txt, ti, chunk_size=chunk_size,
                                    max_relevant=max_relevant)
  t2i_rank = _t2i_chunks(img, txt, ti, chunk_size=chunk_size)
  return {
      "i2t_rank": np.asarray(i2t_rank),
      "i2t_rprec": np.asarray(i2t_rprec),
      "i2t_valid": counts > 0,
      "t2i_rank": np.asarray(t2i_rank),
  }


def retrieval_metrics(image_emb: jax.Array,
                      text_emb: jax.Array,
                      text_image: jax.Array | np.ndarray,
                      ks: Sequence[int] = (1, 5, 10),
                      chunk_size: int = 256) -> dict[str, float]:
  """Recall@K and R-precision for image->text and text->image retrieval, in percent.

  Image->text: an image query is a hit at k if any of its captions ranks in the top k; images
  without captions are skipped. Text->image: each caption has exactly one relevant image (R = 1,
  so its R-precision equals its Recall@1).

  Args:
    image_emb: `[Ni, D]` image embeddings.
    text_emb: `[Nt, D]` text embeddings.
    text_image: `[Nt]` int, image index of each caption.
    ks: cut-offs for Recall@K.
    chunk_size: queries per jitted chunk.

  Returns:
    Python floats keyed `i2t_r{k}`, `t2i_r{k}` for k in ks, `i2t_rprec`, `t2i_rprec` and
    `mean_r1` (mean of the image->text and text->image Recall@1).
  """
  r = retrieval_ranks(image_emb, text_emb, text_image, chunk_size=chunk_size)
  valid = r["i2t_valid"]
  i2t_rank = r["i2t_rank"][valid]
  t2i_rank = r["t2i_rank"]

  def pct(x: np.ndarray) -> float:
    return float(100.0 * np.mean(x)) if x.size else 0.0

  out: dict[str, float] = {}
  for k in ks:
    out[f"i2t_r{k}"] = pct(i2t_rank < k)
  for k in ks:
    out[f"t2i_r{k}"] = pct(t2i_rank < k)
  out["i2t_rprec"] = pct(r["i2t_rprec"][valid].astype(np.float64))
  out["t2i_rprec"] = pct(t2i_rank < 1)
  out["mean_r1"] = 0.5 * (pct(i2t_rank < 1) + pct(t2i_rank < 1))
  return out
