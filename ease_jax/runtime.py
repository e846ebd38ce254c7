"""Process-level XLA settings that the binaries apply before JAX starts (no JAX import here)."""
from __future__ import annotations

import os

SINGLE_THREADED_EIGEN = "--xla_cpu_multi_thread_eigen=false"


def avoid_cpu_eigen_hang() -> None:
  """Makes XLA:CPU run Eigen single-threaded, unless `XLA_FLAGS` already sets that option.

  XLA:CPU's multi-threaded Eigen pool can wedge on some vmapped graphs: with jax 0.10.2 on a
  2-core CPU, the batched GSD of a sample-unlearning request on the embedded default (every client
  a holder) never returned from `block_until_ready`, in two runs out of two, at 0% CPU; with this
  flag it finishes. The same workaround is reported for other vmapped JAX programs on CPU. It
  must run before JAX creates its CPU client (the first computation), so the binaries call it
  before importing the library; it has no effect on GPU/TPU.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREADED_EIGEN}".strip()
