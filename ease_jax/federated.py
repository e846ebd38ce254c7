"""Federated averaging over simulated clients, as pure functions.

The shape of the engine, FedJAX-style:

* `build_client_schedules` (host, numpy) turns each sampled client's examples into a fixed-shape
  plan of local steps: text indices `[clients, steps, batch]` and a mask. Every client is padded
  to the same number of steps, so one compiled round serves every round and every client mix.
* `make_client_update` returns the pure local-training function of one client: E local epochs of
  an optax optimizer on the trainable (LoRA) tree only; the frozen backbone is an argument that is
  never differentiated.
* `make_round_fn` runs that update for all sampled clients at once (`vmap`, or `lax.map` in
  chunks when they do not fit in memory) inside one `jit`, the backbone and data with
  `in_axes=None`; `sequential` loops over clients with the same jitted single-client function;
  `sharded` splits the client axis over a device mesh (`ease_jax.sharding`).
* `fedavg` aggregates with sample-count weights and applies a server optimizer (plain FedAvg is
  SGD with learning rate 1 on the pseudo-gradient −Δ).
* `UpdateHistory` keeps each client's last M transmitted updates (EASE's subspace step and
  FedEraser read it).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ease_jax import losses
from ease_jax.data import dataset as dataset_lib
from ease_jax.model import CLIP

PyTree = Any
BACKENDS = ("vmap", "chunked", "sequential", "sharded")


@flax.struct.dataclass
class DeviceData:
  """A caption dataset's arrays, put on device once and indexed by text id inside jit."""
  images: jax.Array          # [num_images, H, W, 3] uint8
  input_ids: jax.Array       # [num_texts, L] int32
  attention_mask: jax.Array  # [num_texts, L] int32
  text_image: jax.Array      # [num_texts] int32

  @classmethod
  def from_dataset(cls, ds: "dataset_lib.CaptionDataset") -> "DeviceData":
    return cls(images=jnp.asarray(ds.images), input_ids=jnp.asarray(ds.input_ids),
               attention_mask=jnp.asarray(ds.attention_mask),
               text_image=jnp.asarray(ds.text_image))

  def batch(self, text_indices: jax.Array) -> dict[str, jax.Array]:
    """text_indices [B] -> pixels [B, H, W, 3] float, input_ids/attention_mask [B, L]."""
    pixels = dataset_lib.normalize_images(self.images[self.text_image[text_indices]])
    return dict(pixels=pixels, input_ids=self.input_ids[text_indices],
                attention_mask=self.attention_mask[text_indices])


class ClientSchedules(NamedTuple):
  """Fixed-shape local-training plans of a group of clients."""
  text_indices: np.ndarray  # [clients, steps, batch] int32 (0 where padded)
  mask: np.ndarray          # [clients, steps, batch] bool
  num_examples: np.ndarray  # [clients] float32, the FedAvg weights before normalisation


def num_local_steps(num_examples: int, batch_size: int, local_epochs: int) -> int:
  return local_epochs * -(-num_examples // batch_size)


def build_client_schedules(client_texts: Sequence[np.ndarray], batch_size: int,
                           local_epochs: int, num_steps: int, seed: int, round_index: int,
                           client_ids: Sequence[int]) -> ClientSchedules:
  """Shuffled local epochs for each client, padded to `num_steps` steps of `batch_size`.

  Args:
    client_texts: per client, the text indices it holds.
    num_steps: the padded step count (≥ every client's own; fixed for the whole run so the round
      function compiles once: use `num_local_steps` of the largest client).
    seed, round_index, client_ids: the shuffle of client c in round r depends on (seed, r, c)
      only, so a resumed run and a differently ordered sample replay the same batches.
  """
  n = len(client_texts)
  indices = np.zeros((n, num_steps, batch_size), np.int32)
  mask = np.zeros((n, num_steps, batch_size), bool)
  for row, (texts, cid) in enumerate(zip(client_texts, client_ids)):
    texts = np.asarray(texts)
    steps = num_local_steps(len(texts), batch_size, local_epochs)
    if steps > num_steps:
      raise ValueError(f"Client {cid} needs {steps} local steps but the schedule has {num_steps}.")
    rng = np.random.default_rng([seed, round_index, int(cid)])
    per_epoch = -(-len(texts) // batch_size)
    for epoch in range(local_epochs):
      order = rng.permutation(texts)
      for b in range(per_epoch):
        chunk = order[b * batch_size:(b + 1) * batch_size]
        step = epoch * per_epoch + b
        indices[row, step, :len(chunk)] = chunk
        mask[row, step, :len(chunk)] = True
  sizes = np.array([len(t) for t in client_texts], np.float32)
  return ClientSchedules(indices, mask, sizes)


def sample_clients(num_clients: int, clients_per_round: int, seed: int,
                   round_index: int) -> np.ndarray:
  """Sorted ids of the clients taking part in `round_index` (all of them if ≥ num_clients)."""
  if clients_per_round <= 0 or clients_per_round >= num_clients:
    return np.arange(num_clients)
  rng = np.random.default_rng([seed, round_index])
  return np.sort(rng.choice(num_clients, clients_per_round, replace=False))


def tree_where(condition: jax.Array, x: PyTree, y: PyTree) -> PyTree:
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), x, y)


