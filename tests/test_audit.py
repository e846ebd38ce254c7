"""The per-example audit against independent references: scipy's KS test and normal densities,
brute-force ROC counts, and synthetic Gaussian populations with known answers."""
import itertools

import numpy as np
import pytest
import scipy.stats

from ease_jax import audit


@pytest.mark.parametrize("n,m,seed", [(5, 5, 0), (12, 7, 1), (40, 40, 2), (150, 150, 3),
                                      (33, 90, 4)])
def test_ks_2samp_equals_scipy_exact(n, m, seed):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=n)
  b = rng.normal(0.4, 1.2, size=m)
  d, p = audit.ks_2samp(a, b)
  ref = scipy.stats.ks_2samp(a, b, method="exact")
  assert d == pytest.approx(ref.statistic, abs=1e-12)
  assert p == pytest.approx(ref.pvalue, rel=1e-6)


@pytest.mark.parametrize("n,shift", [(100, 2.0), (50, 3.0), (300, 1.5)])
def test_ks_2samp_keeps_tiny_p_values(n, shift):
  """Forget quality is read on a log scale: a p-value of 1e-25 must not come out as 1e-14 or 0
  (one minus the probability of staying inside the band would). For equal sizes scipy's exact
  test sums the outside paths by reflection, an independent reference."""
  rng = np.random.default_rng(n)
  a, b = rng.normal(size=n), rng.normal(shift, 1.0, size=n)
  d, p = audit.ks_2samp(a, b)
  ref = scipy.stats.ks_2samp(a, b, method="exact").pvalue
  assert 0 < ref < 1e-15
  assert p == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("n,m", [(3, 4), (5, 5), (4, 7), (6, 6)])
def test_ks_2samp_equals_the_permutation_count(n, m):
  """The exact p-value is the share of the C(n + m, n) splits of the pooled sample whose
  statistic is at least the observed one (brute force)."""
  rng = np.random.default_rng(n * 10 + m)
  a, b = rng.normal(size=n), rng.normal(0.8, 1.0, size=m)
  pooled, d = np.concatenate([a, b]), audit.ks_statistic(a, b)
  count = total = 0
  for first in itertools.combinations(range(n + m), n):
    mask = np.isin(np.arange(n + m), first)
    count += scipy.stats.ks_2samp(pooled[mask], pooled[~mask]).statistic >= d - 1e-12
    total += 1
  assert audit.ks_2samp(a, b)[1] == pytest.approx(count / total, rel=1e-12)


def test_ks_2samp_with_ties_and_identical_samples():
  a = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0])
  b = np.array([1.0, 1.0, 2.0, 2.0, 4.0])
  d, p = audit.ks_2samp(a, b)
  ref = scipy.stats.ks_2samp(a, b, method="exact")
  assert d == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=1e-6)
  assert audit.ks_2samp(a, a) == (0.0, 1.0)
  with pytest.raises(ValueError, match="non-empty samples"):
    audit.ks_2samp([], a)


def test_lira_statistic_equals_normal_log_density_ratio():
  rng = np.random.default_rng(0)
  ins, outs = rng.normal(1.0, 0.5, (6, 20)), rng.normal(0.0, 0.7, (5, 20))
  s = rng.normal(size=20)
  for variance in ("per_example", "shared"):
    lam = audit.lira_statistic(s, ins, outs, variance)
    if variance == "per_example":  # floored at a tenth of the pooled std
      sd_in = np.maximum(ins.std(0, ddof=1), 0.1 * np.sqrt(ins.var(0, ddof=1).mean()))
      sd_out = np.maximum(outs.std(0, ddof=1), 0.1 * np.sqrt(outs.var(0, ddof=1).mean()))
    else:  # one std: both populations' squared deviations over their degrees of freedom
      squares = (np.square(ins - ins.mean(0)).sum() + np.square(outs - outs.mean(0)).sum())
      sd_in = sd_out = np.sqrt(squares / ((6 - 1) * 20 + (5 - 1) * 20))
    ref = (scipy.stats.norm.logpdf(s, ins.mean(0), sd_in)
           - scipy.stats.norm.logpdf(s, outs.mean(0), sd_out))
    np.testing.assert_allclose(lam, ref, rtol=1e-10)
  with pytest.raises(ValueError, match=">= 2 models"):
    audit.fit_gaussians(ins[:1])
  # Two models that agree on an example exactly: its std is the floor, not 1e-4, so a score a
  # little off their mean is not an extreme statistic.
  pair = np.array([[0.0, 1.0, 2.0], [0.0, 1.4, 2.6]])
  _, sd = audit.fit_gaussians(pair, "per_example")
  assert sd[0] == pytest.approx(0.1 * np.sqrt(pair.var(0, ddof=1).mean()))


