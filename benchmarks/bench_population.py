"""A population of N FedAvg runs (seeds) as one batched computation vs the same N runs one
after another, on the embedded default federation (the audit's retrain population).

The batched side is the library's own `population.train` (chunks of `--chunk` members, each
chunk's seed axis split over the CPU devices, one per core, as the binaries set them up:
`runtime.one_cpu_device_per_core`). The other side runs the same N member configs one after
another with `driver.run`, each on the default device with the engine `fed.backend='auto'`
picks for one run (on a CPU with the default non-IID clients: the sequential loop that skips
padded steps; the population vmaps it with the step activity shared, so the skipping survives).
Both sides write checkpoints to a scratch workdir at the config's `checkpoint_every`. Measured
side by side in one process, the one-by-one runs first (but see `--blocks`); the compiling
first round of each side is reported apart, and 'cores busy' is CPU time over wall time.
Member equality with the single runs is a test (tests/test_population.py), not timed here.

`--blocks K` interleaves the two sides: the N runs are split into K blocks of whole chunks, and
each block runs one after another, then batched (the population grown by that block's chunks,
which reuses the finished ones and the compiled programs), before the next block. A host whose
speed drifts during the measurement then slows both sides alike, where the default order (every
one-by-one run first, then the whole population) lets a drift between the halves move the ratio.

  python benchmarks/bench_population.py --runs 16 --rounds 12 --chunk 8 [--blocks 2]
"""
from __future__ import annotations

import argparse
import os

PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--runs", type=int, default=16)
PARSER.add_argument("--rounds", type=int, default=12, help="the default config's 12")
PARSER.add_argument("--chunk", type=int, default=8, help="members per batched computation")
PARSER.add_argument("--devices", type=int, default=0,
                    help="CPU devices the population splits over (0 = one per core)")
PARSER.add_argument("--blocks", type=int, default=1,
                    help="interleave the sides in this many blocks of whole chunks (1: not)")
PARSER.add_argument("--no_write", action="store_true")
ARGS = PARSER.parse_args()
_BLOCK = ARGS.runs // max(ARGS.blocks, 1)
if ARGS.blocks < 1 or ARGS.runs % ARGS.blocks or (ARGS.blocks > 1 and (
    not ARGS.chunk or _BLOCK % ARGS.chunk or _BLOCK < 3)):
  PARSER.error(f"--blocks {ARGS.blocks} must split --runs {ARGS.runs} into equal blocks of "
               f"whole chunks (--chunk {ARGS.chunk}; 0, one chunk of all runs, allows only 1) "
               "of at least 3 runs (a population's floor)")

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ease_jax import runtime  # noqa: E402

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core(ARGS.devices or None)

import json  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax import sharding  # noqa: E402
from ease_jax.federated import driver  # noqa: E402
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import population  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" / (
    "unlearn_emoji.py")
FIRST_SEED = 100


class CpuClock:
  """Wall time and this process's CPU time (all threads), summed over the spans it timed."""

  def __init__(self):
    self.wall = self.cpu = 0.0

  @staticmethod
  def _cpu() -> float:
    t = os.times()
    return t.user + t.system

  def start(self) -> None:
    self._wall, self._cpu0 = time.perf_counter(), self._cpu()

  def stop(self) -> None:
    self.wall += time.perf_counter() - self._wall
    self.cpu += self._cpu() - self._cpu0

  @property
  def cores_busy(self) -> float:
    return self.cpu / self.wall


