"""A population of N FedAvg runs (seeds) as one batched computation vs the same N runs one
after another, on the embedded default federation (the audit's retrain population).

Both sides use the engine `fed.backend='auto'` picks for one run (on a CPU with the default
non-IID clients: the sequential loop that skips padded steps; the population vmaps it over the
seed axis with the step activity shared, so the skipping survives). Measured side by side in one
process, the one-by-one runs first; the first round of each side (compilation) is reported
apart. Member equality with the single runs is a test (tests/test_population.py), not timed here.

  python benchmarks/bench_population.py --runs 16 --rounds 3
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

from ease_jax import runtime  # noqa: E402

runtime.avoid_cpu_hang()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax import federated  # noqa: E402
from ease_jax.federated import driver  # noqa: E402
from ease_jax.unlearning import population  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" / (
    "unlearn_emoji.py")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--no_write", action="store_true")
  args = parser.parse_args()
  config = configs.from_file(CONFIG)
  config.fed.history_size = 0
  setup = builders.build_setup(config)
  configs_ = [population.member_config(config, 100 + i) for i in range(args.runs)]
  plans = [builders.round_plan(setup, c) for c in configs_]
  starts = [builders.init_trainable(setup, c) for c in configs_]
  algorithm = builders.fedavg_algorithm(setup, config, plans[0])
  options = driver.RunOptions(progress=False)
  t0 = time.perf_counter()
  single_rounds = []
  for plan, start in zip(plans, starts):
    res = driver.run(algorithm, plan, algorithm.init(start), args.rounds, options=options)
    single_rounds.append([r["round_time_s"] for r in res.metrics])
  sequential_s = time.perf_counter() - t0
  stacked = federated.StackedPlan(tuple(plans))
  batched = federated.vmapped(algorithm, stacked.axes)
  t0 = time.perf_counter()
  res = driver.run(batched, stacked, batched.init(jax.tree.map(lambda *x: jnp.stack(x), *starts)),
                   args.rounds, options=options)
  batched_s = time.perf_counter() - t0
  batched_rounds = [r["round_time_s"] for r in res.metrics]
  # Steady state: rounds after the first (which compiles) of every run / of the batched run.
  seq_steady = float(np.sum([r[1:] for r in single_rounds]))
  bat_steady = float(np.sum(batched_rounds[1:]))
  backend = builders.fedavg_options(setup, config, plans[0]).backend
  header = ["N runs", "rounds", "engine", "one after another s", "batched s", "ratio",
            "steady ratio (rounds 2+)", "first round s (one run / batched)", "peak RSS MiB"]
  row = [args.runs, args.rounds, backend, round(sequential_s, 1), round(batched_s, 1),
         round(batched_s / sequential_s, 3), round(bat_steady / seq_steady, 3),
         f"{single_rounds[0][0]:.1f} / {batched_rounds[0]:.1f}", round(common.peak_rss_mib())]
  table = common.markdown_table(header, [row])
  print(table)
  if not args.no_write:
    body = "\n".join([
        "```bash", common.command(), "```", "",
        f"Machine: {common.machine()}. The embedded default federation (8 clients, the default "
        f"non-IID partition with its plants, batch 32, 1 local epoch); members differ in LoRA "
        f"init, sampling and shuffles (seeds 100..{99 + args.runs}). 'steady' leaves out each "
        "side's first, compiling round.", "", table, ""])
    common.write_section("Population", body)


if __name__ == "__main__":
  main()
