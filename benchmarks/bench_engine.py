"""Engine basics: the step time of one client update, a round at K = 8 and K = 64 clients for each
backend, and the peak memory of each configuration.

Times are measured side by side in this process (interleaved repeats); peak memory (VmHWM) needs
a process per configuration, so each is re-run once in a fresh subprocess (`--one`).

  python benchmarks/bench_engine.py --clients 8,64 --batch 4 --steps 2
"""
from __future__ import annotations

import os

# LAPACK (eigh, svd, qr, Cholesky, triangular solves) comes from scipy's OpenBLAS, whose worker
# threads fight XLA's own pool: on 2 cores a batched 512 x 512 eigh ran ~50x slower and a
# batched QR deadlocked. One OpenBLAS thread; must be set before numpy/jax are imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

import common
from ease_jax import federated

BACKENDS = ("vmap", "chunked", "sequential")


def build(backend: str, num_clients: int, batch: int, steps: int, chunk: int):
  eng = common.make_engine(4096)
  if backend == "client":  # One client update (all its local steps), jitted.
    fn = jax.jit(eng.client_update)
    idx, mask = common.schedules(1, steps, batch, eng.num_pairs)
    args = (eng.trainable, eng.backbone, eng.data,
            federated.Batches(jnp.asarray(idx[0]), jnp.asarray(mask[0])))
  else:
    fn = federated.make_round_fn(eng.client_update, backend, chunk)
    idx, mask = common.schedules(num_clients, steps, batch, eng.num_pairs, ragged=True)
    args = (eng.trainable, eng.backbone, eng.data,
            federated.Batches(jnp.asarray(idx), jnp.asarray(mask)))
  return lambda: fn(*args)


def one(spec: str, batch: int, steps: int, chunk: int) -> None:
  """Child process: run one configuration twice, print its peak RSS as JSON."""
  backend, k = spec.split(":")
  base = common.peak_rss_mib()
  run = build(backend, int(k), batch, steps, chunk)
  for _ in range(2):
    common.block(run())
  print(json.dumps(dict(peak_rss_mib=common.peak_rss_mib(), baseline_mib=base)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clients", default="8,64")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--chunk", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)
  parser.add_argument("--no_write", action="store_true")
  args = parser.parse_args()
  if args.one:
    return one(args.one, args.batch, args.steps, args.chunk)

  specs = [("client", 1)] + [(b, int(k)) for k in args.clients.split(",") for b in BACKENDS]
  runs, first = {}, {}
  for spec in specs:
    t0 = time.perf_counter()
    runs[spec] = build(spec[0], spec[1], args.batch, args.steps, args.chunk)
    common.block(runs[spec]())
    first[spec] = time.perf_counter() - t0
  times = {spec: [] for spec in specs}
  for _ in range(args.repeats):  # Interleaved, so load changes hit every variant alike.
    for spec, run in runs.items():
      t0 = time.perf_counter()
      common.block(run())
      times[spec].append(time.perf_counter() - t0)
  rows = []
  for spec in specs:
    med = statistics.median(times[spec])
    out = subprocess.run([sys.executable, __file__, f"--one={spec[0]}:{spec[1]}",
                          f"--batch={args.batch}", f"--steps={args.steps}",
                          f"--chunk={args.chunk}"], capture_output=True, text=True, check=True)
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    name = "one client update" if spec[0] == "client" else spec[0]
    if spec[0] == "chunked":
      name += f" ({args.chunk})"
    rows.append([spec[1], name, 1e3 * med, 1e3 * med / (spec[1] * args.steps),
                 spec[1] * args.steps * args.batch / med, first[spec],
                 mem["peak_rss_mib"]])
    print(common.markdown_table([], [rows[-1]]).splitlines()[-1], flush=True)
  header = ["K", "backend", "ms (median)", "ms per client-step", "pair slots/s", "first call s",
            "peak RSS MiB"]
  table = common.markdown_table(header, rows)
  print(table)
  body = f"""Command: `{common.command()}`

Machine: {common.machine()}. {args.steps} local steps of batch {args.batch} per client (ragged
clients: 1 to {args.steps * args.batch} real examples, masked tails), LoRA unmerged. Medians of
{args.repeats} interleaved repeats after a warm-up call ("first call" includes compilation).
Peak RSS is the VmHWM of a fresh process that builds the same random set-up (4096 random pairs)
and runs that configuration twice (so it includes Python, JAX, the backbone and the data).

{table}
"""
  if not args.no_write:
    common.write_section("Engine", body)


if __name__ == "__main__":
  main()
