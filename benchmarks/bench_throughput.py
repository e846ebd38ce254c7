"""Simulated-client throughput: image–text pairs per second over all clients of a round.

For each K: the vmapped engine (unmerged and merged LoRA), the sequential loop of the same
jitted single-client update, the chunked engine, and the PyTorch reference (transformers
`CLIPModel` + LoRA on q/v, clients one after another), all in this one process, side by side.
Also the model FLOPs utilisation of the client step against this machine's measured float32
matmul peak.

  python benchmarks/bench_throughput.py --clients 8,64,512 --batch 4 --steps 2
"""
from __future__ import annotations

import os

# LAPACK (eigh, svd, qr, Cholesky, triangular solves) comes from scipy's OpenBLAS, whose worker
# threads fight XLA's own pool: on 2 cores a batched 512 x 512 eigh ran ~50x slower and a
# batched QR deadlocked. One OpenBLAS thread; must be set before numpy/jax are imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import time

# Idle OpenMP threads of the PyTorch reference must not spin (the default spins ~200 ms after
# each parallel region): on 2 shared cores that slows PyTorch's own barriers ~10x and steals the
# cores from whichever engine is timed next. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

import jax
import jax.numpy as jnp
import optax

import common
from ease_jax import federated


def matmul_peak_gflops(n: int = 2048, iters: int = 8, repeats: int = 5) -> float:
  """Measured float32 matmul rate of this machine (a jitted loop of n x n dots), GFLOP/s."""

  @jax.jit
  def loop(a, b):
    return jax.lax.fori_loop(0, iters, lambda _, x: (x @ b) * 1e-3, a)

  a = jnp.ones((n, n), jnp.float32)
  t, _ = common.time_fn(lambda: loop(a, a), repeats)
  return 2 * n**3 * iters / t / 1e9


