"""Sharding over a device mesh (one host or many): a round's clients, or a population's members.

Members (`split_leading_axis`): a population of runs (`federated.vmapped` over the seed axis) is
independent along that axis, so placing the stacked start points split over the devices is
enough; jit partitions every round along it (`unlearning/population.py`).

Clients: the clients of a round are independent until aggregation, so the round is embarrassingly
parallel along the client axis: `make_sharded_round_fn` pads the `[clients, steps, batch]` schedules
to a multiple of the device count with all-masked "ghost" clients (their update is exactly zero, see
`federated.local_steps`), splits them over the mesh axis with `jax.shard_map` (`P("clients")`), and
runs the vmapped (or chunked) client update on each device's block. The frozen backbone, the
trainable start point, the dataset and the context are replicated (`P()`), so no collective runs
inside the round; aggregation (`federated.fedavg`) reduces over the sharded client axis afterwards,
which XLA turns into one all-reduce. Results equal the single-device `vmap` backend up to float
reassociation (tests/test_sharding.py).

Selected with `fed.backend="sharded"` (`fed.chunk_size > 0` chunks each device's block).

One host, several devices: nothing to do (`client_mesh()` uses `jax.devices()`). To try it on a
CPU, start Python with `XLA_FLAGS=--xla_force_host_platform_device_count=8`.

Multi-host (several processes, one per host, e.g. a GPU/TPU pod or a CPU cluster):

    import jax
    jax.distributed.initialize()  # coordinator address/process id from the cluster env or args
    mesh = sharding.client_mesh()  # all devices of all processes: jax.devices()
    round_fn = sharding.make_sharded_round_fn(client_update, mesh)

Every process runs the same program (SPMD). `build_client_schedules` is a pure function of
(seed, round, client ids), so each process can build the full `[C, S, B]` schedules and pass them
as numpy arrays: jit treats identical host values as replicated and each device keeps its block.
To avoid materialising every client's plan on every host, build only this process's clients and
assemble the global array with
`jax.make_array_from_process_local_data(NamedSharding(mesh, P("clients")), local_block)`.
Backbone and dataset must be the same on every process (load the same checkpoint; replicate with
`replicate(tree, mesh)`). Outputs are global arrays sharded over clients: aggregate them in jit
(`fedavg`) and fetch to the host only what is fully replicated, or use
`jax.experimental.multihost_utils.process_allgather` (e.g. for the update history).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ease_jax import runtime

PyTree = Any
CLIENT_AXIS = "clients"


def client_mesh(devices: Sequence[jax.Device] | None = None,
                axis_name: str = CLIENT_AXIS) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process) named `axis_name`."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis_name,))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Puts `tree` on every device of `mesh` (a no-op for leaves already replicated there)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def padded_size(num_clients: int, num_devices: int) -> int:
  """Smallest multiple of `num_devices` that is >= `num_clients` (and >= `num_devices`)."""
  return max(1, -(-num_clients // num_devices)) * num_devices


def make_sharded_round_fn(client_update: Callable, mesh: Mesh | None = None,
                          chunk_size: int = 0, axis_name: str | None = None,
                          compiler_options: tuple[tuple[str, Any], ...] = ()
                          ) -> Callable[..., tuple[PyTree, dict[str, jax.Array]]]:
  """The round function of `federated.make_round_fn`, with clients split over `mesh`.

  `(trainable, backbone, data, batches [C, S, B], context=None) -> (deltas [C, ...],
  metrics [C])` for any C: the client axis is padded to a multiple of the mesh size with ghost
  clients (masks all False, so their delta is exactly zero) and sliced back afterwards. The
  padded size is static, so one compilation serves every round of the same C.

  Args:
    client_update: one client's update, a `federated.local_steps`.
    mesh: a mesh whose `axis_name` axis carries clients (default: `client_mesh()`).
    chunk_size: if > 0, each device runs its block with `lax.map(batch_size=chunk_size)`
      (memory bounded by `chunk_size` clients per device); 0 vmaps the whole block.
    axis_name: the mesh axis of clients (default: the mesh's only / first axis).
    compiler_options: XLA options of the round's computation (`federated.make_round_fn`).
  """
  mesh = client_mesh() if mesh is None else mesh
  axis_name = axis_name or mesh.axis_names[0]
  num_devices = mesh.shape[axis_name]
  clients = P(axis_name)

  def per_device(trainable, backbone, data, batches, context):
    # This device's block of clients; everything else is a local replica.
    if chunk_size > 0:
      fn = lambda b: client_update(trainable, backbone, data, b, context)
      return jax.lax.map(fn, batches, batch_size=chunk_size)
    return jax.vmap(client_update, in_axes=(None, None, None, 0, None))(
        trainable, backbone, data, batches, context)

  # No collectives inside: each block is independent. check_vma=False because the scan carry
  # starts from the replicated `trainable` and becomes per-client (device-varying) after a step.
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), clients, P()),
                          out_specs=clients, check_vma=False)

  @functools.partial(jax.jit, compiler_options=runtime.jit_compiler_options(compiler_options))
  def round_fn(trainable, backbone, data, batches, context=None):
    num_clients = jax.tree.leaves(batches)[0].shape[0]
    pad = padded_size(num_clients, num_devices) - num_clients
    if pad:  # Zero indices and False masks: ghost clients train on nothing.
      batches = jax.tree.map(
          lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)), batches)
    out = sharded(trainable, backbone, data, batches, context)
    return jax.tree.map(lambda x: x[:num_clients], out)

  replicated = NamedSharding(mesh, P())

  def run(trainable, backbone, data, batches, context=None):
    # Replicated once per call (a no-op when already placed), so the frozen backbone and the
    # dataset are not re-transferred by jit for every device.
    trainable, backbone, data, context = jax.device_put((trainable, backbone, data, context),
                                                        replicated)
    return round_fn(trainable, backbone, data, batches, context)

  run.mesh = mesh
  return run


def split_count(size: int, devices: Sequence[jax.Device] | None = None) -> int:
  """Over how many of `devices` (default: this process's) `split_leading_axis` splits a leading
  axis of `size`: the largest number that divides it."""
  devices = jax.local_devices() if devices is None else devices
  return max(d for d in range(1, len(devices) + 1) if size % d == 0)


def split_leading_axis(tree: PyTree, devices: Sequence[jax.Device] | None = None,
                       axis_name: str = "members") -> PyTree:
  """`tree` (leaves `[N, ...]`) with its leading axis split over the largest number of `devices`
  (default: this process's) that divides N (N = 9 on 4 devices: over 3), so a computation
  vmapped over that axis (a population's seed axis) runs each device's block at once; on one
  device, or where only 1 divides, `tree` as it is.

  Nothing shared needs placing: jit partitions the vmapped computation along the split axis (the
  shared backbone and data are replicated) and its outputs stay split the same way. Split the
  whole state that the computation carries from call to call, though: a leaf left unplaced
  comes back placed, and the next call compiles again (`population.train` splits the state
  `init` returns, round counter included).
  """
  devices = list(jax.local_devices() if devices is None else devices)
  count = split_count(jax.tree.leaves(tree)[0].shape[0], devices)
  if count == 1:
    return tree
  mesh = Mesh(np.asarray(devices[:count]), (axis_name,))
  return jax.device_put(tree, NamedSharding(mesh, P(axis_name)))
