"""Cross-modal retrieval metrics on precomputed embeddings (Recall@K, R-precision).

Scores are cosine similarities. Queries are processed on device in jitted chunks of a fixed size
(the last chunk padded), so an `[Ni, Nt]` score matrix is never materialised at once; each chunk
holds a `[chunk, N_candidates]` block.

Rank convention: the rank of a query's best relevant item is the number of candidates of *other
content* that score at least as high (0-based). A query is a hit at k if that rank is < k.
- Ties with other content count against the query. Distinct inputs tie exactly only in a
  degenerate model (every embedding equal, zero or saturated), which must not score 100%.
- A candidate with the content of a relevant item never counts against it, and is as right as
  the query's own item: for an image query, the same caption text on another image (e.g. one
  backdoor target on many copies); for a caption query, another image captioned with the same
  text, and any image pixel-identical to a relevant one. Contents are integer ids (equal id = identical model
  input, so identical embedding: `dataset.content_ids`, `CaptionDataset.image_content` and
  `.text_content`); by default every item is its own content.
R-precision with R relevant items: the share of them in the top R of the ranking of the
relevant items and the candidates of other content (other content first among ties).
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
def _i2t_chunks(img: jax.Array, txt: jax.Array, text_image: jax.Array, text_content: jax.Array,
                relevant_content: jax.Array, chunk_size: int, max_relevant: int
                ) -> tuple[jax.Array, jax.Array]:
  """Per image query: rank of its best caption and its R-precision.

  Args:
    img: `[Ni, D]` unit image embeddings.
    txt: `[Nt, D]` unit text embeddings.
    text_image: `[Nt]` image index of each caption.
    text_content: `[Nt]` content id of each caption (>= 0).
    relevant_content: `[Ni, max_relevant]` the content ids of each image's captions (-1 pads).
    chunk_size: queries per chunk.
    max_relevant: static upper bound on captions per image (>= 1).

  Returns:
    `([Ni], [Ni])`: int32 rank (0-based) and float32 R-precision; meaningless for images without
    captions (callers skip them).
  """
  n = img.shape[0]
  n_chunks = -(-n // chunk_size)
  pad = n_chunks * chunk_size - n
  q = _pad_rows(img, pad).reshape(n_chunks, chunk_size, -1)
  ids = jnp.arange(n_chunks * chunk_size, dtype=jnp.int32).reshape(n_chunks, chunk_size)
  rc = _pad_rows(relevant_content, pad).reshape(n_chunks, chunk_size, max_relevant)

  def one(args):
    q_c, id_c, rc_c = args
    s = jnp.matmul(q_c, txt.T, precision=_HIGHEST)  # [chunk, Nt]
    rel = text_image[None, :] == id_c[:, None]  # [chunk, Nt]
    n_rel = jnp.sum(rel, axis=1)
    # Candidates with the content of one of the query's captions never count against it.
    same = jnp.any(text_content[None, None, :] == rc_c[:, :, None], axis=1)  # [chunk, Nt]
    other = jnp.where(same, -jnp.inf, s)
    rel_scores = jax.lax.top_k(jnp.where(rel, s, -jnp.inf), max_relevant)[0]  # descending
    # Candidates of other content at least as high as each relevant caption: [chunk, relevant].
    ahead = jnp.sum(other[:, None, :] >= rel_scores[:, :, None], axis=-1)
    k = jnp.arange(max_relevant)[None, :]
    # The k-th best relevant caption sits at position ahead_k + k of the ranking.
    hits = jnp.sum((k < n_rel[:, None]) & (ahead + k < n_rel[:, None]), axis=1)
    rprec = hits.astype(jnp.float32) / jnp.maximum(n_rel, 1).astype(jnp.float32)
    return ahead[:, 0].astype(jnp.int32), rprec

  rank, rprec = jax.lax.map(one, (q, ids, rc))
  return rank.reshape(-1)[:n], rprec.reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("chunk_size", "num_image_contents"))
def _t2i_chunks(img: jax.Array, txt: jax.Array, text_content: jax.Array,
                relevant_content: jax.Array, image_content: jax.Array, chunk_size: int,
                num_image_contents: int) -> jax.Array:
  """Per text query: rank of its best relevant image (0-based: images of other content scoring
  at least as high). Relevant: every image that carries a caption of the query's content (its
  own image, and any other image captioned with the same text), and every image pixel-identical
  to one of those.

  Args:
    img: `[Ni, D]` unit image embeddings.
    txt: `[Nt, D]` unit text embeddings.
    text_content: `[Nt]` content id of each caption.
    relevant_content: `[Ni, max_relevant]` the content ids of each image's captions (-1 pads).
    image_content: `[Ni]` dense content ids of the images, in `[0, num_image_contents)`.
    chunk_size: queries per chunk.
    num_image_contents: static number of distinct image contents.

  Returns `[Nt]` int32."""
  n = txt.shape[0]
  n_chunks = -(-n // chunk_size)
  pad = n_chunks * chunk_size - n
  q = _pad_rows(txt, pad).reshape(n_chunks, chunk_size, -1)
  qc = _pad_rows(text_content, pad).reshape(n_chunks, chunk_size)

  def one(args):
    q_c, qc_c = args
    s = jnp.matmul(q_c, img.T, precision=_HIGHEST)  # [chunk, Ni]
    captioned = jnp.any(relevant_content[None, :, :] == qc_c[:, None, None], axis=-1)
    # Pixel-identical images embed identically: relevant together or not at all.
    by_content = jnp.zeros((q_c.shape[0], num_image_contents), bool).at[:, image_content].max(
        captioned)
    rel = by_content[:, image_content]  # [chunk, Ni]
    best = jnp.max(jnp.where(rel, s, -jnp.inf), axis=1, keepdims=True)
    return jnp.sum(~rel & (s >= best), axis=1).astype(jnp.int32)

  return jax.lax.map(one, (q, qc)).reshape(-1)[:n]


def _check_content(name: str, content: np.ndarray | None, n: int) -> np.ndarray:
  if content is None:
    return np.arange(n, dtype=np.int32)
  content = np.asarray(content)
  if content.shape != (n,) or not np.issubdtype(content.dtype, np.integer) or (
      n and content.min() < 0):
    raise ValueError(f"{name} must be {n} non-negative integer content ids, got shape "
                     f"{content.shape} of {content.dtype}.")
  return content.astype(np.int32)


def retrieval_ranks(image_emb: jax.Array,
                    text_emb: jax.Array,
                    text_image: jax.Array | np.ndarray,
                    chunk_size: int = 256,
                    text_content: np.ndarray | None = None,
                    image_content: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Per-query ranks and R-precision (see the module docstring for the conventions).

  Args:
    image_emb: `[Ni, D]` image embeddings (need not be normalised).
    text_emb: `[Nt, D]` text embeddings.
    text_image: `[Nt]` int, index into `image_emb` of each caption's image.
    chunk_size: queries per jitted chunk; memory is `chunk_size * max(Ni, Nt)` floats, and as
      many booleans times the most captions of one image.
    text_content: `[Nt]` content ids of the captions (`dataset.content_ids` of their tokens);
      default: all distinct.
    image_content: `[Ni]` content ids of the images (`dataset.content_ids` of their pixels);
      default: all distinct.

  Returns:
    numpy arrays: `i2t_rank [Ni]`, `i2t_rprec [Ni]`, `i2t_valid [Ni]` (image has >= 1 caption),
    `t2i_rank [Nt]`.

  Raises:
    ValueError: a NaN or inf embedding (a diverged model), no image or no caption, or arguments
      of the wrong shape.
  """
  text_image_np = np.asarray(text_image)
  n_img = int(np.shape(image_emb)[0])
  n_txt = int(np.shape(text_emb)[0])
  if not n_img or not n_txt:
    raise ValueError(f"retrieval needs at least one image and one caption, got {n_img} images "
                     f"and {n_txt} captions (an empty evaluation subset?).")
  if text_image_np.shape != (n_txt,):
    raise ValueError(f"text_image must have shape ({n_txt},), got {text_image_np.shape}")
  if n_txt and not np.issubdtype(text_image_np.dtype, np.integer):
    raise ValueError(f"text_image must hold integer image indices, got {text_image_np.dtype}")
  text_image_np = text_image_np.astype(np.int32)
  if n_txt and (text_image_np.min() < 0 or text_image_np.max() >= n_img):
    raise ValueError("text_image entries must index image_emb")
  for name, emb in (("image", image_emb), ("text", text_emb)):
    finite = np.isfinite(np.asarray(emb)).all(axis=-1)
    if not finite.all():
      raise ValueError(f"{int(np.sum(~finite))} of {finite.size} {name} embeddings hold NaN or "
                       f"inf (first: row {int(np.flatnonzero(~finite)[0])}): a diverged model "
                       f"cannot be ranked.")
  text_content = _check_content("text_content", text_content, n_txt)
  image_content = _check_content("image_content", image_content, n_img)
  counts = np.bincount(text_image_np, minlength=n_img)
  max_relevant = int(max(1, min(counts.max(initial=1), n_txt)))
  # Each image's captions' content ids, padded with -1 (matches no content).
  relevant_content = np.full((n_img, max_relevant), -1, np.int32)
  order = np.argsort(text_image_np, kind="stable")
  slot = np.arange(n_txt) - np.concatenate([[0], np.cumsum(counts)])[text_image_np[order]]
  relevant_content[text_image_np[order], slot] = text_content[order]
  img = l2_normalize(jnp.asarray(image_emb, jnp.float32))
  txt = l2_normalize(jnp.asarray(text_emb, jnp.float32))
  ti = jnp.asarray(text_image_np)
  i2t_rank, i2t_rprec = _i2t_chunks(img, txt, ti, jnp.asarray(text_content),
                                    jnp.asarray(relevant_content), chunk_size=chunk_size,
                                    max_relevant=max_relevant)
  image_ids, dense_image_content = np.unique(image_content, return_inverse=True)
  t2i_rank = _t2i_chunks(img, txt, jnp.asarray(text_content), jnp.asarray(relevant_content),
                         jnp.asarray(dense_image_content.astype(np.int32).reshape(-1)),
                         chunk_size=chunk_size, num_image_contents=len(image_ids))
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
                      chunk_size: int = 256,
                      text_content: np.ndarray | None = None,
                      image_content: np.ndarray | None = None) -> dict[str, float]:
  """Recall@K and R-precision for image->text and text->image retrieval, in percent.

  Image->text: an image query is a hit at k if any of its captions ranks in the top k; images
  without captions are skipped. Text->image: a caption query is a hit at k if one of its
  relevant images ranks in the top k: its own image (and, with content ids, any image carrying
  the same text or a pixel twin). `t2i_rprec` is reported as text->image Recall@1, the
  R-precision of R = 1, which is exact unless a caption text repeats on several images.

  Args:
    image_emb: `[Ni, D]` image embeddings.
    text_emb: `[Nt, D]` text embeddings.
    text_image: `[Nt]` int, image index of each caption.
    ks: cut-offs for Recall@K.
    chunk_size: queries per jitted chunk.
    text_content, image_content: content ids (see `retrieval_ranks`).

  Returns:
    Python floats keyed `i2t_r{k}`, `t2i_r{k}` for k in ks, `i2t_rprec`, `t2i_rprec` and
    `mean_r1` (mean of the image->text and text->image Recall@1).
  """
  r = retrieval_ranks(image_emb, text_emb, text_image, chunk_size=chunk_size,
                      text_content=text_content, image_content=image_content)
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