def test_shared_variance_reads_scores_below_every_retrain_as_non_members():
  """With one std shared by both fits (LiRA's fixed variance) Λ is linear in the score: a
  model that over-forgets (scores below the retrains') is less member-like than a retrain,
  whichever population is more spread out. Two stds made Λ quadratic, and the same model read
  as a member (AUC 0.96) when the `in` population was the wider one."""
  rng = np.random.default_rng(7)
  n, m = 254, 10
  base = rng.normal(size=n)
  over_forgotten = base - 1.5 + 0.3 * rng.normal(size=n)
  for sd_in, sd_out in ((0.6, 0.3), (0.3, 0.6)):
    ins = base + 1.0 + sd_in * rng.normal(size=(m, n))
    outs = base + sd_out * rng.normal(size=(m, n))
    lam = audit.lira_statistic(over_forgotten, ins, outs)
    up, down = (audit.lira_statistic(over_forgotten + d, ins, outs) for d in (0.1, -0.1))
    np.testing.assert_allclose(up - lam, lam - down, rtol=1e-9, atol=1e-12)  # linear in s
    # ... rising with the score wherever the `in` mean is above the `out` mean.
    np.testing.assert_array_equal(up > lam, ins.mean(0) > outs.mean(0))
    assert lam.mean() < 0
    res = audit.lira_audit(over_forgotten, ins, outs)
    assert res["lira_auc"] < 0.1 and res["lira_tpr@0.01"] == 0.0


def test_audit_refuses_an_empty_forget_set_and_a_scalar_target():
  outs = np.zeros((4, 0))
  with pytest.raises(ValueError, match="no forget example"):
    audit.fit_gaussians(outs)
  with pytest.raises(ValueError, match=">= 1 forget example"):
    audit.lira_audit(np.zeros(0), outs, outs)
  with pytest.raises(ValueError, match=">= 1 forget example"):
    audit.forget_quality(np.zeros(0), outs)
  ins = np.random.default_rng(0).normal(size=(4, 5))
  with pytest.raises(ValueError, match="target \\[n\\]"):
    audit.lira_audit(np.float64(1.0), ins, ins)


def test_audit_refuses_non_finite_and_mismatched_scores():
  """A NaN sorts as +inf and compares False: refused by name rather than counted."""
  rng = np.random.default_rng(6)
  ins, outs, s = rng.normal(size=(4, 10)), rng.normal(size=(4, 10)), rng.normal(size=10)
  bad = s.copy()
  bad[3] = np.nan
  with pytest.raises(ValueError, match="first KS sample holds 1 non-finite"):
    audit.ks_2samp(bad, s)
  with pytest.raises(ValueError, match="non-finite"):
    audit.lira_audit(bad, ins, outs)
  with pytest.raises(ValueError, match="negatives holds"):
    audit.tpr_at_fpr(s, bad, 0.01)
  with pytest.raises(ValueError, match="same n examples"):
    audit.lira_statistic(s, ins[:, :1], outs)
  with pytest.raises(ValueError, match="same n examples"):
    audit.lira_audit(s[:1], ins, outs)
  with pytest.raises(ValueError, match=r"target's scores \[n\] on the population's 10"):
    audit.forget_quality(np.stack([s, s]), outs)
  with pytest.raises(ValueError, match=r"fpr must be in \[0, 1\]"):
    audit.tpr_at_fpr(s, s, 1.5)
  with pytest.raises(ValueError, match="both in_seeds and out_seeds"):
    audit.lira_audit(s, ins, outs, in_seeds=[0, 1, 2, 3])
  with pytest.raises(ValueError, match="one seed per model"):
    audit.lira_audit(s, ins, outs, in_seeds=[0, 1], out_seeds=[0, 1, 2, 3])
  # 4 retrains x 10 examples = 40 negatives: a TPR at 0.1% FPR cannot be measured.
  assert audit.lira_audit(s, ins, outs)["lira_tpr@0.001"] is None


