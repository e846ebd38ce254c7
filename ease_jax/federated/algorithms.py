"""Federated algorithms as pure `init` / `apply` pairs over pytrees (FedJAX style).

`algorithm.init(trainable) -> state` and `algorithm.apply(state, round_inputs) -> (state,
metrics)`; round inputs (sampled ids, schedules, weights, the round of the random streams) are
built on the host by a separate plan (`schedules.RoundPlan`), so `apply` is a pure function of
its arguments. With the `vmap` or `chunked` backend (and no `compiler_options`) `apply` is
jittable; it is safe to `jax.vmap` over a leading axis of independent runs (`vmapped`): a
population of models in one computation.

`fedavg_algorithm` is FedAvg with a server optimizer; its variants are arguments, not driver
hooks: a client objective (the local-steps loss, e.g. EASE's Forget Lock), a server transform of
each aggregate (EASE's projection), extra per-round metrics of the new model (the lock's drift).
Fine-tuning, retraining and EASE's PFL are instances; FedEraser's replay reuses `fedavg`.

Non-finite guard: a client whose update holds NaN / inf is dropped from the round (weight 0,
update not stored in the history) and counted in the metrics; a round where no update is left,
or (with `nonfinite='fail'`) any update is non-finite, leaves the model unchanged and reports
`round_failed`, which the driver turns into an error before anything is checkpointed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from ease_jax import runtime
from ease_jax.data.device import DeviceData
from ease_jax.federated import backends
from ease_jax.federated.history import UpdateHistory, flatten_deltas, num_params
from ease_jax.federated.local import LocalSteps, tree_where, weighted_mean

PyTree = Any
NONFINITE_MODES = ("drop", "fail")


class FederatedAlgorithm(NamedTuple):
  """`init(trainable) -> state`, `apply(state, round_inputs) -> (state, metrics)`."""
  init: Callable[[PyTree], PyTree]
  apply: Callable[[PyTree, Any], tuple[PyTree, dict[str, jax.Array]]]


@flax.struct.dataclass
class ServerState:
  trainable: PyTree
  opt_state: PyTree
  round: jax.Array  # scalar int32: rounds completed
  history: UpdateHistory | None = None


def server_optimizer(learning_rate: float = 1.0, momentum: float = 0.0
                     ) -> optax.GradientTransformation:
  """SGD on the pseudo-gradient −Δ; lr 1 and no momentum is plain FedAvg."""
  return optax.sgd(learning_rate, momentum=momentum or None)


def init_server(trainable: PyTree, optimizer: optax.GradientTransformation,
                history: UpdateHistory | None = None) -> ServerState:
  return ServerState(trainable=trainable, opt_state=optimizer.init(trainable),
                     round=jnp.zeros((), jnp.int32), history=history)


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
  return state.replace(trainable=trainable, opt_state=opt_state, round=state.round + 1), aggregate


def all_finite(tree: PyTree, axis_leading: bool = False) -> jax.Array:
  """True where every entry is finite: a scalar, or `[C]` over a leading axis."""
  if axis_leading:
    checks = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
              for x in jax.tree.leaves(tree)]
  else:
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(checks), axis=0)


@dataclasses.dataclass(frozen=True)
class FedAvgOptions:
  """Execution and bookkeeping of `fedavg_algorithm`.

  backend / chunk_size: see `backends.make_round_fn` (resolve 'auto' first).
  num_clients / history_size: the update history's shape (client ids index its rows; size 0
    keeps none).
  nonfinite: 'drop' (a non-finite client update is dropped from the round) or 'fail'.
  compiler_options: XLA options of every computation the algorithm compiles, as `(name, value)`
    pairs (`runtime.split_cpu_compiler_options(platform, devices)` for a population split over
    CPU devices). With options, `apply` can no longer be traced inside an outer `jax.jit` (JAX
    takes them on top-level jits only); `jax.vmap` still works.
  """
  backend: str = "vmap"
  chunk_size: int = 0
  num_clients: int = 0
  history_size: int = 0
  nonfinite: str = "drop"
  compiler_options: tuple[tuple[str, Any], ...] = ()

  def __post_init__(self):
    if self.nonfinite not in NONFINITE_MODES:
      raise ValueError(f"fed.nonfinite must be one of {NONFINITE_MODES}, got {self.nonfinite!r}.")


def fedavg_algorithm(client_update: LocalSteps, server_opt: optax.GradientTransformation,
                     backbone: PyTree, data: DeviceData, options: FedAvgOptions = FedAvgOptions(),
                     server_transform: Callable[[PyTree], PyTree] | None = None,
                     round_metrics: Callable[[PyTree], dict[str, jax.Array]] | None = None
                     ) -> FederatedAlgorithm:
  """FedAvg of `client_update` (a `local_steps` of the client objective) over sampled clients.

  Args:
    client_update: each client's local training.
    server_opt: the server optimizer on the pseudo-gradient (`server_optimizer`).
    backbone, data: the frozen backbone and the device dataset every client indexes.
    options: backend, history, non-finite handling.
    server_transform: applied to each round's aggregate before the server step.
    round_metrics: `trainable -> {name: scalar}` of the new model, added to the metrics.
  """
  round_fn = backends.make_round_fn(client_update, options.backend, options.chunk_size,
                                    options.compiler_options)
  fail_on_nonfinite = options.nonfinite == "fail"
  jit = functools.partial(jax.jit, compiler_options=runtime.jit_compiler_options(
      options.compiler_options))

  @jit
  def server_step(state, deltas, client_loss, weights):
    finite = all_finite(deltas, axis_leading=True) & jnp.isfinite(client_loss)
    # Dropped clients: weight 0 and a zero update (NaN * 0 would still be NaN in the mean).
    deltas = jax.tree.map(
        lambda d: jnp.where(finite.reshape((-1,) + (1,) * (d.ndim - 1)), d, 0.0), deltas)
    kept = jnp.where(finite, weights, 0.0)
    new, aggregate = fedavg(state, deltas, jnp.where(jnp.any(finite), kept, 1.0), server_opt,
                            server_transform)
    failed = ~jnp.all(finite) if fail_on_nonfinite else ~jnp.any(finite)
    failed |= ~all_finite(new.trainable)
    # A failed round leaves the whole state as it was, its round counter too.
    new = new.replace(trainable=tree_where(failed, state.trainable, new.trainable),
                      opt_state=tree_where(failed, state.opt_state, new.opt_state),
                      round=jnp.where(failed, state.round, new.round))
    num_ok = jnp.sum(finite)
    metrics = dict(
        train_loss=jnp.sum(jnp.where(finite, client_loss, 0.0)) / jnp.maximum(num_ok, 1),
        clients_dropped=jnp.sum(~finite), round_failed=failed)
    return new, finite & ~failed, metrics

  @jit
  def record(history, deltas, client_ids, round_index, keep):
    return history.record(client_ids, flatten_deltas(deltas), round_index, keep=keep)

  def init(trainable: PyTree) -> ServerState:
    # No history at all (not a zero-size one, which orbax cannot save) when none is kept.
    history = (UpdateHistory.create(options.num_clients, options.history_size,
                                    num_params(trainable)) if options.history_size else None)
    return init_server(trainable, server_opt, history)

  def apply(state: ServerState, inputs: Any) -> tuple[ServerState, dict[str, jax.Array]]:
    deltas, client_metrics = round_fn(state.trainable, backbone, data, inputs.batches)
    new, kept, metrics = server_step(state, deltas, client_metrics["loss"],
                                     jnp.asarray(inputs.weights))
    if options.history_size:
      new = new.replace(history=record(new.history, deltas, inputs.client_ids,
                                       inputs.round_index, kept))
    if round_metrics is not None:
      metrics.update(round_metrics(new.trainable))
    return new, metrics

  return FederatedAlgorithm(init, apply)


def vmapped(algorithm: FederatedAlgorithm, input_axes: Any = 0) -> FederatedAlgorithm:
  """The same algorithm over a leading axis of independent runs (seeds): `init` takes stacked
  start points, `apply` stacked states and round inputs with `input_axes` (for
  `schedules.StackedPlan`: `schedules.STACKED_AXES`, which shares the step activity)."""
  return FederatedAlgorithm(jax.vmap(algorithm.init),
                            jax.vmap(algorithm.apply, in_axes=(0, input_axes)))
