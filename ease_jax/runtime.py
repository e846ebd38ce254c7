"""Process-level XLA settings that the binaries apply before JAX starts (no JAX import here)."""
from __future__ import annotations

import os

SINGLE_THREADED_EIGEN = "--xla_cpu_multi_thread_eigen=false"


def avoid_cpu_eigen_hang() -> None:
  """Makes XLA:CPU run Eigen single-threaded, unless `XLA_FLAGS` already sets that option.

  With jax 0.10.2 on a 2-core CPU, the batched GSD jit of sample and concept requests on the
  embedded default (every client a holder) sometimes never returns from `block_until_ready`
  (0% CPU: a deadlock inside XLA:CPU). Without this flag a sample request hung 2 times out of 2;
  with it 4 such GSD runs finished and 2 still hung, so it makes the hang rarer but does not
  remove it (the cause is not found; see BENCHMARKS.md). The same flag is reported to avoid
  XLA:CPU Eigen-pool hangs in other vmapped programs. It must run before JAX creates its CPU
  client (the first computation), so the binaries call it before importing the library; it has
  no effect on GPU/TPU.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREADED_EIGEN}".strip()