def test_auc_and_tpr_at_fpr_equal_brute_force():
  rng = np.random.default_rng(1)
  pos, neg = rng.normal(1, 1, 300), rng.normal(0, 1, 1000)
  brute = np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :])
  assert audit.roc_auc(pos, neg) == pytest.approx(brute)
  for fpr in (0.01, 0.001, 0.1):
    tpr = audit.tpr_at_fpr(pos, neg, fpr)
    # The threshold lets at most fpr of the negatives through, and is the lowest that does.
    thr = np.sort(neg)[len(neg) - 1 - int(np.floor(fpr * len(neg)))]
    assert audit.fpr_threshold(neg, fpr) == thr
    assert tpr == pytest.approx(np.mean(pos > thr))
  assert audit.tpr_at_fpr([5.0], [0.0, 1.0], 0.0) == 1.0
  assert audit.tpr_at_fpr([0.5], [0.0, 1.0], 0.0) == 0.0
  # Independently, with ties: the lowest candidate threshold (a negative, or -inf) that lets at
  # most fpr of the negatives strictly above it, found by trying every candidate.
  tied_neg = np.round(rng.normal(0, 1, 500), 1)
  tied_pos = np.round(rng.normal(1.5, 1, 200), 1)
  candidates = np.concatenate([[-np.inf], np.unique(tied_neg)])
  for fpr in (0.0, 0.01, 0.05, 0.1, 0.5):
    lowest = min(t for t in candidates if np.mean(tied_neg > t) <= fpr)
    assert audit.fpr_threshold(tied_neg, fpr) == lowest
    assert audit.tpr_at_fpr(tied_pos, tied_neg, fpr) == np.mean(tied_pos > lowest)


def test_lira_audit_flags_a_member_and_not_a_held_out_retrain():
  """Synthetic populations: per example k, in ~ N(mu_k + 1, 0.3), out ~ N(mu_k, 0.3)."""
  rng = np.random.default_rng(2)
  n, models = 400, 8
  mu = rng.normal(size=n)
  ins = mu + 1.0 + 0.3 * rng.normal(size=(models, n))
  outs = mu + 0.3 * rng.normal(size=(models, n))
  member = mu + 1.0 + 0.3 * rng.normal(size=n)
  member_audit = audit.lira_audit(member, ins, outs)
  assert member_audit["lira_auc"] > 0.95 and member_audit["lira_tpr@0.01"] > 0.8
  held_out = outs[0]
  retrain_audit = audit.lira_audit(held_out, ins, outs[1:])
  assert 0.4 < retrain_audit["lira_auc"] < 0.6 and retrain_audit["lira_tpr@0.01"] < 0.03
  with pytest.raises(ValueError, match=">= 3 retrained"):
    audit.lira_audit(member, ins, outs[:2])
  # A model that carries the membership of the first half of the examples only: the per-fold,
  # per-example statistics tell the halves apart, and pooled they are lira_audit's.
  half = np.arange(n) < n // 2
  partial = np.where(half, member, mu + 0.3 * rng.normal(size=n))
  pos, neg = audit.lira_folds(partial, ins, outs)
  assert pos.shape == neg.shape == (models, n)
  thr = audit.fpr_threshold(neg, 0.01)
  assert np.mean(pos[:, half] > thr) > 0.8 and np.mean(pos[:, ~half] > thr) < 0.03
  assert audit.lira_audit(partial, ins, outs)["lira_tpr@0.01"] == pytest.approx(
      np.mean(pos > thr))


def test_lira_leaves_a_retrains_twin_out_of_its_fold():
  """In and out populations share seeds: in-member j is retrained model j plus D_f (a shared
  per-seed effect). Fold j must fit without both, as a loop over the folds shows, or the
  held-out retrains look like members more than an independent retrain does: their statistic
  would sit above that of retrains with no twin in the fit."""
  rng = np.random.default_rng(7)
  n, models = 300, 4
  seeds = np.arange(100, 100 + models)
  gaps = {True: [], False: []}
  for _ in range(20):
    mu = rng.normal(size=n)
    seed_effect = 0.8 * rng.normal(size=(models + 1, n))   # the last: an outside retrain seed
    ins = mu + 0.5 + seed_effect[:models] + 0.3 * rng.normal(size=(models, n))
    outs = mu + seed_effect[:models] + 0.3 * rng.normal(size=(models, n))
    outside = mu + seed_effect[models] + 0.3 * rng.normal(size=n)
    for twins_out in (True, False):
      kw = dict(in_seeds=seeds, out_seeds=seeds) if twins_out else {}
      pos, neg = audit.lira_folds(outside, ins, outs, **kw)
      gaps[twins_out].append(audit.roc_auc(pos.ravel(), neg.ravel()) - 0.5)
  # Without the twins, an outside retrain is indistinguishable from the held-out ones.
  assert abs(np.mean(gaps[True])) < 0.02
  assert np.mean(gaps[False]) < -0.04
  pos, neg = audit.lira_folds(outside, ins, outs, in_seeds=seeds, out_seeds=seeds)
  for j in range(models):
    rest_in, rest_out = np.delete(ins, j, 0), np.delete(outs, j, 0)
    np.testing.assert_allclose(pos[j], audit.lira_statistic(outside, rest_in, rest_out))
    np.testing.assert_allclose(neg[j], audit.lira_statistic(outs[j], rest_in, rest_out))


def test_matched_logit_is_monotone_and_finite_at_the_ends():
  c = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
  z = audit.matched_logit(c)
  assert np.all(np.isfinite(z)) and np.all(np.diff(z) > 0) and z[2] == 0.0
  np.testing.assert_allclose(z[3], np.log(1.5 / 0.5))


