"""The per-example forgetting audit: scores, a likelihood-ratio test against populations of
models trained with and without D_f, and forget quality (pure numpy).

A population MIA (`mia.py`) asks whether D_f *as a whole* looks like training data. A
per-example attack is far stronger (U-LiRA, Hayes et al. 2024): for each forget example k it fits
the distribution of its score under models trained *with* D_f (`in`) and *without* it (`out`,
the retrain population) and asks, for a given model, which distribution the example's score came
from. An unlearned model passes if its examples look like those of retrained models that were
not used in the fits (held-out retrain seeds, the negatives).

* `matched_logit`: the logit-scaled matched cosine log((1 + c) / (1 − c)) (LiRA's logit scaling
  makes a cosine near ±1 Gaussian-like); the per-pair InfoNCE loss is `mia.pair_scores('loss')`.
* `fit_gaussians` / `lira_statistic`: per-example means, a pooled ('global', LiRA's fixed
  variance, robust with few models) or per-example standard deviation; Λ_k = log N(s_k; in) −
  log N(s_k; out).
* `lira_folds`: the leave-one-out statistics `lira_audit` pools (per fold and example, to split
  by example groups).
* `roc_auc`, `tpr_at_fpr` (`fpr_threshold`): of positives (the audited model's Λ) against
  negatives (held-out retrain models' Λ).
* `ks_2samp`: the two-sample Kolmogorov–Smirnov statistic with its exact two-sided p-value;
  forget quality (TOFU) = that p-value between the model's and a held-out retrain's scores.
* `calibrated_ks`: the same statistic judged against the retrain population. The exact p-value
  assumes each model's n scores are independent draws, but a model's scores move together in
  groups (a seed that aligns hands better aligns every hand), so two retrains of one request
  differ by far more than n independent draws would (on the embedded default 68% of the pairs
  of retrain seeds had p < 0.05, BENCHMARKS.md, "Forget quality against the population"). The
  population's own pairs measure how far two retrains typically are: the effective sample size
  n_eff = 2 (K_½ / median D_pairs)², K_½ the median of the Kolmogorov distribution, makes the
  median pair sit at p = ½, and the p-value is the asymptotic Kolmogorov tail at that size.
  n_eff never exceeds the real sizes, so the calibration can only make the test more
  conservative than the exact one. It matches the null's median, not its tail: where a few
  large groups carry the shifts, the pairs' statistics have a heavier tail than Kolmogorov's
  and the test flags more than its level (synthetic scores of 12 groups: 22-28% of null pairs
  at p < 0.05; 20 groups: 6%; the embedded default's retrain seeds: 4%, BENCHMARKS.md).
* `forget_quality`: the audit's forget quality, `calibrated_ks` against every member of the
  retrain population in turn (calibrated on the pairs of the other members), the median p: one
  retrain seed can be the population's outlier.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np

from ease_jax import mia

VARIANCES = ("global", "per_example")
_MIN_STD = 1e-4
KOLMOGOROV_MEDIAN = 0.8275735551899059  # median of K = lim sqrt(n) D_n (scipy's kstwobign)


def matched_logit(cosines: np.ndarray) -> np.ndarray:
  """log((1 + c) / (1 − c)) of matched-pair cosines, clipped away from ±1."""
  c = np.clip(np.asarray(cosines, np.float64), -1 + 1e-6, 1 - 1e-6)
  return np.log1p(c) - np.log1p(-c)


def fit_gaussians(scores: np.ndarray, variance: str = "global") -> tuple[np.ndarray, np.ndarray]:
  """Per-example Gaussian fits of `scores [models, examples]`: (mean [n], std [n]).

  'global' pools the per-example deviations into one std (ddof 1, at least `_MIN_STD`);
  'per_example' uses each example's own sample std.
  """
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 2 or scores.shape[0] < 2:
    raise ValueError(f"Gaussian fits need scores of >= 2 models [models, examples], got shape "
                     f"{scores.shape}.")
  if variance not in VARIANCES:
    raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}.")
  mean = scores.mean(axis=0)
  if variance == "global":
    std = np.full(scores.shape[1], np.sqrt(np.mean(scores.var(axis=0, ddof=1))))
  else:
    std = scores.std(axis=0, ddof=1)
  return mean, np.maximum(std, _MIN_STD)


def _log_normal(x, mean, std):
  return -0.5 * np.square((x - mean) / std) - np.log(std) - 0.5 * math.log(2 * math.pi)


def lira_statistic(scores: np.ndarray, in_scores: np.ndarray, out_scores: np.ndarray,
                   variance: str = "global") -> np.ndarray:
  """Λ `[..., n]` = log p_in(s) − log p_out(s) per example, Gaussians fitted on `in_scores` and
  `out_scores` `[models, n]`; `scores` `[n]` (or `[m, n]` for several models)."""
  mu_in, sd_in = fit_gaussians(in_scores, variance)
  mu_out, sd_out = fit_gaussians(out_scores, variance)
  s = np.asarray(scores, np.float64)
  return _log_normal(s, mu_in, sd_in) - _log_normal(s, mu_out, sd_out)


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
  """P(positive > negative) + ½ P(tie)."""
  return mia.auc(positives, negatives)


def fpr_threshold(negatives: np.ndarray, fpr: float) -> float:
  """The (⌊fpr·M⌋ + 1)-th largest of the M negatives: at most `fpr` of them lie strictly above
  it, and it is the lowest negative for which that holds."""
  neg = np.sort(np.asarray(negatives, np.float64).ravel())
  if neg.size == 0:
    raise ValueError("fpr_threshold needs negatives.")
  allowed = int(math.floor(fpr * neg.size))  # negatives that may lie above the threshold
  return float(neg[neg.size - 1 - allowed]) if allowed < neg.size else -np.inf


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float) -> float:
  """The share of positives strictly above `fpr_threshold(negatives, fpr)`."""
  pos = np.asarray(positives, np.float64).ravel()
  if np.size(negatives) == 0 or pos.size == 0:
    raise ValueError("tpr_at_fpr needs positives and negatives.")
  return float(np.mean(pos > fpr_threshold(negatives, fpr)))


def _ks_exact_sf(d: float, n: int, m: int) -> float:
  """P(D ≥ d) of the two-sided two-sample KS statistic for sizes n, m (lattice paths)."""
  # Count monotone paths from (0, 0) to (n, m) that stay strictly inside |i/n − j/m| < d, as
  # probabilities (each path equally likely), row by row with rescaling against overflow. Row i's
  # inside points form one run of j, so its recurrence new[j] = new[j − 1] + row[j] is a
  # cumulative sum over that run (sequential, as the scalar loop adds).
  tol = 1e-12
  j = np.arange(m + 1)
  row = (np.cumprod(np.abs(0 / n - j / m) < d - tol) | (j == 0)).astype(np.float64)
  log_scale = 0.0
  for i in range(1, n + 1):
    run = np.flatnonzero(np.abs(i / n - j / m) < d - tol)
    new = np.zeros(m + 1)
    if run.size:
      new[run[0]:run[-1] + 1] = np.cumsum(row[run[0]:run[-1] + 1])
    peak = new.max()
    if peak > 0:
      new /= peak
      log_scale += math.log(peak)
    row = new
  if row[m] == 0:
    return 1.0
  log_total = math.lgamma(n + m + 1) - math.lgamma(n + 1) - math.lgamma(m + 1)
  return float(min(1.0, max(0.0, 1.0 - math.exp(math.log(row[m]) + log_scale - log_total))))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
  """The two-sample KS statistic D = sup |F_a − F_b| of two non-empty samples."""
  a = np.sort(np.asarray(a, np.float64).ravel())
  b = np.sort(np.asarray(b, np.float64).ravel())
  if a.size == 0 or b.size == 0:
    raise ValueError("The KS test needs two non-empty samples.")
  grid = np.concatenate([a, b])
  cdf_a = np.searchsorted(a, grid, side="right") / a.size
  cdf_b = np.searchsorted(b, grid, side="right") / b.size
  return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_2samp(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
  """(D, exact two-sided p-value) of the two-sample KS test (scipy's `method='exact'`)."""
  d = ks_statistic(a, b)
  return d, _ks_exact_sf(d, np.size(a), np.size(b))


def kolmogorov_sf(x: np.ndarray | float) -> np.ndarray:
  """P(K > x) of the Kolmogorov distribution (the limit of sqrt(n) D_n; scipy's kstwobign)."""
  x = np.atleast_1d(np.asarray(x, np.float64))
  k = np.arange(1, 101, dtype=np.float64)[:, None]
  # Two series, each fast where the other is slow: the theta-function form below x = 1.
  small = np.maximum(x, 1e-3)
  cdf_small = (math.sqrt(2 * math.pi) / small
               * np.exp(-np.square(2 * k - 1) * math.pi ** 2 / (8 * small ** 2)).sum(0))
  sf_large = 2 * ((-1) ** (k - 1) * np.exp(-2 * k ** 2 * x ** 2)).sum(0)
  sf = np.where(x < 1, 1 - cdf_small, sf_large)
  return np.clip(np.where(x <= 0, 1.0, sf), 0.0, 1.0)


def pairwise_ks_statistics(scores: np.ndarray) -> np.ndarray:
  """`[M (M − 1) / 2]` KS statistics of every pair of rows of `scores [M, n]` (M >= 2)."""
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 2 or scores.shape[0] < 2:
    raise ValueError(f"Pairwise KS statistics need scores of >= 2 models [models, examples], "
                     f"got shape {scores.shape}.")
  m = scores.shape[0]
  return np.array([ks_statistic(scores[i], scores[j])
                   for i in range(m) for j in range(i + 1, m)])


def effective_size(null_statistics: np.ndarray, n: int, m: int) -> float:
  """n_eff = 2 (K_½ / median D_null)², at most the harmonic size 2 n m / (n + m) (see the
  module docstring)."""
  null = np.asarray(null_statistics, np.float64).ravel()
  if null.size == 0:
    raise ValueError("The calibrated KS test needs the statistics of >= 1 pair of reference "
                     "models.")
  harmonic = 2.0 * n * m / (n + m)
  median = float(np.median(null))
  return harmonic if median <= 0 else min(harmonic, 2.0 * (KOLMOGOROV_MEDIAN / median) ** 2)


def calibrated_ks(a: Sequence[float], b: Sequence[float], null_statistics: np.ndarray
                  ) -> dict[str, float]:
  """The KS test of `a` against `b`, at the effective size of `null_statistics` (the KS
  statistics of pairs of models that share the null hypothesis, e.g. `pairwise_ks_statistics`
  of a retrain population that holds neither `a`'s nor `b`'s model).

  Returns `ks` (D), `p` (calibrated), `p_iid` (the exact p-value, independent draws) and
  `n_eff`.
  """
  d, p_iid = ks_2samp(a, b)
  n_eff = effective_size(null_statistics, np.size(a), np.size(b))
  p = float(kolmogorov_sf(math.sqrt(n_eff / 2.0) * d)[0])
  return dict(ks=d, p=p, p_iid=p_iid, n_eff=n_eff)


def forget_quality(target: Sequence[float], retrain_scores: np.ndarray) -> dict[str, Any]:
  """Forget quality of a model against a retrain population: the median over its members.

  Args:
    target: `[n]` the audited model's scores on D_f (the model is not in the population).
    retrain_scores: `[M, n]` retrained models (M >= 3).

  Returns:
    Over the members j of `calibrated_ks(target, retrain_scores[j], pairs of the other
    members)`, the median of each key on its own: `p` (forget quality), `p_iid` (the exact
    p-value), `ks` (D) and `n_eff`; `p_min`, the smallest calibrated p (against the member the
    target is furthest from at its n_eff); `members` (M).

  One held-out retrain is one draw of the null, and a population has outliers: on the concept
  request of the embedded default the single-member test flagged 21% of the pairs of retrain
  members at p < 0.05 (4-7% on the backdoor requests), and every benchmark seed's retrain
  reference was compared with the same outlier member. The median over the members is the
  comparison with the typical retrain (BENCHMARKS.md, "Forget quality against the population").
  """
  scores = np.asarray(retrain_scores, np.float64)
  if scores.ndim != 2 or scores.shape[0] < 3:
    raise ValueError(f"forget_quality needs a retrain population of >= 3 models [models, "
                     f"examples] (one compared, a pair to calibrate), got shape {scores.shape}.")
  m = scores.shape[0]
  pairs = list(itertools.combinations(range(m), 2))  # the order of pairwise_ks_statistics
  null = pairwise_ks_statistics(scores)
  tests = [calibrated_ks(target, scores[j], null[np.array([j not in pair for pair in pairs])])
           for j in range(m)]
  out = {key: float(np.median([t[key] for t in tests])) for key in ("p", "p_iid", "ks", "n_eff")}
  return dict(out, p_min=float(min(t["p"] for t in tests)), members=m)


def lira_folds(target: np.ndarray, in_scores: np.ndarray, out_scores: np.ndarray,
               variance: str = "global") -> tuple[np.ndarray, np.ndarray]:
  """The leave-one-out LiRA statistics of `lira_audit`: `(positives, negatives)`, each
  `[N_out, n]`. Row j: the Gaussians fitted on `in_scores` and every retrained model but j;
  the target's Λ (positives) and model j's Λ (negatives) under that fit."""
  out_scores = np.asarray(out_scores, np.float64)
  if out_scores.shape[0] < 3:
    raise ValueError(f"The LiRA audit needs >= 3 retrained models (one held out, two to fit), got "
                     f"{out_scores.shape[0]}.")
  pos, neg = [], []
  for j in range(out_scores.shape[0]):
    rest = np.delete(out_scores, j, axis=0)
    pos.append(lira_statistic(target, in_scores, rest, variance))
    neg.append(lira_statistic(out_scores[j], in_scores, rest, variance))
  return np.stack(pos), np.stack(neg)


def lira_audit(target: np.ndarray, in_scores: np.ndarray, out_scores: np.ndarray,
               variance: str = "global", fprs: Sequence[float] = (0.01, 0.001)
               ) -> dict[str, float]:
  """The audited model's per-example LiRA against held-out retrain models.

  Args:
    target: `[n]` the audited model's scores on D_f.
    in_scores: `[N_in, n]` models trained with D_f (not the audited model, nor its parent).
    out_scores: `[N_out, n]` retrained models (N_out >= 3), each in turn the held-out negative.
    variance: see `fit_gaussians`.

  Returns:
    `lira_auc` and `lira_tpr@<fpr>` for each fpr. For each retrained model j, the Gaussians are
    fitted on `in_scores` and the other retrained models; the target's Λ under that fit are
    positives and model j's Λ negatives (leave one out: no model is judged by a fit it is part
    of, and positives and negatives face the same fits). All j are pooled.
  """
  pos, neg = lira_folds(target, in_scores, out_scores, variance)
  pos, neg = pos.ravel(), neg.ravel()
  out = dict(lira_auc=roc_auc(pos, neg), lira_negatives=int(neg.size))
  for f in fprs:
    out[f"lira_tpr@{f:g}"] = tpr_at_fpr(pos, neg, f)
  return out
