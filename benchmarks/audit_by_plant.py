"""Which forget examples does the audit flag? A finished benchmark's per-example LiRA, split
into the planted copies of D_f and its clean pairs (BENCHMARKS.md, "Planted comparison with
10-pixel triggers").

  python benchmarks/audit_by_plant.py --workdir=workdirs/benchmark_emoji_s12
  python benchmarks/audit_by_plant.py --workdir=workdirs/benchmark_emoji_s13 \
      plants.client_backdoor.trigger.size=10 plants.sample_backdoor.trigger.size=10 \
      plants.client_backdoor.num_pairs=100 plants.sample_backdoor.num_pairs=90

Reads the workdir's cached trained model, retrain reference and populations (nothing is
trained; overrides must name the config the workdir was run with, or its caches refuse to
load). For each seed of `experiments/configs/benchmark_emoji.py` and the `--scenario` request
it prints one JSON line: the trained model's TPR at 1% FPR over all of D_f (the benchmark's
`lira_tpr@0.01`), over its planted copies and over its clean pairs at the same threshold, and
the held-out retrain negatives' false-flag rate on each part.
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
from ease_jax import configs  # noqa: E402
from ease_jax.data import plants as plants_lib  # noqa: E402
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import benchmark  # noqa: E402
from ease_jax.unlearning import cell as cell_lib  # noqa: E402

import probe_plants  # noqa: E402  (same folder: the override parser)

CONFIG = probe_plants.CONFIG.with_name("benchmark_emoji.py")
FPR = 0.01


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("overrides", nargs="*", help="dotted.key=value")
  parser.add_argument("--workdir", required=True, help="a finished benchmark workdir")
  parser.add_argument("--scenario", default="client")
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  config = base.config_with(configs.from_file(CONFIG),
                            probe_plants.config_overrides(args.overrides))
  for seed in config.benchmark.seeds:
    cfg = benchmark.scenario_config(config, args.scenario, seed)
    cell = cell_lib.Cell(cfg, workdir / f"seed{seed}", workdir / f"seed{seed}" / args.scenario,
                         population_root=workdir / "population")
    if cell.populations is None:
      raise SystemExit("The config has no population (audit.population = 0): nothing to split.")
    setup, pops = cell.setup, cell.populations
    planted = plants_lib.is_planted(setup.dataset,
                                    setup.dataset.text_image[cell.request.forget_texts])
    pos, neg = audit.lira_folds(cell._score(cell.trained.trainable), pops["in_scores"],
                                pops["out_scores"], cell.audit_config.variance)
    threshold = audit.fpr_threshold(neg, FPR)
    share = lambda x, part: 100 * float(np.mean(x[:, part] > threshold)) if part.any() else None
    print(json.dumps(dict(
        scenario=args.scenario, seed=seed, n_forget=int(planted.size),
        n_planted=int(planted.sum()), tpr_all=100 * float(np.mean(pos > threshold)),
        tpr_planted=share(pos, planted), tpr_clean=share(pos, ~planted),
        false_flags_planted=share(neg, planted), false_flags_clean=share(neg, ~planted))),
        flush=True)


if __name__ == "__main__":
  main()
