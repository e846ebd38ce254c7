"""How a group of clients' local updates run: one `jit` over all of them, chunks, a loop, devices.

`make_round_fn(client_update, backend, chunk_size)` turns one client's update
(`local.LocalSteps`: `(params, backbone, data, batches [S, B], context) -> (delta, metrics)`) into
`(params, backbone, data, batches [C, S, B], context) -> (deltas [C, ...], metrics [C])`. The
frozen backbone, the start point, the data and the context are shared (`in_axes=None`).

* `vmap`: one jit over all clients; in unmerged-LoRA mode the frozen matmuls `x W` are batched
  across clients.
* `chunked`: `lax.map` over chunks of `chunk_size` vmapped clients: memory bounded by a chunk.
* `sequential`: a Python loop of the same jitted single-client update, skipping each client's
  padded steps (the reference the others must equal; on a CPU the fastest engine for clients of
  unequal sizes).
* `sharded`: clients split over all devices with `jax.shard_map` (`ease_jax.sharding`).
* `auto`: `resolve_backend` picks from the platform, the number of clients and how much of
  their padded plan is real (BENCHMARKS.md).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ease_jax import runtime

PyTree = Any
BACKENDS = ("vmap", "chunked", "sequential", "sharded")
AUTO = "auto"
# Measured on the 2-core CPU (BENCHMARKS.md, Throughput / Engine / Scale): vmap is fastest for a
# round of up to 16 clients; beyond that chunks of 8 vmapped clients (1.75x the loop at K = 64,
# 1.7x at K = 512, memory bounded by the chunk) beat one vmap over all of them.
CPU_VMAP_MAX_CLIENTS = 16
CPU_CHUNK = 8
# A client step at batch 32 costs ~1.2x more alone than inside a vmap of 8 (41 vs 34 ms, the
# embedded default), so skipping padded steps one client at a time wins below ~85% real steps
# (the default Dirichlet(0.5) partition has 39%: sequential 2.3 s a round against vmap's 4.3 s).
CPU_MIN_UTILIZATION = 0.85
# On an H200 (BENCHMARKS.md, Accelerator, session 17) vmap beat chunks of 8 by 2x for the tiny
# model at K = 512 (15.9 GiB). The limit is not memory-aware: CLIP B/32 at batch 32 takes 1.39
# GiB per vmapped client, so ~80 clients fill that device; larger models need `chunked` with a
# `fed.chunk_size` that fits (XLA reports RESOURCE_EXHAUSTED otherwise).
ACCELERATOR_VMAP_MAX_CLIENTS = 512
ACCELERATOR_CHUNK = 256


def resolve_backend(backend: str, chunk_size: int, num_clients: int,
                    platform: str | None = None, utilization: float = 1.0
                    ) -> tuple[str, int]:
  """`(backend, chunk_size)` to run, resolving `auto` for `num_clients` clients per round whose
  padded local steps are `utilization` real (clients of unequal sizes are padded to the largest:
  the batched backends compute the padding, the sequential one skips it)."""
  if backend != AUTO:
    if backend not in BACKENDS:
      raise ValueError(f"Unknown federated backend {backend!r}; expected one of "
                       f"{BACKENDS + (AUTO,)}.")
    return backend, chunk_size
  platform = platform or jax.default_backend()
  if platform == "cpu" and utilization < CPU_MIN_UTILIZATION:
    return "sequential", 0
  limit, chunk = ((CPU_VMAP_MAX_CLIENTS, CPU_CHUNK) if platform == "cpu"
                  else (ACCELERATOR_VMAP_MAX_CLIENTS, ACCELERATOR_CHUNK))
  if num_clients <= limit:
    return "vmap", 0
  return "chunked", chunk_size or chunk


def make_round_fn(client_update: Callable, backend: str = "vmap", chunk_size: int = 0,
                  compiler_options: tuple[tuple[str, Any], ...] = ()
                  ) -> Callable[..., tuple[PyTree, dict[str, jax.Array]]]:
  """All given clients' local updates (see the module docstring); `compiler_options`: XLA
  options of the computation it compiles, as `(name, value)` pairs (`jax.jit`'s; a jit with
  options cannot be traced inside another jit)."""
  if backend not in BACKENDS:
    raise ValueError(f"Unknown federated backend {backend!r}; expected one of {BACKENDS} "
                     "(resolve 'auto' with resolve_backend first).")
  if backend == "sharded":
    from ease_jax import sharding  # pylint: disable=g-import-not-at-top
    return sharding.make_sharded_round_fn(client_update, chunk_size=chunk_size,
                                          compiler_options=compiler_options)
  jit = functools.partial(jax.jit, compiler_options=runtime.jit_compiler_options(compiler_options))
  if backend == "vmap":
    per_client = jax.vmap(client_update, in_axes=(None, None, None, 0, None))

    @jit
    def vmapped(params, backbone, data, batches, context=None):
      return per_client(params, backbone, data, batches, context)

    return vmapped
  if backend == "chunked":
    if chunk_size < 1:
      raise ValueError(f"backend='chunked' needs chunk_size >= 1, got {chunk_size}.")

    @jit
    def chunked(params, backbone, data, batches, context=None):
      fn = lambda b: client_update(params, backbone, data, b, context)
      return jax.lax.map(fn, batches, batch_size=chunk_size)

    return chunked

  # One client at a time: skip its padded steps (it then costs only its real ones).
  single = jit(client_update.skipping() if hasattr(client_update, "skipping")
                   else client_update)

  def sequential(params, backbone, data, batches, context=None):
    num = jax.tree.leaves(batches)[0].shape[0]
    outs = [single(params, backbone, data, jax.tree.map(lambda x, c=c: x[c], batches), context)
            for c in range(num)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return sequential
