"""Where does the concept's retrain sit? Candidate (style, template) pairs scored on one retrain
population, without training anything new.

  python benchmarks/probe_concept_retrain.py "invert|inverted {caption}" "grayscale|gray_{caption}"
  python benchmarks/probe_concept_retrain.py --population 16 --workdir workdirs/utility \
      "flip|upside down {caption}" plants.concept.num_pairs=80

The federation without the concept's copies (the `out` population of the concept request, the
concept's retrain) holds nothing of the concept plant: neither its style nor its words. So one
population of those retrains, cached and resumable like the audit's (`population.out_population`:
a benchmark's or `utility_population.py`'s workdir with the same `--population` and `--chunk`
is reused, and trained when absent), scores every candidate concept at once: each candidate's
probes (the held-out test images restyled, their template captions) go through each member,
and its concept accuracies (`evaluation.plant_metrics`, chance 50%) come out per member.
A concept whose retrain leans one way on one seed and the other way on the next gives a gap to
the trained model whose seed std is a large share of it (issue 14's std/gap ≤ ¼). What the
trained model learns of a candidate needs its own training run (`probe_plants.py` with the
same overrides). One JSON line per candidate: the members' mean, std and values (%), both
directions. Members run with seeds `audit.first_seed + i` (away from the evaluation seeds) and
share the partition and plants, as the benchmark's seeds do (`benchmark_emoji.py`): their spread
is the one the benchmark's three seeds are drawn from.
"""
from __future__ import annotations

import argparse
import json

from ease_jax import runtime

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()

import numpy as np  # noqa: E402

from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax import evaluation  # noqa: E402
from ease_jax.data import device as device_lib  # noqa: E402
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import population as population_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

import probe_plants  # noqa: E402  (same folder: the config and the override parser)

PLANT = "concept"


def candidate_setup(config, candidate: str):
  """The setup whose concept plant is `candidate`, "style|template"."""
  if candidate.count("|") != 1:
    raise SystemExit(f"A candidate is 'style|template', got {candidate!r}.")
  style, template = candidate.split("|")
  return builders.build_setup(base.config_with(
      config, {f"plants.{PLANT}.style": style, f"plants.{PLANT}.template": template}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("candidates", nargs="+",
                      help="'style|template' (e.g. 'invert|inverted {caption}'), or dotted.key="
                           "value overrides of experiments/configs/unlearn_emoji.py")
  parser.add_argument("--population", type=int, default=16)
  parser.add_argument("--chunk", type=int, default=8, help="members per batched computation")
  parser.add_argument("--workdir", default="workdirs/utility_population")
  args = parser.parse_args()
  overrides = [c for c in args.candidates if "=" in c and "|" not in c]
  candidates = [c for c in args.candidates if c not in overrides]
  config = probe_plants.with_overrides(configs.from_file(probe_plants.CONFIG), overrides)
  config = base.config_with(config, {"audit.population": args.population,
                                     "audit.chunk": args.chunk})
  setup = builders.build_setup(config)
  if PLANT not in setup.plants:
    raise SystemExit(f"The config has no {PLANT!r} plant (config.plants).")
  setups = {c: candidate_setup(config, c) for c in candidates}  # Every candidate checked first.
  pop = population_lib.out_population(setup, config, requests.plant_request(setup, PLANT),
                                      args.workdir)
  scores = {c: [] for c in candidates}  # [members, 2]
  for i in range(len(pop.seeds)):
    trainable = pop.member(i)
    for c, s in setups.items():
      embedder = device_lib.Embedder(s.model, s.backbone, trainable, s.data)
      m = evaluation.plant_metrics(s, trainable, s.plants[PLANT], embedder=embedder)
      scores[c].append((m[f"concept/{PLANT}/i2t"], m[f"concept/{PLANT}/t2i"]))
  for c, v in scores.items():
    v = np.asarray(v)
    row = dict(candidate=c, overrides=" ".join(overrides), seeds=list(pop.seeds))
    for j, direction in enumerate(("i2t", "t2i")):
      row.update({f"{direction}_mean": float(v[:, j].mean()),
                  f"{direction}_std": float(v[:, j].std(ddof=1)),
                  direction: [round(float(x), 1) for x in v[:, j]]})
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