# A local objective: (trainable, backbone, batch with `mask` [B]) -> scalar loss.
LossFn = Callable[[PyTree, PyTree, Mapping[str, jax.Array]], jax.Array]


def clip_objective(model: CLIP) -> LossFn:
  """Symmetric InfoNCE of a CLIP batch; `trainable` is the LoRA tree (may hold `logit_scale`)."""

  def loss_fn(trainable, backbone, batch):
    image_emb, text_emb, logit_scale = model(backbone, trainable, batch["pixels"],
                                             batch["input_ids"], batch["attention_mask"])
    return losses.clip_loss(image_emb, text_emb, logit_scale, batch["mask"])

  return loss_fn


def make_client_update(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                       ) -> Callable[..., tuple[PyTree, dict[str, jax.Array]]]:
  """Local training of one client.

  Returns `client_update(trainable, backbone, data, text_indices [S, B], mask [S, B])
  -> (delta, metrics)`: `S` steps of `optimizer` from `trainable` (a fresh optimizer state each
  round, as in FedAvg); steps whose mask is all False leave parameters and optimizer state
  untouched, so padding a client never changes its update. `delta = trained − trainable`.
  """

  def client_update(trainable, backbone, data: DeviceData, text_indices, mask):
    backbone = jax.lax.stop_gradient(backbone)

    def step(carry, xs):
      params, opt_state = carry
      idx, m = xs
      batch = dict(data.batch(idx), mask=m)
      loss, grads = jax.value_and_grad(loss_fn)(params, backbone, batch)
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      active = jnp.any(m)
      return (tree_where(active, new_params, params),
              tree_where(active, new_opt_state, opt_state)), (loss, active)

    (trained, _), (step_losses, active) = jax.lax.scan(
        step, (trainable, optimizer.init(trainable)), (text_indices, mask))
    delta = jax.tree.map(jnp.subtract, trained, trainable)
    num_active = jnp.maximum(jnp.sum(active), 1)
    metrics = dict(loss=jnp.sum(jnp.where(active, step_losses, 0.0)) / num_active,
                   steps=jnp.sum(active))
    return delta, metrics

  return client_update


def make_round_fn(client_update: Callable, backend: str = "vmap", chunk_size: int = 0,
                  ) -> Callable[..., tuple[PyTree, dict[str, jax.Array]]]:
  """All sampled clients' local updates: `(trainable, backbone, data, indices [C, S, B], mask
  [C, S, B]) -> (deltas [C, ...], metrics [C])`.

  backend: `vmap` (one jit over all clients), `chunked` (`lax.map` over chunks of `chunk_size`
  vmapped clients: memory bounded by the chunk), `sequential` (a Python loop of the jitted
  single-client update, for debugging and as the reference the others must equal), `sharded`
  (clients split over all devices with `jax.shard_map`, see `ease_jax.sharding`; `chunk_size`
  > 0 chunks each device's block).
  """
  if backend not in BACKENDS:
    raise ValueError(f"Unknown federated backend {backend!r}; expected one of {BACKENDS}.")
  if backend == "sharded":
    from ease_jax import sharding  # pylint: disable=g-import-not-at-top
    return sharding.make_sharded_round_fn(client_update, chunk_size=chunk_size)
  per_client = lambda t, b, d, i, m: client_update(t, b, d, i, m)
  if backend == "vmap":
    return jax.jit(jax.vmap(per_client, in_axes=(None, None, None, 0, 0)))
  if backend == "chunked":
    if chunk_size < 1:
      raise ValueError(f"backend='chunked' needs chunk_size >= 1, got {chunk_size}.")

    @jax.jit
    def chunked(trainable, backbone, data, indices, mask):
      fn = lambda xs: per_client(trainable, backbone, data, *xs)
      return jax.lax.map(fn, (indices, mask), batch_size=chunk_size)

    return chunked

  single = jax.jit(per_client)

  def sequential(trainable, backbone, data, indices, mask):
    outs = [single(trainable, backbone, data, indices[c], mask[c]) for c in range(len(indices))]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return sequential


def weighted_mean(deltas: PyTree, weights: jax.Array) -> PyTree:
  """Σ_k w_k Δ_k / Σ_k w_k over the leading client axis of `deltas`."""
  weights = weights / jnp.sum(weights)
  return jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), deltas)


