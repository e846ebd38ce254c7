"""Host-side plans of local training: which clients take part and which batches they run.

Everything here is numpy and deterministic in explicit seeds, so a resumed run, a differently
ordered sample or a population member replays exactly the same batches.

* `build_client_schedules`: shuffled local epochs per client, padded to one `[clients, steps,
  batch]` shape (so one compiled round serves every round).
* `sample_clients`: the clients of a round.
* `cycled_batches`: a fixed number of batches cycling through shuffled epochs of a text set
  (unlearning methods' local steps on D_f / D_r).
* `RoundPlan`: a FedAvg run's round inputs (`RoundInputs`: sampled ids, schedules, weights, the
  round index of the random streams), one round at a time; `StackedPlan` stacks several plans
  (a population of runs with different seeds) on a leading axis.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import numpy as np

from ease_jax import rng as rng_lib
from ease_jax.federated.local import Batches


class ClientSchedules(NamedTuple):
  """Fixed-shape local-training plans of a group of clients."""
  text_indices: np.ndarray  # [clients, steps, batch] int32 (0 where padded)
  mask: np.ndarray          # [clients, steps, batch] bool
  num_examples: np.ndarray  # [clients] float32, the FedAvg weights before normalisation

  @property
  def batches(self) -> Batches:
    return Batches(self.text_indices, self.mask, self.mask.any(axis=-1))


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
  rng = rng_lib.numpy_rng(seed, round_index, domain=rng_lib.Domain.CLIENT_SAMPLING)
  return np.sort(rng.choice(num_clients, clients_per_round, replace=False))


def cycled_batches(texts: np.ndarray, num_batches: int, batch_size: int, seed: Sequence[int]
                   ) -> Batches:
  """`num_batches` batches cycling through shuffled epochs of `texts` (`[S, B]`); a set smaller
  than `batch_size` fills min(len, B) columns of each batch; an empty set gives all-False masks.

  No batch holds a text twice: a batch that spans two epochs takes from the next one only texts
  it does not hold yet (under plain InfoNCE a repeated pair would be its own negative)."""
  idx = np.zeros((num_batches, batch_size), np.int32)
  mask = np.zeros((num_batches, batch_size), bool)
  texts = np.asarray(texts, np.int32)
  if len(texts) == 0:
    return Batches(idx, mask)
  rng = np.random.default_rng(list(seed))
  b = min(batch_size, len(texts))
  epochs: list[np.ndarray] = []
  taken = 0
  while taken < num_batches * b:
    epoch = rng.permutation(texts)
    open_batch = taken % b  # texts the current batch already holds, from the last epoch
    if open_batch:
      held = np.isin(epoch, epochs[-1][-open_batch:])
      epoch = np.concatenate([epoch[~held], epoch[held]])  # b <= len(texts): enough others
    epochs.append(epoch)
    taken += len(epoch)
  stream = np.concatenate(epochs)
  idx[:, :b] = stream[:num_batches * b].reshape(num_batches, b)
  mask[:, :b] = True
  return Batches(idx, mask)


class RoundInputs(NamedTuple):
  """One FedAvg round's inputs, built on the host (leading `[C]` client axis)."""
  client_ids: np.ndarray    # [C] int32, the sampled clients
  batches: Batches          # [C, S, B]
  weights: np.ndarray       # [C] float32, FedAvg weights (sample counts)
  round_index: np.ndarray   # scalar int32: the round of the random streams (offset included)


@dataclasses.dataclass(frozen=True)
class RoundPlan:
  """Round inputs of one FedAvg run: client sampling and local shuffles from explicit seeds.

  Attributes:
    client_texts: per client (index = client id), the texts it trains on.
    active_clients: the clients that may be sampled (sorted).
    clients_per_round: clients sampled per round (≤ 0 or ≥ #active: all of them).
    batch_size, local_epochs: local training.
    sampling_seed, data_seed: `seeds.sampling` and `seeds.data`.
    round_offset: added to the round index in the random streams (training continued after
      unlearning draws fresh samples and shuffles).
    min_steps: pad every client to at least this many local steps. A backend that skips padded
      steps (`sequential`) then runs a federation without its largest client (a retrain, FedAvg
      continued after unlearning) on the same compiled client update as the whole federation.
      The shuffles do not depend on it, so the real steps are the same.
  """
  client_texts: tuple[np.ndarray, ...]
  active_clients: np.ndarray
  clients_per_round: int
  batch_size: int
  local_epochs: int
  sampling_seed: int
  data_seed: int
  round_offset: int = 0
  min_steps: int = 0

  def __post_init__(self):
    if len(self.active_clients) == 0:
      raise ValueError("No client has training data left.")
    empty = [int(c) for c in self.active_clients if len(self.client_texts[c]) == 0]
    if empty:  # A round of only such clients has FedAvg weights summing to 0: a 0/0 model.
      raise ValueError(f"Active client(s) {empty} have no training data; leave them out of "
                       "active_clients.")

  @property
  def client_steps(self) -> list[int]:
    """Real local steps of each active client (in `active_clients` order)."""
    return [num_local_steps(len(self.client_texts[c]), self.batch_size, self.local_epochs)
            for c in self.active_clients]

  @property
  def num_steps(self) -> int:
    """Padded local steps of every client (the largest active client's, at least `min_steps`),
    fixed for the run."""
    return max(max(self.client_steps), self.min_steps)

  @property
  def step_utilization(self) -> float:
    """The share of a round's padded client steps that are real (all active clients)."""
    steps = self.client_steps
    return float(sum(steps) / (len(steps) * self.num_steps))

  def inputs(self, round_index: int) -> RoundInputs:
    r = round_index + self.round_offset
    active = self.active_clients
    per_round = self.clients_per_round or len(active)
    sampled = active[sample_clients(len(active), per_round, self.sampling_seed, r)]
    sched = build_client_schedules([self.client_texts[c] for c in sampled], self.batch_size,
                                   self.local_epochs, self.num_steps, self.data_seed, r, sampled)
    return RoundInputs(np.asarray(sampled, np.int32), sched.batches, sched.num_examples,
                       np.asarray(r, np.int32))


# vmap axes of stacked round inputs: everything per run, except the step activity, which is the
# same for runs whose clients hold the same data (it then stays a real `lax.cond` under vmap).
STACKED_AXES = RoundInputs(client_ids=0, batches=Batches(0, 0, None), weights=0, round_index=0)


@dataclasses.dataclass(frozen=True)
class StackedPlan:
  """Several plans' round inputs stacked on a leading `[N]` axis (a population of runs with
  the same clients and data, differing in seeds): use with `algorithms.vmapped(algorithm,
  plan.axes)`."""
  plans: tuple[RoundPlan, ...]
  axes: RoundInputs = STACKED_AXES  # the vmap axes of `inputs`

  def __post_init__(self):
    if len({p.num_steps for p in self.plans}) > 1:
      raise ValueError("Stacked plans need the same padded step count.")

  def inputs(self, round_index: int) -> RoundInputs:
    rows = [p.inputs(round_index) for p in self.plans]
    shared = rows[0].batches.active
    if any(not np.array_equal(r.batches.active, shared) for r in rows):
      raise ValueError("Stacked plans must give every run the same step activity (the same "
                       "clients with the same data sizes).")
    rows = [r._replace(batches=r.batches._replace(active=None)) for r in rows]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *rows)
    return stacked._replace(batches=stacked.batches._replace(active=shared))
