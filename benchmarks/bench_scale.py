"""How many simulated clients fit in one process: vmap vs chunked, and a 10,000-client round.

The round's device memory is read from XLA's compiled memory analysis (arguments + outputs +
temporaries) at several K, without running out of memory on a shared machine; it is linear in K,
so the largest K under the memory budget follows from a fit and is then checked by compiling and
running there. Then 10,000 clients run chunked (`lax.map(batch_size=chunk)`): compile time, round
time and the process's peak RSS.

  python benchmarks/bench_scale.py --budget_gib 24 --big 10000 --chunk 64
"""
from __future__ import annotations

import os

# LAPACK (eigh, svd, qr, Cholesky, triangular solves) comes from scipy's OpenBLAS, whose worker
# threads fight XLA's own pool: on 2 cores a batched 512 x 512 eigh ran ~50x slower and a
# batched QR deadlocked. One OpenBLAS thread; must be set before numpy/jax are imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from ease_jax import federated


def compiled_bytes(fn, args) -> tuple[float, float]:
  """(total bytes XLA needs for the call, compile seconds)."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  secs = time.perf_counter() - t0
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return float(total), secs


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--budget_gib", type=float, default=24.0)
  parser.add_argument("--probe", default="64,256,1024")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--chunk", type=int, default=64)
  parser.add_argument("--big", type=int, default=10000)
  parser.add_argument("--big_steps", type=int, default=1)
  parser.add_argument("--check_k", type=int, default=1024,
                      help="run vmap at min(0.9 * largest K, this) to check the estimate")
  parser.add_argument("--no_write", action="store_true")
  args = parser.parse_args()
  eng = common.make_engine(4096)
  base_rss = common.peak_rss_mib()
  budget = args.budget_gib * 2**30 - base_rss * 2**20  # What this process already holds.

  def args_for(k, steps=args.steps):
    idx, mask = common.schedules(k, steps, args.batch, eng.num_pairs, seed=k)
    return (eng.trainable, eng.backbone, eng.data,
            federated.Batches(jnp.asarray(idx), jnp.asarray(mask)))

  rows, fits = [], {}
  for backend in ("vmap", "chunked"):
    fn = federated.make_round_fn(eng.client_update, backend, args.chunk)
    ks = [int(k) for k in args.probe.split(",")]
    sizes = [compiled_bytes(fn, args_for(k))[0] for k in ks]
    slope, intercept = np.polyfit(ks, sizes, 1)
    k_max = int((budget - intercept) / slope)
    fits[backend] = (slope, intercept, k_max)
    for k, size in zip(ks, sizes):
      rows.append([backend, k, size / 2**20, "compiled"])
    rows.append([backend, k_max, (slope * k_max + intercept) / 2**20,
                 f"largest K under {args.budget_gib:g} GiB (linear fit: "
                 f"{slope / 2**20:.3g} MiB per client)"])
    print(rows[-1], flush=True)

  # The big chunked round: AOT compile, then one timed round.
  fn = federated.make_round_fn(eng.client_update, "chunked", args.chunk)
  big_args = args_for(args.big, args.big_steps)
  t0 = time.perf_counter()
  compiled = fn.lower(*big_args).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  deltas, metrics = common.block(compiled(*big_args))
  round_s = time.perf_counter() - t0
  assert np.all(np.isfinite(np.asarray(metrics["loss"]))), "non-finite loss"
  pairs = args.big * args.big_steps * args.batch
  big_row = [args.big, args.chunk, args.big_steps, args.batch, compile_s, round_s,
             pairs / round_s, common.peak_rss_mib()]
  del big_args, deltas, metrics, compiled
  print(big_row, flush=True)

  # Check the fit by running a vmapped round at a K that is polite to a shared machine: its RSS
  # growth should match the compiled estimate.
  k_check = min(int(0.9 * fits["vmap"][2]), args.check_k)
  fn = federated.make_round_fn(eng.client_update, "vmap")
  check_args = args_for(k_check)
  size, _ = compiled_bytes(fn, check_args)
  t0 = time.perf_counter()
  common.block(fn(*check_args))
  rows.append(["vmap", k_check, size / 2**20,
               f"ran: {time.perf_counter() - t0:.1f} s incl. compile; process peak RSS "
               f"{common.peak_rss_mib():.0f} MiB (started at {base_rss:.0f})"])
  print(rows[-1], flush=True)
  del check_args

  fit_table = common.markdown_table(["backend", "K", "XLA memory MiB", "note"], rows)
  big_table = common.markdown_table(
      ["K", "chunk", "local steps", "batch", "compile s", "round s", "pairs/s",
       "process peak RSS MiB"], [big_row])
  body = f"""Command: `{common.command()}`

Machine: {common.machine()}. Tiny default architecture, LoRA rank 8 on q/v, batch
{args.batch}, {args.steps} local steps for the fit. "XLA memory" = arguments + outputs +
temporaries of the compiled round (`compiled.memory_analysis()`); it is linear in K, and the
largest K is where the fit meets the {args.budget_gib:g} GiB budget less this process's own
{base_rss:.0f} MiB. vmap keeps every client's activations alive at once; chunked only a chunk's,
so its per-client cost is the schedule, the delta and its metrics (~{fits["chunked"][0] / 2**10:.0f}
KiB per client for {sum(x.size for x in jax.tree.leaves(eng.trainable))} LoRA parameters).

{fit_table}

{args.big} clients, chunked, in one process (one round after an ahead-of-time compile):

{big_table}
"""
  if not args.no_write:
    common.write_section("Scale", body)


if __name__ == "__main__":
  main()