def test_kolmogorov_sf_equals_scipy():
  x = np.array([0.0, 0.05, 0.3, 0.6, audit.KOLMOGOROV_MEDIAN, 0.999, 1.0, 1.3, 2.0, 4.0])
  np.testing.assert_allclose(audit.kolmogorov_sf(x), scipy.stats.kstwobign.sf(x), atol=1e-13)
  assert audit.KOLMOGOROV_MEDIAN == pytest.approx(scipy.stats.kstwobign.median(), rel=1e-12)


def _grouped_models(rng, models, mu, groups, spread):
  """Scores that move together in groups: example k of model m is mu_k + b_{m, g(k)} + noise."""
  n = mu.size
  group_of = np.arange(n) % groups
  shifts = spread * rng.normal(size=(models, groups))
  return mu + shifts[:, group_of] + 0.1 * rng.normal(size=(models, n))


def test_calibrated_ks_clears_retrains_that_the_exact_test_flags():
  """Two models of one null differ in grouped shifts: the exact KS flags most pairs, the test
  at the population's effective size flags about its level, and still flags a member."""
  rng = np.random.default_rng(3)
  n, models = 600, 40
  mu = rng.normal(size=n)
  # 20 groups: enough that the pairs' statistics have the Kolmogorov shape (with fewer, e.g. 12,
  # the null's tail is heavier than the median match assumes; see `audit.calibrated_ks`).
  outs = _grouped_models(rng, models, mu, groups=20, spread=0.8)
  reference, population = outs[:20], outs[20:]
  null = audit.pairwise_ks_statistics(population)
  assert null.shape == (20 * 19 // 2,)
  assert null[0] == pytest.approx(scipy.stats.ks_2samp(population[0], population[1]).statistic)
  results = [audit.calibrated_ks(reference[i], reference[i + 1], null) for i in range(0, 20, 2)]
  results += [audit.calibrated_ks(reference[i], reference[i + 3], null) for i in range(0, 16, 2)]
  p_iid = np.array([r["p_iid"] for r in results])
  p = np.array([r["p"] for r in results])
  assert np.mean(p_iid < 0.05) >= 0.3          # independent draws: many retrain pairs flagged
  assert np.mean(p < 0.05) <= 0.15 and np.median(p) > 0.3
  assert all(r["n_eff"] < n for r in results)
  member = _grouped_models(rng, 1, mu + 1.0, groups=20, spread=0.8)[0]
  flagged = audit.calibrated_ks(member, reference[0], null)
  assert flagged["p"] < 0.01 and flagged["p"] >= flagged["p_iid"]


def test_calibrated_ks_of_independent_draws_is_the_asymptotic_test():
  """Without grouped shifts the pairs look like independent draws, n_eff is capped at the real
  size and the p-value is the asymptotic Kolmogorov one of the exact statistic."""
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=300), rng.normal(0.3, 1.0, size=300)
  null = np.zeros(3)   # identical reference models
  r = audit.calibrated_ks(a, b, null)
  ref = scipy.stats.ks_2samp(a, b, method="asymp")
  assert r["n_eff"] == 300 and r["ks"] == pytest.approx(ref.statistic)
  assert r["p"] == pytest.approx(scipy.stats.kstwobign.sf(np.sqrt(150) * ref.statistic))
  with pytest.raises(ValueError, match="reference"):
    audit.calibrated_ks(a, b, [])
  with pytest.raises(ValueError, match=">= 2 models"):
    audit.pairwise_ks_statistics(a[None])


