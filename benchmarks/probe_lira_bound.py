"""How often does a retrain that the audit never saw read LiRA TPR@1%FPR over issue 14's 3%
bound, with nothing wrong in it? Synthetic populations whose per-example scores share a model
effect, audited by `audit.lira_audit` exactly as a benchmark seed's retrain is.

  python benchmarks/probe_lira_bound.py                        # the embedded default's requests
  python benchmarks/probe_lira_bound.py --requests 80:0.357 --members 10,20,40,80
  python benchmarks/probe_lira_bound.py --requests 80:0.29:4     # 4 groups, each its own shift

A model's score on forget example k is s_mk = μ_k + b_m + e_mk (+ `--gap` for the `in` models,
trained with D_f), with b_m ~ N(0, icc) shared by all of model m's examples and e_mk ~ N(0,
1 − icc): `icc` is `audit.model_effect_share`, measured on the benchmark's retrain populations
by `probe_heldout_audit.py`. With `:groups` after the share, the examples fall into that many
groups in turn and each model draws one shift per group (a plant of several backdoors, each
group sharing its own trigger and target): `icc` is then the share within a group. Each trial draws `--members` `in` and `out` models and one fresh
retrain (the audited target) and records whether its TPR@1% exceeds 3%. Two things push it
over the bound: TPR is a share of n examples, so even independent examples (icc 0) put
⌊0.03 n⌋ + 1 or more above a 1% threshold with about a binomial tail's probability
(`binomial_tail`, printed beside; the threshold is estimated from finitely many negatives, so
the simulated rate sits near it, not on it); and a shared shift moves a model's examples over
the threshold together. More members help the first, not the second.

The model is simple: one shift per model (or per group), the same gap for every example. In
the audit a shift counts in each example's Λ by that example's own gap.

One JSON line per (request, members): `p_over` (the share of trials over the bound) and its
binomial standard error. `--seed` seeds the trials' draws.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
from scipy import stats

from ease_jax import audit

TPR_BOUND, FPR = 0.03, 0.01  # Issue 14's "a held-out retrain seed is not flagged".
# (forget pairs, model-effect share of the retrain population): the embedded default's client,
# sample and concept requests (BENCHMARKS.md, "The audit's sanity bound", session 40).
DEFAULT_REQUESTS = "client=639:0.004,sample=80:0.357,concept=160:0.252"


def binomial_tail(n: int, rate: float = FPR, bound: float = TPR_BOUND) -> float:
  """P(more than `bound` · n of n independent examples land above a threshold each crosses with
  probability `rate`): the bound's miss rate without any model effect."""
  k_max = math.floor(bound * n + 1e-9)  # the most examples that may cross
  return float(stats.binom.sf(k_max, n, rate))


def p_over_bound(rng: np.random.Generator, examples: int, icc: float, members: int, gap: float,
                 trials: int, groups: int = 1) -> float:
  """The share of `trials` in which a fresh retrain's LiRA TPR@1% exceeds the bound."""
  over = 0
  group_of = np.arange(examples) % groups
  for _ in range(trials):
    mu = rng.normal(0.0, 1.0, examples)

    def population(models: int, shift: float) -> np.ndarray:
      shared = rng.normal(0.0, math.sqrt(icc), (models, groups))[:, group_of]
      return mu + shift + shared + rng.normal(0.0, math.sqrt(1.0 - icc), (models, examples))

    in_scores, out_scores = population(members, gap), population(members, 0.0)
    target = population(1, 0.0)[0]
    tpr = audit.lira_audit(target, in_scores, out_scores, fprs=(FPR,))[f"lira_tpr@{FPR:g}"]
    over += tpr > TPR_BOUND
  return over / trials


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", default=DEFAULT_REQUESTS,
                      help="comma-separated [name=]examples:icc[:groups]")
  parser.add_argument("--members", default="10,20,40", help="models per population")
  parser.add_argument("--gap", type=float, default=2.0,
                      help="the in models' shift, in units of one score's std")
  parser.add_argument("--trials", type=int, default=500)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  for spec in args.requests.split(","):
    name, _, shape = spec.rpartition("=")
    fields = shape.split(":")
    if len(fields) not in (2, 3):
      raise ValueError(f"A request is [name=]examples:icc[:groups], got {spec!r}.")
    examples, icc, groups = int(fields[0]), float(fields[1]), int(fields[2]) if fields[2:] else 1
    if examples < 1 or not 0.0 <= icc < 1.0 or not 1 <= groups <= examples:
      raise ValueError(f"A request needs >= 1 example, a model-effect share in [0, 1) and 1 to "
                       f"examples groups, got {spec!r}.")
    for members in (int(m) for m in args.members.split(",")):
      p = p_over_bound(rng, examples, icc, members, args.gap, args.trials, groups)
      print(json.dumps(dict(request=name or None, examples=examples, icc=icc, groups=groups,
                            members=members, trials=args.trials, p_over=round(p, 4),
                            p_over_se=round(math.sqrt(p * (1 - p) / args.trials), 4),
                            independent_examples_binomial=round(binomial_tail(examples), 4))),
            flush=True)


if __name__ == "__main__":
  main()
