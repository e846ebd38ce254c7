"""How often the batched GSD jit never returns on XLA:CPU, per `XLA_FLAGS` setting.

Each trial is a fresh process (the hang is a lost wake-up inside XLA:CPU's runtime: every thread
idle, the main thread waiting in `block_until_ready`, so only a timeout detects it) that compiles
and runs `ease.batched_gsd` once (`subspace.gsd` vmapped over 16 modules, default `GSDConfig`),
on random inputs of the shapes of a sample request on the embedded default (forget
`[16, 256, 2048]`, retain `[16, 8, 32, 2048]`). Arms are interleaved trial by trial, so machine
load hits them alike.

  python benchmarks/bench_cpu_hang.py --trials 15
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import common

ARMS = {
    "none": "",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
    "no_concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
}


def child(seed: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning.methods import ease  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  forget = rng.standard_normal((16, 256, 2048), np.float32)
  retain = rng.standard_normal((16, 8, 32, 2048), np.float32)
  # EASE's own jitted GSD with its default knobs, as a sample request runs it.
  jax.block_until_ready(ease.batched_gsd(forget, retain, cfg=ease.GSDConfig()))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--trials", type=int, default=15, help="trials per arm")
  p.add_argument("--timeout", type=float, default=40.0, help="seconds before a trial is a hang")
  p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {list(ARMS)}")
  p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument("--write", action="store_true", help="write the BENCHMARKS.md section")
  args = p.parse_args()
  if args.child is not None:
    child(args.child)
    return
  arms = args.arms.split(",")
  unknown = sorted(set(arms) - set(ARMS))
  if unknown:
    p.error(f"unknown arms {unknown}; known: {list(ARMS)}")
  counts = {a: collections.Counter() for a in arms}
  t_start = time.perf_counter()
  for trial in range(args.trials):
    for arm in arms:
      env = dict(os.environ, XLA_FLAGS=ARMS[arm], JAX_PLATFORMS="cpu")
      t0 = time.perf_counter()
      try:
        proc = subprocess.run([sys.executable, __file__, "--child", str(trial)], env=env,
                              capture_output=True, timeout=args.timeout, check=False)
        outcome = "ok" if proc.returncode == 0 else "error"
        if proc.returncode != 0:
          print(proc.stderr.decode()[-2000:], file=sys.stderr)
      except subprocess.TimeoutExpired:
        outcome = "hang"
      counts[arm][outcome] += 1
      print(json.dumps(dict(trial=trial, arm=arm, outcome=outcome,
                            seconds=round(time.perf_counter() - t0, 1))), flush=True)
  rows = [[a, f"`{ARMS[a]}`" if ARMS[a] else "(none)", counts[a]["ok"], counts[a]["hang"],
           counts[a]["error"]] for a in arms]
  table = common.markdown_table(["arm", "XLA_FLAGS", "finished", "hung", "errors"], rows)
  print(table)
  print(f"total {time.perf_counter() - t_start:.0f} s")
  if args.write:
    common.write_section(
        "CPU hang of the batched GSD",
        f"Command: `{common.command()}`\n\nMachine: {common.machine()}\n\n"
        f"A trial is a fresh process; a hang is no result after {args.timeout:.0f} s (a finished "
        f"trial takes under 10 s, the GSD run itself about 0.5 s).\n\n{table}\n")


if __name__ == "__main__":
  main()