def test_forget_quality_is_the_median_over_members_and_not_one_outlier():
  """Each retrain member in turn, calibrated on the pairs of the others (the pair statistics
  from scipy), median p: a held-out retrain is cleared even where one member is an outlier that
  a test against that member alone flags it against, and a shifted (trained) model is
  flagged."""
  rng = np.random.default_rng(5)
  n = 400
  mu = rng.normal(size=n)
  population = _grouped_models(rng, 6, mu, groups=20, spread=0.5)
  population[0] += 0.6                                 # one outlying retrain seed
  held_out = _grouped_models(rng, 1, mu, groups=20, spread=0.5)[0]
  fq = audit.forget_quality(held_out, population, confidence=0)
  expected = []
  for j in range(6):
    rest = np.delete(population, j, 0)
    null = [scipy.stats.ks_2samp(rest[i], rest[k]).statistic
            for i in range(5) for k in range(i + 1, 5)]
    # The effective size that puts the median pair at the Kolmogorov distribution's median, at
    # most the harmonic size (here n), and the asymptotic p of the statistic at that size.
    n_eff = min(n, 2 * (scipy.stats.kstwobign.median() / np.median(null)) ** 2)
    ks = scipy.stats.ks_2samp(held_out, population[j], method="exact")
    expected.append(dict(p=scipy.stats.kstwobign.sf(np.sqrt(n_eff / 2) * ks.statistic),
                         p_iid=ks.pvalue, ks=ks.statistic, n_eff=n_eff))
  assert fq["p"] == pytest.approx(np.median([e["p"] for e in expected]), rel=1e-9)
  assert fq["p_iid"] == pytest.approx(np.median([e["p_iid"] for e in expected]), rel=1e-6)
  assert fq["p_min"] == pytest.approx(min(e["p"] for e in expected))
  assert fq["ks"] == pytest.approx(np.median([e["ks"] for e in expected]))
  assert fq["n_eff"] == pytest.approx(np.median([e["n_eff"] for e in expected]))
  assert fq["members"] == 6 and fq["p_point"] == fq["p"] and fq["n_eff_point"] == fq["n_eff"]
  assert expected[0]["p"] < 0.01                       # against the outlier alone: flagged
  assert fq["p"] >= 0.05                               # against the population: cleared
  trained = _grouped_models(rng, 1, mu + 1.0, groups=20, spread=0.5)[0]
  assert audit.forget_quality(trained, population, confidence=0)["p"] < 0.01
  # At the bound the outlier widens the null so far that a model shifted 1.0 is not flagged:
  # the price of a bound from 5 models of which one sits 0.6 away (`audit.forget_quality`).
  assert audit.forget_quality(trained, population)["p"] > 0.05
  with pytest.raises(ValueError, match=">= 3 models"):
    audit.forget_quality(held_out, population[:2])


def test_forget_quality_at_the_bound_is_the_point_test_at_the_bounds_effective_size():
  """The default p: each member's KS statistic at the effective size of its bound, median over
  the members; the point estimate's p beside it; the same scores give the same numbers."""
  rng = np.random.default_rng(8)
  mu = rng.normal(size=300)
  population = _grouped_models(rng, 7, mu, groups=10, spread=0.5)
  target = _grouped_models(rng, 1, mu, groups=10, spread=0.5)[0]
  fq = audit.forget_quality(target, population)
  assert fq == audit.forget_quality(target, population)
  assert fq["p_point"] == audit.forget_quality(target, population, confidence=0)["p"]
  expected = []
  for j in range(7):
    rest = np.delete(population, j, 0)
    bound = audit.pair_median_bound(audit.pairwise_ks_matrix(rest), audit.FORGET_CONFIDENCE,
                                    audit.BOOTSTRAP_RESAMPLES,
                                    np.random.SeedSequence([audit.BOOTSTRAP_SEED, j]))
    n_eff = 2 * (audit.KOLMOGOROV_MEDIAN / bound) ** 2
    d = scipy.stats.ks_2samp(target, population[j]).statistic
    expected.append(scipy.stats.kstwobign.sf(np.sqrt(n_eff / 2) * d))
  assert fq["p"] == pytest.approx(np.median(expected), rel=1e-9)
  assert fq["p_min"] == pytest.approx(min(expected), rel=1e-9)
  assert fq["n_eff"] <= fq["n_eff_point"] and fq["p"] >= fq["p_point"]
  with pytest.raises(ValueError, match="confidence must be 0"):
    audit.forget_quality(target, population, confidence=1.0)
  with pytest.raises(ValueError, match="confidence must be 0"):
    audit.forget_quality(target, population, confidence=0.3)
  # Three members: each calibration is one pair, its own bound, so p is the point estimate's.
  three = audit.forget_quality(target, population[:3])
  assert three["p"] == three["p_point"] and three["n_eff"] == three["n_eff_point"]


