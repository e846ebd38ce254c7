"""GSD at scale: the subspace step batched over modules (vmap) with K retained clients, against
the time of a federated round of the same K clients.

Shapes are those of the embedded default: LoRA rank 8 on q/v of 4 + 4 layers of width 128, i.e.
16 modules of d = 2 · 128 · 8 = 2048 parameters; M = 32 kept updates per client (history_size);
rank cap 8. Methods: `gram` (eigh of the small Gram matrix), `qr`, `svd` (`jnp.linalg.svd`) and
a numpy loop (`np.linalg.svd` per client and module, the typical research-code route).

  python benchmarks/bench_gsd.py --clients 8,64,512
"""
from __future__ import annotations

import os

# LAPACK (eigh, svd, qr, Cholesky, triangular solves) comes from scipy's OpenBLAS, whose worker
# threads fight XLA's own pool: on 2 cores a batched 512 x 512 eigh ran ~50x slower and a
# batched QR deadlocked. One OpenBLAS thread; must be set before numpy/jax are imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from ease_jax import federated
from ease_jax import subspace

MODULES = 16
D = 2 * 128 * common.LORA_RANK
HISTORY = 32
MAX_RANK = 8
ENERGY = 0.9
THRESHOLD = math.radians(30)


def make_updates(num_clients: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Low-rank-plus-noise updates: forget [modules, M, d], retain [modules, K, M, d]."""
  rng = np.random.default_rng(seed)
  shared = rng.normal(size=(MODULES, 4, D)).astype(np.float32)

  def sample():
    own = rng.normal(size=(MODULES, 4, D)).astype(np.float32)
    coef = rng.normal(size=(MODULES, HISTORY, 8)).astype(np.float32)
    x = np.einsum("nmr,nrd->nmd", coef, np.concatenate([shared, own], axis=1))
    return x + 1e-3 * rng.normal(size=x.shape).astype(np.float32)

  forget = sample()  # [modules, M, d]
  retain = np.empty((MODULES, num_clients, HISTORY, D), np.float32)
  for c in range(num_clients):  # One client at a time keeps the temporaries small.
    retain[:, c] = sample()
  return forget, retain


def gsd_fn(method: str):
  one = lambda f, r: subspace.gsd(f, r, ENERGY, MAX_RANK, THRESHOLD, method=method)
  return jax.jit(jax.vmap(one))  # Over modules.


def numpy_gsd(forget: np.ndarray, retain: np.ndarray) -> list[np.ndarray]:
  """The same pipeline as a numpy loop over modules and clients (thin SVDs, no batching)."""

  def basis(g):  # g [m, d] -> [d, r]
    u, s, _ = np.linalg.svd(g.T, full_matrices=False)
    energy = np.cumsum(s**2) - s**2 < ENERGY * np.sum(s**2)
    r = min(MAX_RANK, int(np.sum(energy & (s > 1e-5 * s[0]))))
    return u[:, :r]

  out = []
  for f, ret in zip(forget, retain):
    u_f = basis(f)
    union = np.concatenate([basis(g) for g in ret], axis=1)
    u_r, s, _ = np.linalg.svd(union, full_matrices=False)
    keep = np.cumsum(s**2) - s**2 < ENERGY * np.sum(s**2)
    u_r = u_r[:, :int(np.sum(keep))]
    y, cos, _ = np.linalg.svd(u_f.T @ u_r)  # y [p, p], cos [min(p, q)]
    cos = np.pad(np.clip(cos, 0, 1), (0, u_f.shape[1] - len(cos)))
    x = u_f @ y
    res = x - u_r @ (u_r.T @ x)
    sin = np.linalg.norm(res, axis=0)
    sel = np.arctan2(sin, cos) >= THRESHOLD
    q, _ = np.linalg.qr(res[:, sel] / sin[sel])
    out.append(q)
  return out


def round_time(num_clients: int, repeats: int) -> float:
  """Median time of one vmapped round (batch 4, 2 local steps) of the same K clients."""
  eng = common.make_engine(4096)
  fn = federated.make_round_fn(eng.client_update, "vmap")
  idx, mask = common.schedules(num_clients, 2, 4, eng.num_pairs)
  args = (eng.trainable, eng.backbone, eng.data,
            federated.Batches(jnp.asarray(idx), jnp.asarray(mask)))
  t, _ = common.time_fn(lambda: fn(*args), repeats)
  return t


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clients", default="8,64,512")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--methods", default="gram,svd",
                      help="'qr' is off by default: vmapped over modules and clients it hung "
                           "(0 %% CPU, futex wait) on XLA CPU here")
  parser.add_argument("--numpy_max_clients", type=int, default=64,
                      help="the numpy loop is timed up to this K (it is linear in K)")
  parser.add_argument("--no_write", action="store_true")
  args = parser.parse_args()
  rows = []
  for k in [int(x) for x in args.clients.split(",")]:
    forget, retain = make_updates(k, seed=k)
    jf, jr = jnp.asarray(forget), jnp.asarray(retain)
    rt = round_time(k, args.repeats)
    times = {}
    for method in args.methods.split(","):
      fn = gsd_fn(method)
      t, first = common.time_fn(lambda: fn(jf, jr), args.repeats)
      times[method] = (t, first)
    if k <= args.numpy_max_clients:
      t0 = time.perf_counter()
      numpy_gsd(forget, retain)
      times["numpy loop"] = (time.perf_counter() - t0, float("nan"))
    for name, (t, first) in times.items():
      rows.append([k, name, t, 100 * t / rt, rt, first])
      print(common.markdown_table([], [rows[-1]]).splitlines()[-1], flush=True)
    # Written after each K, so a slow large K still leaves the smaller ones on record.
    header = ["K retained", "GSD method", "GSD s (median)", "% of a round", "round s (vmap)",
              "first call s"]
    table = common.markdown_table(header, rows)
    print(table)
    body = f"""Command: `{common.command()}`

Machine: {common.machine()}. GSD of all {MODULES} modules at once (`jax.vmap` of
`subspace.gsd` over modules, one jit) with K retained clients of M = {HISTORY} updates each,
d = {D} per module, rank cap {MAX_RANK}, energy {ENERGY}, threshold 30°, against one vmapped
round of the same K clients (batch 4, 2 local steps). The numpy loop (`np.linalg.svd` per module
and client, single call, no warm-up needed) is timed up to K = {args.numpy_max_clients}.
Medians of {args.repeats} after a warm-up; "first call" includes compilation. `qr` is left out:
vmapped over modules × clients it hung (no CPU use, futex wait) in XLA CPU on this machine. GSD runs once per
unlearning request, not every round, so "% of a round" is a conservative bound.

{table}
"""
    if not args.no_write:
      common.write_section("GSD", body)


if __name__ == "__main__":
  main()
