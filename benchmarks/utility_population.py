"""What do the plants cost the clean data? Paired populations instead of a handful of seeds.

  python benchmarks/utility_population.py --population 24 --workdir workdirs/utility
  python benchmarks/utility_population.py --arms planted,none <overrides>

One run of the embedded default moves its test R@1 (178 held-out images) by 2-3 points between
seeds, and a planted run and an unplanted one with the same seeds follow different trajectories,
so their difference has a seed std of about 3 points: three or six seeds cannot tell a 1-point
cost from none (BENCHMARKS.md, "Planting costs utility"). Here every arm is one population
(`population.train`: one batched computation per chunk), member i of every arm running with the
same seeds (LoRA init, client sampling, shuffles: seed `audit.first_seed + i`, away from the
evaluation seeds). Populations are cached and resumable in `--workdir`, in the audit's folders
(`population.in_population`, `out_population`; with the same `--population` and `--chunk`, a
benchmark workdir's `population/` is reused). The arms:
  * `planted`: the federation with its plants (the trained model of every request);
  * `none`: the same federation without any plant (`plants={}`): the strict reading;
  * `without:<plant>`: the planted federation without that plant's poisoned pairs (the holders
    keep their clean data): the per-request reading.
Each member's test and clean-client R@1 (mean of both directions, the probes' `test/mean_r1`
and `clients/mean_r1`) and, for `planted`, its plants' attack success or concept accuracy are
printed as JSON lines; the last line is the summary: for `planted` against each other arm, the
paired difference's mean, std, standard error and 95% t-interval
(`common.paired_difference`).
Overrides are `dotted.key=value` of `experiments/configs/unlearn_emoji.py`, applied to every arm.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from ease_jax import runtime

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()


from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax import evaluation  # noqa: E402
from ease_jax import training  # noqa: E402
from ease_jax.data import device as device_lib  # noqa: E402
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import population as population_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

import common  # noqa: E402  (same folder)
import probe_plants  # noqa: E402  (same folder: the config and the override parser)

METRICS = ("test/mean_r1", "clients/mean_r1")


def arm_setups(config, arms: list[str]) -> dict[str, tuple]:
  """`{arm: (config, setup)}`, every arm checked before anything trains: `planted` and every
  `without:<plant>` share the planted config and setup; `none` has `plants={}` and its own."""
  planted = (config, builders.build_setup(config))
  by_arm = {}
  for arm in arms:
    if arm == "none":
      unplanted = base.config_with(config, {"plants": {}})
      by_arm[arm] = (unplanted, builders.build_setup(unplanted))
    elif arm == "planted" or (arm.startswith("without:") and
                              arm.split(":", 1)[1] in planted[1].plants):
      by_arm[arm] = planted
    else:
      raise SystemExit(f"Unknown arm {arm!r}: planted, none or without:<plant>, a plant of "
                       f"config.plants ({sorted(planted[1].plants)}).")
  return by_arm


def arm_population(config, setup, arm: str, workdir: pathlib.Path):
  """One arm's population, cached under `workdir` as the audit caches its populations (`planted`
  and `none` are the `in` population of their federation, `without:<plant>` the `out` one of
  that plant's request)."""
  if arm.startswith("without:"):
    request = requests.plant_request(setup, arm.split(":", 1)[1])
    return population_lib.out_population(setup, config, request, workdir)
  return population_lib.in_population(setup, config, workdir)


def model_row(setup, trainable, with_plants: bool) -> dict[str, float]:
  """One model's clean retrieval, test and clean-client R@1 (and, `with_plants`, its plants'
  metrics), from one embedding pass."""
  embedder = device_lib.Embedder(setup.model, setup.backbone, trainable, setup.data)
  ev = evaluation.evaluate_splits(setup, trainable, training.eval_subsets(setup),
                                  embedder=embedder)
  row = {k: float(ev[k]) for k in METRICS}
  if with_plants:
    for plant in setup.plants.values():
      row.update(evaluation.plant_metrics(setup, trainable, plant, embedder=embedder))
  return row


def member_rows(setup, pop, with_plants: bool) -> list[dict[str, float]]:
  """Every member's `model_row`, with its seed."""
  return [dict(seed=seed, **model_row(setup, pop.member(i), with_plants))
          for i, seed in enumerate(pop.seeds)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("overrides", nargs="*", help="dotted.key=value")
  parser.add_argument("--population", type=int, default=24)
  parser.add_argument("--chunk", type=int, default=8, help="members per batched computation")
  parser.add_argument("--workdir", default="workdirs/utility_population")
  parser.add_argument("--arms", default="planted,none,without:client_backdoor")
  args = parser.parse_args()
  arms = args.arms.split(",")
  if arms[0] != "planted":
    raise SystemExit("--arms starts with planted: the other arms are its references.")
  config = probe_plants.with_overrides(configs.from_file(probe_plants.CONFIG), args.overrides)
  config = base.config_with(config, {"audit.population": args.population,
                                     "audit.chunk": args.chunk})
  workdir = pathlib.Path(args.workdir)
  setups = arm_setups(config, arms)
  results = {}
  for arm in arms:
    arm_config, setup = setups[arm]
    pop = arm_population(arm_config, setup, arm, workdir)
    results[arm] = member_rows(setup, pop, with_plants=arm == "planted")
    # Paired by member: every arm's member i ran with the same seeds.
    assert [r["seed"] for r in results[arm]] == [r["seed"] for r in results[arms[0]]]
    for row in results[arm]:
      print(json.dumps(dict(arm=arm, **row)), flush=True)
  summary = dict(overrides=" ".join(args.overrides), population=args.population)
  for arm in arms[1:]:
    for metric in METRICS:
      summary[f"planted-{arm}/{metric}"] = common.paired_difference(
          [r[metric] for r in results["planted"]], [r[metric] for r in results[arm]])
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  main()