def test_audit_row_reads_forget_quality_at_the_configured_confidence():
  from ease_jax.unlearning import population as population_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(9)
  mu = rng.normal(size=200)
  ins = _grouped_models(rng, 5, mu + 1.0, groups=10, spread=0.5)
  outs = _grouped_models(rng, 5, mu, groups=10, spread=0.5)
  target = _grouped_models(rng, 1, mu + 1.0, groups=10, spread=0.5)[0]
  point = population_lib.audit_row(target, ins, outs, "shared", forget_confidence=0)
  bound = population_lib.audit_row(target, ins, outs, "shared")
  assert point["forget_quality"] == point["forget_quality_point"] == bound["forget_quality_point"]
  assert bound["forget_ks_n_eff"] < bound["forget_ks_n_eff_point"]
  assert bound["forget_quality"] > bound["forget_quality_point"]
  assert bound["forget_quality"] == audit.forget_quality(target, outs)["p"]
  # Every column is its audit function's value, the seeds reach LiRA (twins leave the fits:
  # without them the numbers differ), and nothing else is in the row.
  seeds = [10, 11, 12, 13, 14]
  row = population_lib.audit_row(target, ins, outs, "shared", in_seeds=seeds, out_seeds=seeds)
  fq = audit.forget_quality(target, outs)
  columns = dict(forget_quality="p", forget_quality_point="p_point", forget_quality_iid="p_iid",
                 forget_quality_min="p_min", forget_ks="ks", forget_ks_n_eff="n_eff",
                 forget_ks_n_eff_point="n_eff_point")
  assert {k: row[k] for k in columns} == {k: fq[v] for k, v in columns.items()}
  lira = audit.lira_audit(target, ins, outs, "shared", in_seeds=seeds, out_seeds=seeds)
  assert row["lira_model_effect_share"] == audit.model_effect_share(outs)
  assert (row["model_level_t"], row["model_level_p"]) == audit.model_mean_test(target, outs)
  assert row["model_level_strata_p"] == row["model_level_p"]  # no strata: D_f is one
  assert {k: row[k] for k in lira} == lira and set(row) == (
      set(columns) | set(lira) | {"lira_model_effect_share", "model_level_t", "model_level_p",
                                  "model_level_strata_p"})
  # With strata: the Bonferroni-adjusted p and each stratum's own.
  strata = np.array(["x"] * 50 + ["y"] * 150)
  by_stratum = population_lib.audit_row(target, ins, outs, "shared", strata=strata)
  want = audit.stratified_mean_test(target, outs, strata)
  assert by_stratum["model_level_strata_p"] == want["p"]
  assert {k: by_stratum[k] for k in by_stratum if k.startswith("model_level_p/")} == {
      f"model_level_p/{k}": p for k, (_, p) in want["per_stratum"].items()}
  assert audit.lira_audit(target, ins, outs, "shared") != lira
  assert audit.lira_audit(target, outs, ins, "shared", in_seeds=seeds, out_seeds=seeds) != lira


def test_pair_median_bound_equals_the_exact_bootstrap_distribution():
  """Three models with pair statistics 0.1, 0.2, 0.3: of the 27 ordered resamples the 3 that
  drew one model are redrawn; the 18 that drew two models have that pair's statistic as their
  median (6 each), the 6 that drew all three the median 0.2. So the resampled median is 0.1,
  0.2 and 0.3 with probabilities 1/4, 1/2 and 1/4."""
  d = np.array([[0.0, 0.1, 0.2], [0.1, 0.0, 0.3], [0.2, 0.3, 0.0]])
  exact = {}
  for draw in itertools.product(range(3), repeat=3):
    pairs = [d[a, b] for a, b in itertools.combinations(draw, 2) if a != b]
    if pairs:
      exact[np.median(pairs)] = exact.get(np.median(pairs), 0) + 1
  assert exact == {0.1: 6, 0.2: 12, 0.3: 6}
  for confidence, value in ((0.5, 0.2), (0.7, 0.2), (0.95, 0.3)):
    assert audit.pair_median_bound(d, confidence, 20000, seed=1) == value
  # Two models: every resample that pairs them has their statistic as the median.
  assert audit.pair_median_bound(d[:2, :2], 0.95, 100, seed=2) == 0.1
  with pytest.raises(ValueError, match=r"\[K, K\] statistics of >= 2 models"):
    audit.pair_median_bound(d[:1, :1], 0.95, 100, seed=0)
  with pytest.raises(ValueError, match=r"confidence must be in \[0.5, 1\)"):
    audit.pair_median_bound(d, 0.3, 100, seed=0)
  with pytest.raises(ValueError, match=">= 1 of bootstrap resamples"):
    audit.pair_median_bound(d, 0.95, 0, seed=0)
  with pytest.raises(ValueError, match="asymmetric"):
    audit.pair_median_bound(np.triu(d), 0.95, 100, seed=0)


def test_pair_median_bound_resamples_models_not_pairs():
  """Four models, one far from the rest: the bound equals the quantile of the exact bootstrap
  distribution over the 256 ordered draws of models (brute force), which differs from a
  bootstrap of the six pairs."""
  d = np.array([[0.0, 0.10, 0.12, 0.50],
                [0.10, 0.0, 0.14, 0.55],
                [0.12, 0.14, 0.0, 0.60],
                [0.50, 0.55, 0.60, 0.0]])
  medians = []
  for draw in itertools.product(range(4), repeat=4):
    pairs = [d[a, b] for a, b in itertools.combinations(draw, 2) if a != b]
    if pairs:
      medians.append(np.median(pairs))
  medians = np.sort(medians)                    # 252 draws (4 drew one model only)
  cdf = lambda v: np.mean(medians <= v)
  for confidence in (0.6, 0.85, 0.97):
    exact = np.quantile(medians, confidence, method="inverted_cdf")
    # Far enough from a jump of the exact CDF for 20000 resamples to land on the same value.
    assert abs(cdf(exact) - confidence) > 0.01 and abs(
        np.mean(medians < exact) - confidence) > 0.01
    assert audit.pair_median_bound(d, confidence, 20000, seed=3) == exact
  assert audit.pair_median_bound(d, 0.85, 20000, seed=3) > 0.5  # the outlier's pairs