@flax.struct.dataclass
class ServerState:
  trainable: PyTree
  opt_state: PyTree
  round: jax.Array  # scalar int32: rounds completed


def server_optimizer(learning_rate: float = 1.0, momentum: float = 0.0
                     ) -> optax.GradientTransformation:
  """SGD on the pseudo-gradient −Δ; lr 1 and no momentum is plain FedAvg."""
  return optax.sgd(learning_rate, momentum=momentum or None)


def init_server(trainable: PyTree, optimizer: optax.GradientTransformation) -> ServerState:
  return ServerState(trainable=trainable, opt_state=optimizer.init(trainable),
                     round=jnp.zeros((), jnp.int32))


def fedavg(state: ServerState, deltas: PyTree, weights: jax.Array,
           optimizer: optax.GradientTransformation,
           transform: Callable[[PyTree], PyTree] | None = None) -> tuple[ServerState, PyTree]:
  """Server step: aggregate, optionally transform (e.g. EASE's projection), apply.

  Returns the new state and the aggregate actually applied (before the optimizer).
  """
  aggregate = weighted_mean(deltas, weights)
  if transform is not None:
    aggregate = transform(aggregate)
  pseudo_grad = jax.tree.map(jnp.negative, aggregate)
  updates, opt_state = optimizer.update(pseudo_grad, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  return ServerState(trainable, opt_state, state.round + 1), aggregate


@dataclasses.dataclass
class UpdateHistory:
  """Each client's last `size` transmitted updates, flattened (host memory, numpy).

  updates: [num_clients, size, num_params] float32 (zeros where empty)
  rounds:  [num_clients, size] int32, the round each update was sent in (−1 where empty)
  Slot `round_sent % size` is overwritten, so the buffer is a ring ordered by `rounds`.
  """
  updates: np.ndarray
  rounds: np.ndarray

  @classmethod
  def create(cls, num_clients: int, size: int, num_params: int) -> "UpdateHistory":
    return cls(np.zeros((num_clients, size, num_params), np.float32),
               np.full((num_clients, size), -1, np.int32))

  @property
  def size(self) -> int:
    return self.updates.shape[1]

  def record(self, client_ids: Sequence[int], flat_deltas: np.ndarray, round_index: int) -> None:
    """flat_deltas: [len(client_ids), num_params]."""
    if self.size == 0:
      return
    slot = round_index % self.size
    ids = np.asarray(client_ids)
    self.updates[ids, slot] = np.asarray(flat_deltas, np.float32)
    self.rounds[ids, slot] = round_index

  def client_updates(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(updates [n, num_params], rounds [n]) of one client, oldest first, empty slots dropped."""
    rounds = self.rounds[client_id]
    order = [i for i in np.argsort(rounds) if rounds[i] >= 0]
    return self.updates[client_id, order], rounds[order]


def flatten_deltas(deltas: PyTree) -> jax.Array:
  """[C, ...] tree -> [C, num_params], in `ravel_pytree` order."""
  return jax.vmap(lambda d: ravel_pytree(d)[0])(deltas)


def unravel_fn(tree: PyTree) -> Callable[[jax.Array], PyTree]:
  return ravel_pytree(tree)[1]


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _embed_chunk(model, backbone, trainable, data, text_idx, image_idx, batch_size):
  del batch_size
  pixels = dataset_lib.normalize_images(data.images[image_idx])
  image_emb = model.encode_image(backbone, trainable, pixels)
  text_emb = model.encode_text(backbone, trainable, data.input_ids[text_idx],
                               data.attention_mask[text_idx])
  return image_emb, text_emb


def embed(model: CLIP, backbone: PyTree, trainable: PyTree, data: DeviceData,
          image_indices: np.ndarray, text_indices: np.ndarray, batch_size: int = 256
          ) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings of the given images [Ni, P] and texts [Nt, P], in jitted fixed-size batches."""
  image_indices = np.asarray(image_indices, np.int32)
  text_indices = np.asarray(text_indices, np.int32)
  n = max(len(image_indices), len(text_indices))
  num_batches = max(1, -(-n // batch_size))
  pad = lambda a: np.pad(a, (0, num_batches * batch_size - len(a)))
  imgs, txts = pad(image_indices), pad(text_indices)
  image_out, text_out = [], []
  for b in range(num_batches):
    sl = slice(b * batch_size, (b + 1) * batch_size)
    ie, te = _embed_chunk(model, backbone, trainable, data, jnp.asarray(txts[sl]),
                          jnp.asarray(imgs[sl]), batch_size)
    image_out.append(np.asarray(ie))
    text_out.append(np.asarray(te))
  return (np.concatenate(image_out)[:len(image_indices)],
          np.concatenate(text_out)[:len(text_indices)])
