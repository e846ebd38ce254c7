"""The per-example audit against independent references: scipy's KS test and normal densities,
brute-force ROC counts, and synthetic Gaussian populations with known answers."""
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
  assert p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_ks_2samp_with_ties_and_identical_samples():
  a = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0])
  b = np.array([1.0, 1.0, 2.0, 2.0, 4.0])
  d, p = audit.ks_2samp(a, b)
  ref = scipy.stats.ks_2samp(a, b, method="exact")
  assert d == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=1e-6)
  assert audit.ks_2samp(a, a) == (0.0, 1.0)
  with pytest.raises(ValueError):
    audit.ks_2samp([], a)


def test_lira_statistic_equals_normal_log_density_ratio():
  rng = np.random.default_rng(0)
  ins, outs = rng.normal(1.0, 0.5, (6, 20)), rng.normal(0.0, 0.7, (5, 20))
  s = rng.normal(size=20)
  for variance in ("per_example", "global"):
    lam = audit.lira_statistic(s, ins, outs, variance)
    if variance == "per_example":
      sd_in, sd_out = ins.std(0, ddof=1), outs.std(0, ddof=1)
    else:
      sd_in, sd_out = np.sqrt(ins.var(0, ddof=1).mean()), np.sqrt(outs.var(0, ddof=1).mean())
    ref = (scipy.stats.norm.logpdf(s, ins.mean(0), sd_in)
           - scipy.stats.norm.logpdf(s, outs.mean(0), sd_out))
    np.testing.assert_allclose(lam, ref, rtol=1e-10)
  with pytest.raises(ValueError, match=">= 2 models"):
    audit.fit_gaussians(ins[:1])


def test_auc_and_tpr_at_fpr_equal_brute_force():
  rng = np.random.default_rng(1)
  pos, neg = rng.normal(1, 1, 300), rng.normal(0, 1, 1000)
  brute = np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :])
  assert audit.roc_auc(pos, neg) == pytest.approx(brute)
  for fpr in (0.01, 0.001, 0.1):
    tpr = audit.tpr_at_fpr(pos, neg, fpr)
    # The threshold lets at most fpr of the negatives through, and is the lowest that does.
    thr = np.sort(neg)[len(neg) - 1 - int(np.floor(fpr * len(neg)))]
    assert np.mean(neg > thr) <= fpr
    assert tpr == pytest.approx(np.mean(pos > thr))
  assert audit.tpr_at_fpr([5.0], [0.0, 1.0], 0.0) == 1.0
  assert audit.tpr_at_fpr([0.5], [0.0, 1.0], 0.0) == 0.0


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


def test_matched_logit_is_monotone_and_finite_at_the_ends():
  c = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
  z = audit.matched_logit(c)
  assert np.all(np.isfinite(z)) and np.all(np.diff(z) > 0) and z[2] == 0.0
  np.testing.assert_allclose(z[3], np.log(1.5 / 0.5))