def test_forget_quality_bound_clears_held_out_retrains_that_the_point_estimate_flags():
  """Populations of 10 retrains whose scores move in 8 groups (the null's median from 36 pairs
  moves with the draw): a retrain held out of each is flagged at p < 0.05 far more often at the
  point estimate than at the bound, and a model shifted by the plant is still flagged."""
  rng = np.random.default_rng(7)
  mu = rng.normal(size=300)
  point, bound, trained = [], [], []
  for _ in range(40):
    models = _grouped_models(rng, 11, mu, groups=8, spread=0.5)
    fq = audit.forget_quality(models[0], models[1:])
    point.append(fq["p_point"])
    bound.append(fq["p"])
    shifted = _grouped_models(rng, 1, mu + 1.0, groups=8, spread=0.5)[0]
    trained.append(audit.forget_quality(shifted, models[1:])["p"])
  point, bound, trained = map(np.array, (point, bound, trained))
  assert np.mean(point < 0.05) >= 0.075 and np.mean(bound < 0.05) <= 0.025
  assert np.mean(bound >= point) >= 0.9
  assert np.mean(trained < 0.01) >= 0.8


def test_model_effect_share_equals_the_anova_of_a_hand_made_layout():
  # Rows shift by ±a, the residual ±r is orthogonal to rows and columns: MS_models = 4a²,
  # MS_residual = 4r² (1 degree of freedom each), so τ² = (4a² − 4r²) / 2 and σ² = 4r².
  a, r = 2.0, 1.0
  scores = np.array([[a + r, a - r], [-a - r, -a + r]]) + np.array([5.0, -3.0])  # + μ_k
  tau2, sigma2 = (4 * a * a - 4 * r * r) / 2, 4 * r * r
  np.testing.assert_allclose(audit.model_effect_share(scores), tau2 / (tau2 + sigma2),
                             rtol=1e-12)
  # More residual than shift: no shared part (τ̂² is clipped at 0); every score equal: 0.
  assert audit.model_effect_share(np.array([[r + 0.1, -r + 0.1], [-r - 0.1, r - 0.1]])) == 0.0
  assert audit.model_effect_share(np.ones((3, 4))) == 0.0
  # Scores whose means are not exact in floating point: rounding is not a shared shift.
  assert audit.model_effect_share(np.full((10, 80), 0.1)) == 0.0
  same_rows = np.tile(np.random.default_rng(2).normal(size=80), (10, 1))
  assert audit.model_effect_share(same_rows) == 0.0
  assert audit.model_effect_share_interval(same_rows) == (0.0, 0.0)


@pytest.mark.parametrize("icc", [0.0, 0.3, 0.8])
def test_model_effect_share_recovers_the_intraclass_correlation(icc):
  rng = np.random.default_rng(11)
  models, n = 400, 200
  mu = rng.normal(0, 3, n)
  scores = (mu + rng.normal(0, np.sqrt(icc), (models, 1))
            + rng.normal(0, np.sqrt(1 - icc), (models, n)))
  assert abs(audit.model_effect_share(scores) - icc) < 0.04


def test_model_effect_share_refuses_too_few_models_or_examples():
  with pytest.raises(ValueError, match=">= 2 models"):
    audit.model_effect_share(np.zeros((1, 5)))
  with pytest.raises(ValueError, match=">= 2 examples"):
    audit.model_effect_share(np.zeros((4, 1)))


def test_model_effect_share_interval_covers_the_true_share_at_its_level():
  """Populations of 10 models over 80 examples (the sample request's layout) at a known share:
  the 95% interval holds the truth in about 95% of draws, and always holds the estimate."""
  rng = np.random.default_rng(12)
  share, draws, covered = 0.3, 400, 0
  for _ in range(draws):
    scores = (rng.normal(0, 1, 80) + rng.normal(0, np.sqrt(share), (10, 1))
              + rng.normal(0, np.sqrt(1 - share), (10, 80)))
    low, high = audit.model_effect_share_interval(scores)
    assert low <= audit.model_effect_share(scores) <= high
    covered += low <= share <= high
  assert 0.91 <= covered / draws <= 0.98  # binomial sd of the rate at 400 draws: 0.011
  with pytest.raises(ValueError, match="confidence"):
    audit.model_effect_share_interval(np.zeros((3, 4)), confidence=1.0)


