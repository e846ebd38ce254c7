"""Process-level XLA settings that the binaries apply before JAX starts (no JAX import here)."""
from __future__ import annotations

import os
from typing import Any

NO_CONCURRENCY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def avoid_cpu_hang() -> None:
  """Turns off XLA:CPU's concurrency-optimized scheduler, unless `XLA_FLAGS` already sets it.

  With jax 0.10.2 on a 2-core CPU, the vmapped GSD jit (`jax.vmap(subspace.gsd)` over 16
  modules, at the shapes of a sample request on the embedded default) sometimes never returns
  from `block_until_ready`: every XLA worker thread is idle and the main thread waits for a
  completion that never comes (a lost wake-up in XLA:CPU's runtime, independent of the data: it
  happens on random inputs too). `benchmarks/bench_cpu_hang.py` measured it in fresh processes:
  17 of 35 runs hung with default flags and 3 of 15 with single-threaded Eigen
  (`--xla_cpu_multi_thread_eigen=false`, a workaround reported for other vmapped programs), but
  none of 65 with this scheduler off (see BENCHMARKS.md, "CPU hang of the batched GSD"). The
  scheduler only orders independent operations to run side by side; GSD outputs and a short
  federated run were bitwise the same with it on and off.

  Must run before JAX creates its CPU client (the first computation), so the binaries call it
  before importing the library; it has no effect on GPU/TPU.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {NO_CONCURRENCY_SCHEDULER}".strip()


HOST_DEVICE_COUNT = "xla_force_host_platform_device_count"
# Each operation on one thread (XLA:CPU's Eigen contractions otherwise use a pool of one thread
# per core, shared by every device).
SINGLE_THREADED_OPS = (("xla_cpu_multi_thread_eigen", False),)


def split_cpu_compiler_options(platform: str, devices: int) -> tuple[tuple[str, bool], ...]:
  """XLA options for a computation split over `devices` devices of `platform` (`jax.jit`'s
  `compiler_options`, as pairs): on several CPU devices, one per core
  (`one_cpu_device_per_core`), each device's operations single-threaded, since the devices
  already keep the cores busy; none otherwise (a single run keeps the multi-threaded
  operations). BENCHMARKS.md, "Population" (session 27), measured it.
  """
  return SINGLE_THREADED_OPS if platform == "cpu" and devices > 1 else ()


def jit_compiler_options(options: tuple[tuple[str, Any], ...]) -> dict[str, Any] | None:
  """`jax.jit`'s `compiler_options` from (name, value) pairs (which stay hashable in frozen
  options and cache keys); None for none, jit's default."""
  return dict(options) or None


def one_cpu_device_per_core(cores: int | None = None) -> None:
  """Splits the host CPU into one XLA device per core, unless `XLA_FLAGS` already sets a count.

  A single run stays on the first device (JAX's default), but a population of runs (the audit's
  seed axis, `sharding.split_leading_axis`) then runs its members on every device at once. On the
  2-core CPU one run keeps only ~1.6 cores busy (XLA:CPU runs one operation at a time and not
  every operation is multi-threaded); two devices each running half the members keep ~1.9 busy,
  which brought 16 runs batched (chunks of 8) down to 0.64-0.74x the time of the same runs one
  after another, depending on the processor, against 1.0x on one device, and to 0.68x on an AMD
  EPYC with each device's operations single-threaded (`split_cpu_compiler_options`;
  BENCHMARKS.md, "Population").
  No effect on the default GPU/TPU backend. Like `avoid_cpu_hang`, it must run before JAX
  creates its CPU client.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if HOST_DEVICE_COUNT not in flags:
    count = max(1, cores or len(os.sched_getaffinity(0)))
    os.environ["XLA_FLAGS"] = f"{flags} --{HOST_DEVICE_COUNT}={count}".strip()
