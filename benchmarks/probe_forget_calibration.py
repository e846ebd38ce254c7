"""Does forget quality move with the population's draw? Retrains held out of one draw of the
retrain populations are judged against another draw, at the point estimate of the calibration
and at upper confidence bounds; the trained members the same way (BENCHMARKS.md, "Forget
quality: a calibration that does not move with the draw").

  python benchmarks/probe_forget_calibration.py workdirs/benchmark_emoji_amd_s26 \\
      workdirs/benchmark_emoji_amd_s27          # two benchmark workdirs' populations
  python benchmarks/probe_forget_calibration.py workdirs/benchmark_emoji_amd_s27 \\
      workdirs/draw_200 --first_seeds 100,200   # a second draw with other member seeds

Each argument is a workdir whose `population/` holds (or gets: `population.train_pair` trains
what is missing) the `in` and `out` populations of the benchmark config's requests; draw k's
members have seeds from `--first_seeds[k]` on. For every request and `--confidences` value (0:
the point estimate) one JSON line:
  * `held_out`: each retrain member of one draw against the other draw's retrains (less its
    twin, the member with its seed, where the draws share seeds): a retrain that is in neither
    the population nor its calibration. Forget quality must clear it (p >= 0.05).
  * `loo`: each retrain member against the other members of its own draw.
  * `trained`: each trained member of one draw against the other draw's retrains (less the
    twin): forget quality must flag it (p < 0.01).
The benchmark config's audit knobs (score, calibration by non-members) give the scores.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from ease_jax import runtime

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()

import numpy as np  # noqa: E402

from ease_jax import audit  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import benchmark as benchmark_lib  # noqa: E402
from ease_jax.unlearning import common  # noqa: E402
from ease_jax.unlearning import population as population_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" / (
    "benchmark_emoji.py")


def draw_scores(config, setup, scenario: str, workdir: pathlib.Path, first_seed: int
                ) -> dict[str, np.ndarray]:
  """One draw's `in` and `out` scores `[members, n]` on the request's D_f, and their seeds."""
  cfg = benchmark_lib.scenario_config(config, scenario, config.benchmark.seeds[0])
  cfg = base.config_with(cfg, {"audit.first_seed": first_seed})
  request = requests.from_config(setup, cfg.unlearning, seed=cfg.seeds.unlearning)
  nonmembers = common.mia_nonmembers(setup, cfg, request.forget_images)
  pair = population_lib.scored_pair(setup, cfg, request, workdir / "population", nonmembers)
  return dict(trained=pair["in_scores"], retrain=pair["out_scores"],
              seeds=np.asarray(pair["out_seeds"]))


def summary(ps: list[float]) -> dict[str, float]:
  ps = np.asarray(ps)
  return dict(n=int(ps.size), below_0_05=float(np.mean(ps < 0.05)),
              below_0_01=float(np.mean(ps < 0.01)), min=float(ps.min()),
              median=float(np.median(ps)), max=float(ps.max()))


def judge(draws: list[dict[str, np.ndarray]], confidence: float) -> dict[str, dict[str, float]]:
  """Forget quality of held-out retrains, leave-one-out members and trained members."""
  p = lambda target, population: audit.forget_quality(target, population, confidence)["p"]
  held_out, loo, trained = [], [], []
  for x in draws:
    for i in range(x["retrain"].shape[0]):
      loo.append(p(x["retrain"][i], np.delete(x["retrain"], i, 0)))
    for y in draws:
      if y is x:
        continue
      for i, seed in enumerate(x["seeds"]):
        population = y["retrain"][y["seeds"] != seed]  # the twin shares init and sampling
        held_out.append(p(x["retrain"][i], population))
        trained.append(p(x["trained"][i], population))
  return dict(held_out=summary(held_out), loo=summary(loo), trained=summary(trained))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs=2, help="two workdirs, one draw each")
  parser.add_argument("--first_seeds", default="100,100",
                      help="each draw's audit.first_seed (comma-separated)")
  parser.add_argument("--confidences", default="0,0.9,0.95,0.99")
  parser.add_argument("--config", default=str(CONFIG))
  args = parser.parse_args()
  config = configs.from_file(args.config)
  first_seeds = [int(s) for s in args.first_seeds.split(",")]
  if len(first_seeds) != len(args.workdirs):
    raise SystemExit(f"--first_seeds needs one seed per workdir, got {args.first_seeds!r}.")
  setup = builders.build_setup(
      benchmark_lib.scenario_config(config, config.benchmark.scenarios[0],
                                    config.benchmark.seeds[0]))
  for scenario in config.benchmark.scenarios:
    draws = [draw_scores(config, setup, scenario, pathlib.Path(w), s)
             for w, s in zip(args.workdirs, first_seeds)]
    for confidence in (float(c) for c in args.confidences.split(",")):
      print(json.dumps(dict(request=scenario, confidence=confidence,
                            n_forget=int(draws[0]["retrain"].shape[1]),
                            **judge(draws, confidence))), flush=True)


if __name__ == "__main__":
  main()
