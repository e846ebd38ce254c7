"""Local training: the one local-steps primitive and the holders' update.

Every procedure that trains the adapters locally — a FedAvg client, EASE's excision (BKE),
gradient ascent and PGA, CCU, MVI, FedEraser's calibration, the central pretraining of the
embedded backbone — is `local_steps(loss_fn, optimizer)`: S optimizer steps inside one
`lax.scan`, over batches planned on the host (`Batches`, fixed shapes, masks for padding).

* A loss is `loss_fn(params, backbone, batch, context) -> loss` (or `(loss, aux)` with
  `has_aux=True`). `batch` holds `pixels`, `input_ids`, `attention_mask` and `mask` of one step;
  with several streams (`{"forget": Batches, "retain": Batches}`) it is a dict of such batches.
  `context` is any pytree of per-call values that are not trained (an anchor, a target, a tower
  mask): passing them as arguments, not closures, lets variants share one compilation.
* Steps whose masks are all False leave params *and* optimizer state untouched, so padding a
  client's plan never changes its update.
* `holders_update` runs `local_steps` for a group of clients at once (a backend of
  `ease_jax.federated.backends`) and averages their deltas with FedAvg weights.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ease_jax import losses
from ease_jax.data.device import DeviceData
from ease_jax.federated import backends
from ease_jax.model import CLIP

PyTree = Any
# (params, backbone, batch, context) -> loss, or (loss, aux dict) when has_aux.
LossFn = Callable[..., Any]


class Batches(NamedTuple):
  """Planned local batches: text ids and a validity mask, `[..., steps, batch]`.

  `active` (optional, `[..., steps]` bool) says which steps hold any example; given separately
  it can be shared (unbatched) across a population of runs with the same client sizes, so that
  padded steps are skipped even under `vmap` over the runs (see `LocalSteps.skipping`).
  """
  text_indices: jax.Array  # int32, 0 where padded
  mask: jax.Array          # bool
  active: Any = None


def tree_where(condition: jax.Array, x: PyTree, y: PyTree) -> PyTree:
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), x, y)


def weighted_mean(deltas: PyTree, weights: jax.Array) -> PyTree:
  """Σ_k w_k Δ_k / Σ_k w_k over the leading client axis of `deltas`."""
  weights = weights / jnp.sum(weights)
  # HIGHEST: on a GPU the default f32 matmul may run in TF32 (~1e-3 relative error in every
  # aggregate); on the CPU it is the same computation.
  return jax.tree.map(
      lambda d: jnp.tensordot(weights, d, axes=1, precision=jax.lax.Precision.HIGHEST), deltas)


def clip_objective(model: CLIP, identical_captions_as_negatives: bool = False) -> LossFn:
  """Symmetric InfoNCE of a CLIP batch; `params` is the LoRA tree (may hold `logit_scale`).

  By default a pair whose caption is identical to the query's own is not a negative (the
  training objective: see `losses.clip_loss`). `identical_captions_as_negatives=True` is plain
  InfoNCE, for objectives on a forget set that may hold a single caption (a backdoor's poisoned
  pairs), which would otherwise have no negatives, a zero loss and zero gradients.
  """

  def loss_fn(params, backbone, batch, context=None):
    del context
    image_emb, text_emb, logit_scale = model(backbone, params, batch["pixels"],
                                             batch["input_ids"], batch["attention_mask"])
    tokens = None if identical_captions_as_negatives else batch["input_ids"]
    return losses.clip_loss(image_emb, text_emb, logit_scale, batch["mask"],
                            text_tokens=tokens)

  return loss_fn


def _step_batch(data: DeviceData, step: Batches | Mapping[str, Batches]) -> dict[str, Any]:
  if isinstance(step, Batches):
    return dict(data.batch(step.text_indices), mask=step.mask)
  return {name: _step_batch(data, s) for name, s in step.items()}


def _any_active(step: Batches | Mapping[str, Batches]) -> jax.Array:
  streams = jax.tree.leaves(step, is_leaf=lambda x: isinstance(x, Batches))
  flags = [jnp.asarray(b.active) if b.active is not None else jnp.any(b.mask) for b in streams]
  return jnp.any(jnp.stack(flags))


class LocalSteps:
  """`local_steps(loss_fn, optimizer)`; see the module docstring.

  `steps(params, backbone, data, batches [S, B], context=None) -> (delta, metrics)` starts from a
  fresh optimizer state (FedAvg: every round is a new local optimisation);
  `steps.resume(params, opt_state, ...) -> (params, opt_state, metrics)` continues one (central
  training). metrics: `loss` (mean over active steps), `steps` (active count), and per step
  `step_loss [S]`, `step_active [S]` and each aux term `step_<name> [S]`.
  """

  def __init__(self, loss_fn: LossFn, optimizer: optax.GradientTransformation,
               has_aux: bool = False,
               constrain: Callable[[PyTree, Any], PyTree] | None = None,
               skip_inactive: bool = False):
    self.loss_fn = loss_fn
    self.optimizer = optimizer
    self.has_aux = has_aux
    self.constrain = constrain  # (params after a step, context) -> params, e.g. a ball projection
    self.skip_inactive = skip_inactive

  def skipping(self) -> "LocalSteps":
    """The same steps with all-padded steps skipped by `lax.cond` instead of selected away:
    a padded client costs only its real steps when it runs alone (the sequential backend); under
    a `vmap` whose step activity is batched, cond turns into a select and costs more than the
    plain select, so the batched backends keep `skip_inactive=False`."""
    return LocalSteps(self.loss_fn, self.optimizer, self.has_aux, self.constrain, True)

  def resume(self, params: PyTree, opt_state: PyTree, backbone: PyTree, data: DeviceData,
             batches: Batches | Mapping[str, Batches], context: Any = None
             ) -> tuple[PyTree, PyTree, dict[str, jax.Array]]:
    backbone = jax.lax.stop_gradient(backbone)
    grad_fn = jax.value_and_grad(self.loss_fn, has_aux=self.has_aux)

    def step(carry, xs):
      def train(carry):
        params, opt_state = carry
        out, grads = grad_fn(params, backbone, _step_batch(data, xs), context)
        loss, aux = out if self.has_aux else (out, {})
        updates, new_opt_state = self.optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if self.constrain is not None:
          new_params = self.constrain(new_params, context)
        return (new_params, new_opt_state), (loss, aux)

      def skip(carry):
        shapes = jax.eval_shape(train, carry)[1]
        return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

      # An all-padded step leaves params and optimizer state untouched, so padding never
      # changes a client's update: skipped (not computed) or computed and selected away.
      active = _any_active(xs)
      if self.skip_inactive:
        carry, (loss, aux) = jax.lax.cond(active, train, skip, carry)
      else:
        new_carry, (loss, aux) = train(carry)
        carry = tree_where(active, new_carry, carry)
      return carry, (loss, active, aux)

    (params, opt_state), (step_loss, active, aux) = jax.lax.scan(
        step, (params, opt_state), batches)
    num_active = jnp.maximum(jnp.sum(active), 1)
    metrics = dict(loss=jnp.sum(jnp.where(active, step_loss, 0.0)) / num_active,
                   steps=jnp.sum(active), step_loss=step_loss, step_active=active,
                   **{f"step_{k}": v for k, v in aux.items()})
    return params, opt_state, metrics

  def __call__(self, params: PyTree, backbone: PyTree, data: DeviceData,
               batches: Batches | Mapping[str, Batches], context: Any = None
               ) -> tuple[PyTree, dict[str, jax.Array]]:
    trained, _, metrics = self.resume(params, self.optimizer.init(params), backbone, data,
                                      batches, context)
    return jax.tree.map(jnp.subtract, trained, params), metrics


def local_steps(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                has_aux: bool = False,
                constrain: Callable[[PyTree, Any], PyTree] | None = None) -> LocalSteps:
  """The local-training primitive (see the module docstring and `LocalSteps`)."""
  return LocalSteps(loss_fn, optimizer, has_aux=has_aux, constrain=constrain)


def holders_update(steps: LocalSteps, backend: str = "vmap", chunk_size: int = 0
                   ) -> Callable[..., tuple[PyTree, dict[str, jax.Array]]]:
  """A group of clients' local steps, averaged: `(params, backbone, data, batches [H, S, B],
  weights [H], context=None) -> (Σ_h w_h Δ_h / Σ w, metrics [H])`."""
  round_fn = backends.make_round_fn(steps, backend, chunk_size)

  def update(params, backbone, data, batches, weights, context=None):
    deltas, metrics = round_fn(params, backbone, data, batches, context)
    return weighted_mean(deltas, weights), metrics

  return update