def test_model_mean_test_equals_scipys_t_test_of_one_observation():
  """`audit.model_mean_test` against scipy's pooled two-sample t-test of the model's mean
  against the retrains' means; on synthetic populations with a shared shift per model, a fresh
  retrain's p-values are uniform (KS against U(0, 1)) and a shifted model's are small."""
  rng = np.random.default_rng(3)
  outs = rng.normal(0, 1, 40) + rng.normal(0, 0.6, (10, 1)) + rng.normal(0, 0.8, (10, 40))
  target = rng.normal(0, 1, 40) + 0.3
  t, p = audit.model_mean_test(target, outs)
  ref = scipy.stats.ttest_ind([target.mean()], outs.mean(axis=1), alternative="greater")
  np.testing.assert_allclose([t, p], [ref.statistic, ref.pvalue], rtol=1e-10)
  mu = rng.normal(0, 1, 40)
  draw = lambda k, shift=0.0: (mu + shift + rng.normal(0, 0.6, (k, 1))
                               + rng.normal(0, 0.8, (k, 40)))
  fresh = [audit.model_mean_test(draw(1)[0], draw(10))[1] for _ in range(400)]
  assert scipy.stats.kstest(fresh, "uniform").pvalue > 0.01
  assert np.mean([audit.model_mean_test(draw(1, 3.0)[0], draw(10))[1] < 0.01
                  for _ in range(50)]) > 0.9
  with pytest.raises(ValueError, match=">= 2 models"):
    audit.model_mean_test(target, outs[:1])
  with pytest.raises(ValueError, match="one score per forget example"):
    audit.model_mean_test(target[:5], outs)
  with pytest.raises(ValueError, match="all equal"):
    audit.model_mean_test(target, np.ones((4, 40)))


def test_stratified_mean_test_sees_strata_that_cancel_in_one_mean():
  """`audit.stratified_mean_test`: each stratum's (t, p) is scipy's pooled t-test of the model's
  stratum mean against the retrains'; p is the smallest Bonferroni-adjusted. A model that keeps
  one stratum member-like and pushes the other below the retrains reads as a retrain by the
  pooled mean and is flagged by stratum; one stratum is the pooled test; fresh retrains stay
  under the level (Bonferroni is conservative); bad input names the problem."""
  rng = np.random.default_rng(8)
  strata = np.array(["backdoor"] * 20 + ["clean"] * 60)
  mu = rng.normal(0, 1, 80)
  draw = lambda k, shift=0.0: (mu + shift + rng.normal(0, 0.5, (k, 1))
                               + rng.normal(0, 0.7, (k, 80)))
  outs = draw(10)
  target = draw(1)[0]
  target[:20] += 3.0   # the backdoor kept
  target[20:] -= 1.0   # the clean pairs over-forgotten: the pooled mean barely moves
  result = audit.stratified_mean_test(target, outs, strata)
  for name in ("backdoor", "clean"):
    mask = strata == name
    ref = scipy.stats.ttest_ind([target[mask].mean()], outs[:, mask].mean(axis=1),
                                alternative="greater")
    np.testing.assert_allclose(result["per_stratum"][name], [ref.statistic, ref.pvalue],
                               rtol=1e-10)
  assert result["stratum"] == "backdoor"
  assert result["p"] == min(1.0, 2 * result["per_stratum"]["backdoor"][1]) < 0.01
  assert audit.model_mean_test(target, outs)[1] > 0.05  # the pooled mean is blind to it
  one = audit.stratified_mean_test(target, outs, np.full(80, "D_f"))
  assert one["p"] == audit.model_mean_test(target, outs)[1] and one["stratum"] == "D_f"
  # Retrains drawn afresh, with their own shift in each stratum: p < 0.05 at most 5% of draws.
  three = np.repeat(["a", "b", "c"], [10, 30, 40])

  def fresh_p():
    layout = lambda k: draw(k) + np.repeat(rng.normal(0, 0.4, (k, 3)), [10, 30, 40], axis=1)
    return audit.stratified_mean_test(layout(1)[0], layout(10), three)["p"]

  fresh = np.array([fresh_p() for _ in range(400)])
  assert np.mean(fresh < 0.05) <= 0.075  # binomial sd at 400 draws and 5%: 0.011
  assert np.mean(fresh < 0.2) > 0.05  # yet not a test that never rejects
  with pytest.raises(ValueError, match="one stratum per forget example"):
    audit.stratified_mean_test(target, outs, strata[:10])
  with pytest.raises(ValueError, match="one score per forget example"):
    audit.stratified_mean_test(target[:10], outs, strata)
  flat = outs.copy()
  flat[:, :20] = 1.0
  with pytest.raises(ValueError, match="Stratum 'backdoor' .20 examples.: .*all equal"):
    audit.stratified_mean_test(target, flat, strata)