def main():
  config = configs.from_file(CONFIG)
  config.fed.rounds = ARGS.rounds
  config.fed.history_size = 0  # as population.train runs its members
  config.audit.population, config.audit.chunk = ARGS.runs, ARGS.chunk
  config.audit.first_seed = FIRST_SEED
  setup = builders.build_setup(config)
  member_configs = [population.member_config(config, FIRST_SEED + i) for i in range(ARGS.runs)]
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench_population_"))

  single_clock, batched_clock = CpuClock(), CpuClock()
  single_rounds, algorithm, batched_algorithms, block_ratios = [], None, {}, []
  for end in range(_BLOCK, ARGS.runs + 1, _BLOCK):
    walls = single_clock.wall, batched_clock.wall
    single_clock.start()
    for i in range(end - _BLOCK, end):
      member = member_configs[i]
      plan = builders.round_plan(setup, member)
      algorithm = algorithm or builders.fedavg_algorithm(setup, config, plan)
      res = driver.run(algorithm, plan, algorithm.init(builders.init_trainable(setup, member)),
                       ARGS.rounds, scratch / f"single_{i}",
                       driver.RunOptions(checkpoint_every=config.checkpoint_every,
                                         progress=False))
      single_rounds.append([r["round_time_s"] for r in res.metrics])
    single_clock.stop()
    # The population grown to `end` members: the finished chunks are restored, the new ones run.
    batched_clock.start()
    population.train(setup, base.config_with(config, {"audit.population": end}),
                     lambda c: builders.round_plan(setup, c), scratch / "batched", {}, "bench",
                     algorithms=batched_algorithms)
    batched_clock.stop()
    block_ratios.append((batched_clock.wall - walls[1]) / (single_clock.wall - walls[0]))
  sequential_s, sequential_cores = single_clock.wall, single_clock.cores_busy
  batched_s, batched_cores = batched_clock.wall, batched_clock.cores_busy
  chunk_rounds = [[json.loads(line)["round_time_s"] for line in path.read_text().splitlines()]
                  for path in sorted((scratch / "batched").glob("members_*/metrics.jsonl"))]
  # Steady state: seconds per member-round, leaving out the first round of the first single run
  # and of the first chunk (the two compilations; later runs and chunks of the same shapes reuse
  # them). Per member-round, because a chunk's round trains `chunk` members at once: leaving out
  # one chunk round drops `chunk` member-rounds, one single round drops one.
  chunk_size = ARGS.chunk or ARGS.runs
  members = [min(chunk_size, ARGS.runs - start) for start in range(0, ARGS.runs, chunk_size)]
  seq_steady = float(np.sum(single_rounds) - single_rounds[0][0]) / (np.size(single_rounds) - 1)
  bat_steady = float(np.sum([np.sum(r) for r in chunk_rounds]) - chunk_rounds[0][0]) / (
      sum(m * len(r) for m, r in zip(members, chunk_rounds)) - members[0])
  backend = builders.fedavg_options(setup, config, builders.round_plan(setup, config)).backend
  header = ["N runs", "rounds", "chunk", "blocks", "devices per chunk", "engine",
            "one after another s",
            "batched s", "ratio", "ratio per block", "steady ratio",
            "first round s (one run / batched)",
            "cores busy (one after another / batched)", "peak RSS MiB"]
  row = [ARGS.runs, ARGS.rounds, chunk_size, ARGS.blocks, sharding.split_count(chunk_size),
         backend,
         round(sequential_s, 1), round(batched_s, 1), round(batched_s / sequential_s, 3),
         " / ".join(f"{r:.3f}" for r in block_ratios), round(bat_steady / seq_steady, 3),
         f"{single_rounds[0][0]:.1f} / {chunk_rounds[0][0]:.1f}",
         f"{sequential_cores:.2f} / {batched_cores:.2f}", round(common.peak_rss_mib())]
  table = common.markdown_table(header, [row])
  print(table)
  if not ARGS.no_write:
    body = "\n".join([
        "```bash", common.command(), "```", "",
        f"Machine: {common.machine()}. The embedded default federation (8 clients, the default "
        f"non-IID partition with its plants, batch 32, 1 local epoch); members differ in LoRA "
        f"init, sampling and shuffles (seeds {FIRST_SEED}..{FIRST_SEED + ARGS.runs - 1}). "
        "'steady ratio' compares seconds per member-round without each side's first, "
        "compiling round.", "", table, ""])
    common.write_section("Population", body)


if __name__ == "__main__":
  main()
