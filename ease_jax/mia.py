"""Membership inference on the forget set: per-example scores and the Mann–Whitney AUC.

The attack asks, for each image–caption pair, "was it trained on?" from the model's score of the
pair. Members are the forget pairs D_f; non-members are held-out (test-split) pairs drawn to
match D_f: the same number where possible and the same concept mix (per-image label), so the
AUC measures membership, not a concept shift. AUC 0.5 = indistinguishable. A well-forgotten
model should score like the retrain reference (which never saw D_f) — not below it: an AUC far
under retrain's means the forget pairs now look *less* familiar than unseen data, itself a
membership signal (the Streisand effect of over-forgetting).

Scores (higher = more member-like):
  * `cosine`: matched-pair cosine cos(u_i, w_i);
  * `loss`: minus the per-pair symmetric InfoNCE over the pooled gallery (members ∪ non-members,
    the same gallery for both), at the model's logit scale.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ease_jax import rng as rng_lib
from ease_jax.data.device import DeviceData, Embedder, embedder_for
from ease_jax.model import CLIP

SCORES = ("cosine", "loss")


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
  """P(score_member > score_nonmember) + ½ P(tie): the Mann–Whitney U / (n_m · n_n).

  O((n_m + n_n) log(n_m + n_n)) through mid-ranks.
  """
  m = np.asarray(members, np.float64).ravel()
  n = np.asarray(nonmembers, np.float64).ravel()
  if m.size == 0 or n.size == 0:
    raise ValueError(f"AUC needs members and non-members, got {m.size} and {n.size}.")
  if not (np.all(np.isfinite(m)) and np.all(np.isfinite(n))):
    raise ValueError("AUC scores must be finite.")
  x = np.concatenate([m, n])
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  ranks = np.empty(len(x), np.float64)
  # Mid-ranks of tied runs (1-based).
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  ends = np.r_[starts[1:], len(xs)]
  mid = 0.5 * (starts + ends - 1) + 1.0
  ranks[order] = np.repeat(mid, ends - starts)
  u = ranks[:m.size].sum() - m.size * (m.size + 1) / 2.0
  return float(u / (m.size * n.size))


def matched_nonmembers(member_images: np.ndarray, candidate_images: np.ndarray,
                       labels: np.ndarray | None, seed: int = 0) -> np.ndarray:
  """Non-member images distribution-matched to the members.

  Draws min(len(members), len(candidates)) candidates. With `labels` (per-image, indexed by image
  id) each label gets its members' share (largest remainder), capped by what the candidates hold
  of it; the rest is filled uniformly from the remaining candidates.

  Returns:
    Sorted image indices.
  """
  members = np.asarray(member_images)
  cands = np.asarray(candidate_images)
  if len(cands) == 0:
    raise ValueError("No candidate non-member images (empty held-out split).")
  n = min(len(members), len(cands))
  rng = rng_lib.numpy_rng(seed, rng_lib.Stream.MIA_NONMEMBERS)
  picked: list[np.ndarray] = []
  if labels is not None and len(members):
    labels = np.asarray(labels)
    values, counts = np.unique(labels[members], return_counts=True)
    share = counts / counts.sum() * n
    alloc = np.floor(share).astype(int)
    for i in np.argsort(-(share - alloc))[:n - alloc.sum()]:
      alloc[i] += 1
    cand_labels = labels[cands]
    for v, a in zip(values, alloc):
      pool = cands[cand_labels == v]
      if a and len(pool):
        picked.append(rng.choice(pool, min(a, len(pool)), replace=False))
  chosen = np.concatenate(picked) if picked else np.zeros((0,), cands.dtype)
  rest = cands[~np.isin(cands, chosen)]
  if n - len(chosen) > 0:
    chosen = np.concatenate([chosen, rng.choice(rest, n - len(chosen), replace=False)])
  return np.sort(chosen)


def gallery_scores(model: CLIP, backbone: Any, trainable: Any, data: DeviceData,
                   gallery_texts: np.ndarray, score: str = "cosine",
                   embedder: Embedder | None = None) -> np.ndarray:
  """`[G]` membership scores of every pair (caption `gallery_texts[g]`, its image), the InfoNCE
  of 'loss' running over the whole gallery (see the module docstring); `embedder`, when given,
  is a shared `device.Embedder` of (backbone, trainable)."""
  if score not in SCORES:
    raise ValueError(f"Unknown MIA score {score!r}; expected one of {SCORES}.")
  gallery = np.asarray(gallery_texts, np.int32)
  ie, te = embedder_for(model, backbone, trainable, data, embedder)(
      np.asarray(data.text_image)[gallery], gallery)
  ie = ie / np.linalg.norm(ie, axis=1, keepdims=True)
  te = te / np.linalg.norm(te, axis=1, keepdims=True)
  matched = np.sum(ie * te, axis=1)
  if score == "cosine":
    return matched
  scale = float(np.minimum(np.exp(np.asarray(
      (trainable or {}).get("logit_scale", backbone["logit_scale"]))), 100.0))
  logits = scale * (ie @ te.T)
  lse_row = _logsumexp(logits, axis=1)
  lse_col = _logsumexp(logits, axis=0)
  return -(0.5 * (lse_row + lse_col) - scale * matched)


def _positions(gallery: np.ndarray, texts: np.ndarray) -> np.ndarray:
  """`[n]` where each of `texts` sits in `gallery`; a clear error if one is missing."""
  missing = ValueError("gallery_texts must contain every text of `texts`.")
  if len(gallery) == 0:
    if len(texts):
      raise missing
    return np.zeros(0, np.int64)
  order = np.argsort(gallery)
  pos = order[np.clip(np.searchsorted(gallery[order], texts), 0, len(gallery) - 1)]
  if not np.array_equal(gallery[pos], texts):
    raise missing
  return pos


def pair_scores(model: CLIP, backbone: Any, trainable: Any, data: DeviceData,
                texts: np.ndarray, score: str = "cosine", gallery_texts: np.ndarray | None = None
                ) -> np.ndarray:
  """`[n]` membership scores of the pairs (caption `texts[i]`, its image).

  Args:
    score: 'cosine' or 'loss' (see the module docstring).
    gallery_texts: the pooled pairs the InfoNCE of 'loss' runs over (default: `texts`); must
      contain `texts`.
  """
  texts = np.asarray(texts, np.int32)
  gallery = texts if gallery_texts is None else np.asarray(gallery_texts, np.int32)
  scores = gallery_scores(model, backbone, trainable, data, gallery, score)
  return scores if gallery_texts is None else scores[_positions(gallery, texts)]


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
  m = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def membership_auc(model: CLIP, backbone: Any, trainable: Any, data: DeviceData,
                   member_texts: np.ndarray, nonmember_texts: np.ndarray,
                   score: str = "cosine", embedder: Embedder | None = None
                   ) -> dict[str, float]:
  """The attack's AUC of members vs non-members, with the mean scores of each side."""
  member_texts = np.asarray(member_texts, np.int32)
  nonmember_texts = np.asarray(nonmember_texts, np.int32)
  if np.intersect1d(member_texts, nonmember_texts).size:
    raise ValueError("Members and non-members overlap.")
  gallery = np.sort(np.concatenate([member_texts, nonmember_texts]))
  scores = gallery_scores(model, backbone, trainable, data, gallery, score, embedder)
  s_m = scores[_positions(gallery, member_texts)]
  s_n = scores[_positions(gallery, nonmember_texts)]
  return dict(auc=auc(s_m, s_n), member_score=float(s_m.mean()),
              nonmember_score=float(s_n.mean()), n_members=int(len(s_m)),
              n_nonmembers=int(len(s_n)))
