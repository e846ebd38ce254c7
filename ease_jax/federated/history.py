"""The server's store of each client's last M transmitted updates (EASE's GSD and FedEraser /
FedRecovery read it), as a pure pytree that lives in the FedAvg state and is checkpointed with it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any


@flax.struct.dataclass
class UpdateHistory:
  """Each client's last `size` transmitted updates, flattened.

  updates: [num_clients, size, num_params] float32 (zeros where empty)
  rounds:  [num_clients, size] int32, the round each update was sent in (−1 where empty)
  A new update overwrites its client's oldest slot (an empty one first), so a client that skips
  rounds still keeps its own last `size` updates; when every client sends every round that slot
  is `round_sent % size`. Arrays are jax arrays in a training state and numpy arrays after
  `to_host()`; the methods work on both.
  """
  updates: Any
  rounds: Any

  @classmethod
  def create(cls, num_clients: int, size: int, num_params: int) -> "UpdateHistory":
    return cls(jnp.zeros((num_clients, size, num_params), jnp.float32),
               jnp.full((num_clients, size), -1, jnp.int32))

  @property
  def size(self) -> int:
    return int(self.updates.shape[1])

  def record(self, client_ids: jax.Array, flat_deltas: jax.Array, round_index: jax.Array,
             keep: jax.Array | None = None) -> "UpdateHistory":
    """Stores `flat_deltas [C, P]` of `client_ids [C]` sent in `round_index` (pure); rows with
    `keep [C]` False leave their slot as it was (e.g. a dropped non-finite update)."""
    if self.size == 0:
      return self
    ids = jnp.asarray(client_ids)
    # Per client, not `round_index % size`: under partial participation that slot may hold the
    # client's newest update while an older one survives.
    slot = jnp.argmin(self.rounds[ids], axis=1)
    new_updates = jnp.asarray(flat_deltas, jnp.float32)
    new_rounds = jnp.broadcast_to(jnp.asarray(round_index, jnp.int32), ids.shape)
    if keep is not None:
      new_updates = jnp.where(keep[:, None], new_updates, self.updates[ids, slot])
      new_rounds = jnp.where(keep, new_rounds, self.rounds[ids, slot])
    return UpdateHistory(self.updates.at[ids, slot].set(new_updates),
                         self.rounds.at[ids, slot].set(new_rounds))

  def to_host(self) -> "UpdateHistory":
    return UpdateHistory(np.array(self.updates), np.array(self.rounds))

  def client_updates(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(updates [n, num_params], rounds [n]) of one client, oldest first, empty slots dropped."""
    rounds = np.asarray(self.rounds[client_id])
    order = [i for i in np.argsort(rounds) if rounds[i] >= 0]
    return np.asarray(self.updates[client_id])[order], rounds[order]

  def stack(self, clients: Sequence[int]) -> np.ndarray:
    """`[len(clients), M, P]` of the clients' stored updates (zeros where empty), on the host."""
    updates, rounds = np.asarray(self.updates), np.asarray(self.rounds)
    return np.stack([updates[c] * (rounds[c] >= 0)[:, None] for c in clients])


def flatten_deltas(deltas: PyTree) -> jax.Array:
  """[C, ...] tree -> [C, num_params], in `ravel_pytree` order."""
  return jax.vmap(lambda d: ravel_pytree(d)[0])(deltas)


def unravel_fn(tree: PyTree) -> Callable[[jax.Array], PyTree]:
  return ravel_pytree(tree)[1]


def num_params(tree: PyTree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
