"""Which forget-quality score tells a trained model from a retrain, and clears retrains? The
null and the signal of the KS forget quality on one seed's populations (BENCHMARKS.md, "Forget
quality against the population").

  python benchmarks/probe_audit.py --population 8 seed=0      # the tuning seed

Trains (or restores from `--workdir`) the `in` and `out` populations of each request, then for
every score variant prints, as JSON lines:
  * null: the KS p-values of every pair of retrain members (two retrains of the same request:
    forget quality must not flag them, p >= 0.05), single and against the pooled other members;
  * signal: the KS p-values of every trained member against every retrain member (must flag,
    p < 0.01);
  * both again for the calibrated test (`audit.calibrated_ks`), its effective size taken from the
    pairs of the other retrain members, and for the audit's forget quality, its median p over
    every retrain member in turn (`audit.forget_quality`; each retrain member audited against
    the others: the null; each trained member: the signal).
Every variant's scores are saved as `<workdir>/scores_<request>_<score>_<variant>.npz`
(`trained`, `retrain`: `[models, n]`) for analyses that need no retraining.
Overrides are `dotted.key=value` of `experiments/configs/unlearn_emoji.py`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib

from ease_jax import runtime

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()

import numpy as np  # noqa: E402

from ease_jax import audit  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import common  # noqa: E402
from ease_jax.unlearning import population as population_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

import probe_plants  # noqa: E402  (same folder: the config and the override parser)

# The client request is the config's backdoored client's (`_request`).
REQUESTS = dict(sample=dict(kind="sample", plant="sample_backdoor"),
                concept=dict(kind="concept", plant="concept"),
                tone=dict(kind="concept", field="skin_tone", concepts=("medium-dark",)))


def _request(config, name: str) -> dict:
  if name == "client":
    if "client_backdoor" not in (config.get("plants") or {}):
      raise SystemExit("The client request forgets the client of config.plants.client_backdoor, "
                       "and the config has no such plant.")
    return dict(kind="client", clients=tuple(config.plants.client_backdoor.clients))
  if name not in REQUESTS:
    raise SystemExit(f"Unknown request {name!r}: client or one of {sorted(REQUESTS)}.")
  return dict(REQUESTS[name])


def _summary(ps: list[float]) -> dict[str, float]:
  ps = np.asarray(ps)
  return dict(n=int(ps.size), below_0_05=float(np.mean(ps < 0.05)), below_0_01=float(
      np.mean(ps < 0.01)), median=float(np.median(ps)), min=float(ps.min()), max=float(ps.max()))


def ks_table(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, dict[str, float]]:
  """Null and signal p-values of `in_scores`, `out_scores` `[models, n]`."""
  n_out = out_scores.shape[0]
  pairs = [audit.ks_2samp(out_scores[i], out_scores[j])[1]
           for i, j in itertools.combinations(range(n_out), 2)]
  pooled = [audit.ks_2samp(out_scores[i], np.delete(out_scores, i, 0).ravel())[1]
            for i in range(n_out)]
  signal = [audit.ks_2samp(a, b)[1] for a in in_scores for b in out_scores]
  signal_pooled = [audit.ks_2samp(a, out_scores.ravel())[1] for a in in_scores]
  # The calibrated test, as the audit runs it: the effective size from the pairs of the
  # retrain members that are neither of the two models compared.
  def calibrated(a, j, leave_out):
    rest = np.delete(out_scores, sorted(set(leave_out)), 0)
    return audit.calibrated_ks(a, out_scores[j], audit.pairwise_ks_statistics(rest))
  null_cal = [calibrated(out_scores[i], j, (i, j))
              for i, j in itertools.combinations(range(n_out), 2)]
  signal_cal = [calibrated(a, j, (j,)) for a in in_scores for j in range(n_out)]
  # The audit's forget quality (`audit.forget_quality`): the median p over every retrain member
  # in turn; each retrain member judged against the others is the null.
  # At the point estimate of the calibration, as in session 8 (BENCHMARKS.md, "Forget quality
  # against the population"); the audit's bound: `probe_forget_calibration.py`.
  null_median = [audit.forget_quality(out_scores[i], np.delete(out_scores, i, 0), 0)["p"]
                 for i in range(n_out)]
  signal_median = [audit.forget_quality(a, out_scores, 0)["p"] for a in in_scores]
  return dict(null_pairs=_summary(pairs), null_pooled=_summary(pooled),
              signal_pairs=_summary(signal), signal_pooled=_summary(signal_pooled),
              null_calibrated=_summary([c["p"] for c in null_cal]),
              signal_calibrated=_summary([c["p"] for c in signal_cal]),
              n_eff=_summary([c["n_eff"] for c in null_cal]),
              d_null=_summary([c["ks"] for c in null_cal]),
              d_signal=_summary([c["ks"] for c in signal_cal]),
              null_median_over_members=_summary(null_median),
              signal_median_over_members=_summary(signal_median))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("overrides", nargs="*", help="dotted.key=value")
  parser.add_argument("--population", type=int, default=8)
  parser.add_argument("--workdir", default="workdirs/probe_audit")
  parser.add_argument("--requests", default="client,sample")
  args = parser.parse_args()
  config = configs.from_file(probe_plants.CONFIG)
  config = probe_plants.with_overrides(config, args.overrides)
  config.audit.population = args.population
  setup = builders.build_setup(config)
  for name in args.requests.split(","):
    config = base.config_with(config, {"unlearning": _request(config, name)})
    request = requests.from_config(setup, config.unlearning, seed=config.seeds.unlearning)
    in_pop, out_pop = population_lib.train_pair(setup, config, request, args.workdir)
    nonmembers = common.mia_nonmembers(setup, config, request.forget_images)
    members = dict(trained=[in_pop.member(i) for i in range(len(in_pop.seeds))],
                   retrain=[out_pop.member(i) for i in range(len(out_pop.seeds))])
    for score in population_lib.SCORES:
      raw = {k: np.stack([population_lib.raw_scores(setup, t, request.forget_texts, score)
                          for t in v]) for k, v in members.items()}
      ref = {k: np.stack([population_lib.raw_scores(setup, t, nonmembers, score) for t in v])
             for k, v in members.items()}
      variants = dict(
          raw=raw,
          centered={k: raw[k] - ref[k].mean(1, keepdims=True) for k in raw},
          standardized={k: population_lib.standardize(raw[k], ref[k]) for k in raw})
      # What the scores are of, checked by their reader (`audit_by_plant.py --probe_workdir`):
      # a rerun with other overrides must not pass for this one.
      identity = json.dumps(dict(overrides=args.overrides, population=args.population,
                                 request=request.fingerprint()))
      for variant, s in variants.items():
        path = pathlib.Path(args.workdir) / f"scores_{name}_{score}_{variant}.npz"
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, identity=np.asarray(identity), **s)
        os.replace(tmp, path)  # whole or not at all
        print(json.dumps(dict(request=name, score=score, variant=variant,
                              n_forget=int(s["trained"].shape[1]),
                              **ks_table(s["trained"], s["retrain"]))), flush=True)


if __name__ == "__main__":
  main()
