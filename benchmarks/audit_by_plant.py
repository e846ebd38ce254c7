"""Which forget examples does the audit flag? A finished benchmark's per-example LiRA, split
into the planted copies of D_f and its clean pairs (BENCHMARKS.md, "Planted comparison with
10-pixel triggers").

  python benchmarks/audit_by_plant.py --workdir=workdirs/benchmark_emoji_s12
  python benchmarks/audit_by_plant.py --workdir=workdirs/benchmark_emoji_s13 \
      plants.client_backdoor.trigger.size=10 plants.sample_backdoor.trigger.size=10 \
      plants.client_backdoor.num_pairs=100 plants.sample_backdoor.num_pairs=90
  python benchmarks/audit_by_plant.py --probe_workdir=workdirs/probe_audit_s11

Reads the workdir's cached trained model, retrain reference and populations (a finished
benchmark's workdir has them all; one that misses any is trained and written into the workdir,
as the benchmark would; overrides must name the config the workdir was run with, or its caches
refuse to load). For each seed of `experiments/configs/benchmark_emoji.py` and the `--scenario` request
it prints one JSON line: the trained model's TPR at 1% FPR over all of D_f (the benchmark's
`lira_tpr@0.01`), over its planted copies and over its clean pairs at the same threshold, and
the held-out retrain negatives' false-flag rate on each part.

`--probe_workdir` instead reads the scores `benchmarks/probe_audit.py` saved for the request
(every score and variant, `[models, n]` of its trained and retrain populations; the default
config's seeds) and audits each trained member in turn against the other trained members and
the retrain population: which score makes the clean pairs detectable, on the tuning seed.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re

from ease_jax import runtime

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()

import numpy as np  # noqa: E402

from ease_jax import audit  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax.data import plants as plants_lib  # noqa: E402
from ease_jax.unlearning import benchmark  # noqa: E402
from ease_jax.unlearning import cell as cell_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

import probe_plants  # noqa: E402  (same folder: the override parser)

CONFIG = probe_plants.CONFIG.with_name("benchmark_emoji.py")
FPR = 0.01


def split_tpr(target: np.ndarray, in_scores: np.ndarray, out_scores: np.ndarray,
              planted: np.ndarray, variance: str = "shared", in_seeds=None, out_seeds=None
              ) -> dict:
  """The audit's TPR at `FPR` (in %) over all examples, the planted ones and the clean ones, at
  one threshold, and the retrain negatives' false flags on each part (the members' seeds keep
  each fold's twins out, `audit.lira_folds`)."""
  pos, neg = audit.lira_folds(target, in_scores, out_scores, variance, in_seeds, out_seeds)
  threshold = audit.fpr_threshold(neg, FPR)
  share = lambda x, part: 100 * float(np.mean(x[:, part] > threshold)) if part.any() else None
  return dict(n_forget=int(planted.size), n_planted=int(planted.sum()),
              tpr_all=100 * float(np.mean(pos > threshold)), tpr_planted=share(pos, planted),
              tpr_clean=share(pos, ~planted), false_flags_planted=share(neg, planted),
              false_flags_clean=share(neg, ~planted))


def planted_mask(setup, request) -> np.ndarray:
  return plants_lib.is_planted(setup.dataset, setup.dataset.text_image[request.forget_texts])


def from_benchmark(config, workdir: pathlib.Path, scenario: str) -> None:
  setups = benchmark.check_cells(config)  # One setup per seed, as the benchmark builds them.
  for seed in config.benchmark.seeds:
    cfg = benchmark.scenario_config(config, scenario, seed)
    cell = cell_lib.Cell(cfg, workdir / f"seed{seed}", workdir / f"seed{seed}" / scenario,
                         setup=setups[seed], population_root=workdir / "population")
    if cell.populations is None:
      raise SystemExit("The config has no population (audit.population = 0): nothing to split.")
    pops = cell.populations
    print(json.dumps(dict(scenario=scenario, seed=seed, **split_tpr(
        cell.forget_scores(cell.trained.trainable), pops["in_scores"], pops["out_scores"],
        planted_mask(cell.setup, cell.request), cell.audit_config.variance,
        pops["seeds"], pops["out_seeds"]))), flush=True)


def from_probe(config, workdir: pathlib.Path, scenario: str) -> None:
  cfg = benchmark.scenario_config(config, scenario, config.seed)
  setup = builders.build_setup(cfg)
  request = requests.from_config(setup, cfg.unlearning, seed=cfg.seeds.unlearning)
  planted = planted_mask(setup, request)
  paths = sorted(workdir.glob(f"scores_{scenario}_*_*.npz"))
  if not paths:
    raise SystemExit(f"No scores_{scenario}_<score>_<variant>.npz in {workdir} "
                     "(benchmarks/probe_audit.py writes them).")
  for path in paths:
    score, variant = re.fullmatch(rf"scores_{scenario}_(\w+?)_(\w+)\.npz", path.name).groups()
    scores = np.load(path)
    trained, retrain = scores["trained"], scores["retrain"]
    if "identity" in scores.files:  # Files written before it carry the shape check only.
      identity = json.loads(str(scores["identity"]))
      if identity["request"] != request.fingerprint():
        raise SystemExit(f"{path} holds scores of another request (written with overrides "
                         f"{identity['overrides']}): pass the overrides it was run with.")
    if trained.shape[1] != planted.size:
      raise SystemExit(f"{path} holds {trained.shape[1]} examples, the {scenario} request of "
                       f"this config {planted.size}: pass the overrides it was run with.")
    # Member i is the target: the others fit, and its twin (retrain member i, the same seed)
    # leaves the retrain side, as the audited models have no twin in the populations.
    seeds = np.arange(trained.shape[0])
    rows = [split_tpr(trained[i], np.delete(trained, i, axis=0), np.delete(retrain, i, axis=0),
                      planted, config.audit.variance, np.delete(seeds, i), np.delete(seeds, i))
            for i in range(trained.shape[0])]
    # Shares: the mean over members (None where D_f has no such part); counts: the same in all.
    mean = {k: (v if k.startswith("n_") or v is None else float(np.mean([r[k] for r in rows])))
            for k, v in rows[0].items()}
    clean = [r["tpr_clean"] for r in rows if r["tpr_clean"] is not None]
    print(json.dumps(dict(scenario=scenario, score=score, variant=variant, members=len(rows),
                          **mean, tpr_clean_range=[min(clean), max(clean)] if clean else None)),
          flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("overrides", nargs="*", help="dotted.key=value")
  parser.add_argument("--workdir", default="", help="a finished benchmark workdir")
  parser.add_argument("--probe_workdir", default="", help="a probe_audit.py workdir")
  parser.add_argument("--scenario", default="client")
  args = parser.parse_args()
  if bool(args.workdir) == bool(args.probe_workdir):
    raise SystemExit("Give one of --workdir (a benchmark) or --probe_workdir (probe_audit.py).")
  config = probe_plants.with_overrides(configs.from_file(CONFIG), args.overrides)
  if args.workdir:
    from_benchmark(config, pathlib.Path(args.workdir), args.scenario)
  else:
    from_probe(config, pathlib.Path(args.probe_workdir), args.scenario)


if __name__ == "__main__":
  main()
