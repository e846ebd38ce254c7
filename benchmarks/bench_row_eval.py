"""How long the benchmark takes to evaluate one row: `cell.Cell.row` (retrieval, MIA, plants,
tones, audit) of the retrain / backbone / original models of a finished benchmark workdir, per
model, as the median over repeats after a warm-up row (`common.time_fn`). The workdir is copied
to a temporary folder first, so nothing in it changes.

  python benchmarks/bench_row_eval.py --workdir=workdirs/benchmark_emoji_s19 --seed=1 --repeats=3

To compare two checkouts' evaluation side by side, alternate runs with each one's library first
on the path (`PYTHONPATH=<other checkout> python benchmarks/bench_row_eval.py ...`; BENCHMARKS.md,
"Unlearning comparison", session 19).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile

from ease_jax import runtime

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()  # As the benchmark binary runs.

import common  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax.unlearning import benchmark  # noqa: E402
from ease_jax.unlearning import cell as cell_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="A finished benchmark workdir.")
  parser.add_argument("--config", default=str(ROOT / "experiments/configs/benchmark_emoji.py"))
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  source = pathlib.Path(args.workdir)
  config = configs.from_file(args.config)
  missing = [p for p in (source / f"seed{args.seed}", source / "population") if not p.is_dir()]
  if missing:
    sys.exit(f"Not a finished benchmark workdir for seed {args.seed}: no {missing[0]}.")
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    for part in (f"seed{args.seed}", "population"):
      shutil.copytree(source / part, work / part)
    for scenario in config.benchmark.scenarios:
      cfg = benchmark.scenario_config(config, scenario, args.seed)
      cell = cell_lib.Cell(cfg, work / f"seed{args.seed}", work / f"seed{args.seed}" / scenario,
                           mia_score=config.benchmark.mia_score,
                           population_root=work / "population")
      out[scenario] = {
          o.method: common.time_fn(lambda o=o: cell.row(o) and None, repeats=args.repeats)[0]
          for o in cell.reference_outcomes()}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