def step_flops(eng: common.Engine, batch: int) -> float:
  """XLA's FLOP count of one local step of one client (loss, gradient, Adam)."""
  loss_fn = federated.clip_objective(eng.model)
  opt = optax.adam(common.CLIENT_LR)

  def step(params, opt_state, idx, mask):
    batch_ = dict(eng.data.batch(idx), mask=mask)
    grads = jax.grad(loss_fn)(params, eng.backbone, batch_)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  cost = jax.jit(step).lower(eng.trainable, opt.init(eng.trainable),
                             jnp.zeros(batch, jnp.int32), jnp.ones(batch, bool)
                             ).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clients", default="8,64,512")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=2, help="local steps per client")
  parser.add_argument("--chunk", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--torch_clients", type=int, default=16,
                      help="PyTorch trains clients one after another, so its pairs/s does not "
                           "depend on K: time the first this-many clients of each round")
  parser.add_argument("--no_write", action="store_true")
  args = parser.parse_args()
  ks = [int(k) for k in args.clients.split(",")]

  pool = 4096
  engines = {mode: common.make_engine(pool, mode) for mode in ("unmerged", "merged")}
  eng = engines["unmerged"]
  torch_ref = None
  if not args.no_torch:
    import torch_reference  # pylint: disable=g-import-not-at-top
    torch_ref = torch_reference.TorchReference(pool)

  peak = matmul_peak_gflops()
  flops = step_flops(eng, args.batch)
  print(f"matmul peak {peak:.1f} GFLOP/s; client step {flops / 1e6:.0f} MFLOP", flush=True)

  rows, results = [], {}
  for k in ks:
    idx, mask = common.schedules(k, args.steps, args.batch, pool, seed=k)
    jbatches = federated.Batches(jnp.asarray(idx), jnp.asarray(mask))
    pairs = k * args.steps * args.batch
    fns = {
        "vmap": (engines["unmerged"], federated.make_round_fn(eng.client_update, "vmap")),
        "vmap (merged LoRA)": (engines["merged"], federated.make_round_fn(
            engines["merged"].client_update, "vmap")),
        "sequential": (eng, federated.make_round_fn(eng.client_update, "sequential")),
    }
    for chunk in sorted({8, args.chunk}):
      if k > chunk:
        fns[f"chunked ({chunk})"] = (eng, federated.make_round_fn(
            eng.client_update, "chunked", chunk))
    compile_s, times = {}, {name: [] for name in fns}
    for name, (e, fn) in fns.items():  # Warm-up / compile.
      t0 = time.perf_counter()
      common.block(fn(e.trainable, e.backbone, e.data, jbatches))
      compile_s[name] = time.perf_counter() - t0
    torch_threads = () if torch_ref is None else (1, 2)
    for n in torch_threads:
      torch_ref.set_threads(n)
      torch_ref.round(idx[:1])
      times[f"PyTorch reference ({n} thr)"] = []
    for _ in range(args.repeats):  # Interleaved, so load changes hit every variant alike.
      for name, (e, fn) in fns.items():
        t0 = time.perf_counter()
        common.block(fn(e.trainable, e.backbone, e.data, jbatches))
        times[name].append(time.perf_counter() - t0)
      for n in torch_threads:
        torch_ref.set_threads(n)
        sub = idx[:args.torch_clients]
        t0 = time.perf_counter()
        torch_ref.round(sub)
        times[f"PyTorch reference ({n} thr)"].append(
            (time.perf_counter() - t0) * k / len(sub))  # Per-client cost × K.
    med = {name: statistics.median(ts) for name, ts in times.items()}
    torch_meds = [t for name, t in med.items() if name.startswith("PyTorch")]
    if torch_meds:  # The faster thread setting is the reference (the kinder one to PyTorch).
      med["PyTorch reference"] = min(torch_meds)
    results[k] = med
    for name, t in med.items():
      if name == "PyTorch reference":
        continue
      rate = pairs / t
      rows.append([k, name, t, rate, med["sequential"] / t,
                   med.get("PyTorch reference", float("nan")) / t,
                   100 * flops * rate / args.batch / (peak * 1e9),
                   compile_s.get(name, float("nan"))])
      print(common.markdown_table([], [rows[-1]]).splitlines()[-1], flush=True)

  header = ["K", "engine", "round s (median)", "pairs/s", "× sequential", "× PyTorch",
            "MFU %", "first call s"]
  table = common.markdown_table(header, rows)
  print(table)
  big = max(ks)
  verdict = []
  if big in results:
    r = results[big]
    vs_seq = r["sequential"] / r["vmap"]
    best = min((n for n in r if n.startswith(("vmap", "chunked"))), key=r.get)
    line = (f"K = {big}: vmap is {vs_seq:.2f}× the sequential loop (target ≥ 3×); the best "
            f"batched engine, {best}, is {r['sequential'] / r[best]:.2f}×")
    if "PyTorch reference" in r:
      line += (f". Against the PyTorch reference (target ≥ 5×): vmap "
               f"{r['PyTorch reference'] / r['vmap']:.2f}×, {best} "
               f"{r['PyTorch reference'] / r[best]:.2f}×, sequential "
               f"{r['PyTorch reference'] / r['sequential']:.2f}×")
    verdict.append(line + ".")
  body = f"""Command: `{common.command()}`

Machine: {common.machine()}. Measured float32 matmul peak (2048² `jnp.dot` loop):
{peak:.1f} GFLOP/s. Client step (loss + gradient + Adam, batch {args.batch}): {flops / 1e6:.0f}
MFLOP by XLA's cost analysis. {args.steps} local steps of batch {args.batch} per client; pairs/s =
K · steps · batch / round time; medians of {args.repeats} interleaved repeats after a warm-up
call ("first call" includes compilation). MFU = achieved model FLOP/s / measured matmul peak.
The PyTorch reference trains clients one after another, so it is timed on the first
{args.torch_clients} clients of each round and scaled to K; it runs with 1 and with 2 intra-op
threads and "× PyTorch" divides by the faster of the two (on this shared, loaded 2-core machine
2 OpenMP threads were slower than 1; OpenMP runs with `OMP_WAIT_POLICY=PASSIVE`).

{table}

{" ".join(verdict)}
"""
  if not args.no_write:
    common.write_section("Throughput", body)


if __name__ == "__main__":
  main()
