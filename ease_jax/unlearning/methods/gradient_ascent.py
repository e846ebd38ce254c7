"""Federated gradient ascent: the holders ascend the CLIP loss on their D_f, FedAvg of their
models, round after round until a stopping rule fires. The ascent loop (`ascend`) is shared with
PGA, which adds a ball constraint around a reference model.

[ours] stopping rule: the forget data's mean matched cosine reaches the non-member level (the
`stop_quantile` quantile of the held-out split's matched cosines under the trained model, the
same calibration as EASE's BKE target) — PGA's "accuracy on the target's data below τ" with τ =
what unseen data scores. A divergence guard reverts the last round and stops if the alignment gap
(matched − unmatched cosine) of a fixed public sample falls by more than `max_utility_drop` × its
initial value.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ease_jax import builders
from ease_jax import federated
from ease_jax import rng as rng_lib
from ease_jax.model import CLIP
from ease_jax import validation as check
from ease_jax.unlearning import base
from ease_jax.unlearning import common

PyTree = Any

DEFAULTS: dict[str, Any] = dict(
    max_rounds=5,             # upper bound on ascent rounds
    local_steps=0,            # holder steps per round (0 = one epoch over its D_f)
    batch_size=32,
    optimizer="sgd",
    lr=0.05,
    clip_norm=1.0,            # global-norm gradient clipping (0 = none)
    stop_quantile=0.5,        # stop at this quantile of non-member matched cosines
    calibration_split="test", # non-member pairs of the stopping level ('test' | 'public')
    max_utility_drop=0.5,     # divergence guard on the public alignment gap
)


MAX_ROUNDS = rng_lib.Stream.CCU_FORGET - rng_lib.Stream.ASCENT_FORGET


def ascent_rules(block: str) -> dict[str, Any]:
  """Validation rules of an ascent method's block (gradient ascent, PGA)."""
  return {
      # Round r draws its batches from stream ASCENT_FORGET + r (`rng.Stream`): 20 rounds reach
      # the next named stream.
      f"{block}.max_rounds": check.integer(1, MAX_ROUNDS), f"{block}.local_steps": check.integer(0),
      f"{block}.batch_size": check.integer(1),
      f"{block}.optimizer": check.one_of("adam", "adamw", "sgd"),
      f"{block}.lr": check.positive, f"{block}.clip_norm": check.non_negative,
      f"{block}.stop_quantile": check.probability,
      f"{block}.calibration_split": check.one_of(*common.CALIBRATION_SPLITS),
      f"{block}.max_utility_drop": check.positive,
  }


RULES = ascent_rules("gradient_ascent")


def tree_norm(tree: PyTree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def project_to_ball(x: PyTree, center: PyTree, radius: jax.Array | float) -> PyTree:
  """Euclidean projection of `x` onto {w: ‖w − center‖₂ ≤ radius} (global norm over the tree).

  Points inside the ball (and any point, for an infinite radius) are returned unchanged.
  """
  diff = jax.tree.map(jnp.subtract, x, center)
  norm = tree_norm(diff)
  factor = radius / jnp.maximum(norm, 1e-12)
  scaled = jax.tree.map(lambda c, d: c + factor * d, center, diff)
  return federated.tree_where(norm <= radius, x, scaled)


def ascent_should_stop(forget_cos: float, target: float, utility: float, utility0: float,
                       max_utility_drop: float) -> tuple[bool, bool]:
  """The ascent methods' stopping rule: (stop, revert_last_round).

  Stops when the forget data's mean matched cosine has reached the non-member level
  (`forget_cos <= target`); stops and reverts when the public alignment gap has fallen by
  more than `max_utility_drop · |utility0|` (the ascent started to destroy the model).
  """
  if utility0 - utility > max_utility_drop * abs(utility0):
    return True, True
  return forget_cos <= target, False


def make_ascent_round(model: CLIP, optimizer: Any) -> Any:
  """Holders' local (projected) gradient ascent on the CLIP loss of their D_f, averaged.

  Returns jitted `(trainable, backbone, data, forget Batches [H, S, B], weights [H], center,
  radius) -> (θ, per-holder metrics [H])`: each holder runs S steps of `optimizer` on −CLIP,
  projecting onto the ball (center, radius) after every step (radius = inf: plain ascent); the
  server takes the |D_f ∩ D_h|-weighted mean of the holders' updates (inside the ball too, by
  convexity).
  """
  # Plain InfoNCE: a forget set of one caption (a backdoor's poisoned pairs) keeps its negatives.
  clip = federated.clip_objective(model, identical_captions_as_negatives=True)
  neg = lambda p, b, batch, context: -clip(p, b, batch)
  steps = federated.local_steps(neg, optimizer,
                                constrain=lambda p, ball: project_to_ball(p, *ball))
  holders = federated.holders_update(steps)

  @jax.jit
  def run(trainable, backbone, data, batches, weights, center, radius):
    delta, metrics = holders(trainable, backbone, data, batches, weights, (center, radius))
    return jax.tree.map(jnp.add, trainable, delta), metrics

  return run


def ascend(ctx: base.UnlearningContext, c: ml_collections.ConfigDict, start: PyTree,
           center: PyTree, radius: float) -> tuple[PyTree, dict[str, Any], float, float]:
  """The ascent rounds with the stopping rule: (θ, diagnostics, run_s, compile_s)."""
  setup = ctx.setup
  t0 = time.perf_counter()
  target = common.nonmember_level(ctx, c.stop_quantile, c.calibration_split)
  util_texts = common.utility_texts(ctx)
  utility0 = common.alignment_gap(setup.model, setup.backbone, start, setup.data, util_texts)
  setup_s = time.perf_counter() - t0
  forget_texts = ctx.request.forget_client_texts(setup)
  steps = c.local_steps or max(-(-len(forget_texts[h]) // c.batch_size)
                               for h in ctx.request.holders)
  run = base.TimedJit(make_ascent_round(setup.model, builders.make_optimizer(
      c.optimizer, c.lr, freeze_lora_a=setup.lora_config.freeze_a, clip_norm=c.clip_norm)))
  theta, compile_s, run_s = start, 0.0, setup_s
  history, stopped = [], "max_rounds"
  for r in range(c.max_rounds):
    stream = rng_lib.Stream.ASCENT_FORGET + r
    batches, weights = common.holder_schedules(ctx, steps, c.batch_size, "none", stream,
                                               stream + 1)
    (new, metrics), compile_r, step_s = run(
        theta, setup.backbone, setup.data, jax.tree.map(jnp.asarray, batches["forget"]),
        jnp.asarray(weights), center, jnp.float32(radius))
    t0 = time.perf_counter()
    compile_s += compile_r
    forget_cos = float(federated.matched_cosines(setup.model, setup.backbone, new, setup.data,
                                                 ctx.request.forget_texts).mean())
    utility = common.alignment_gap(setup.model, setup.backbone, new, setup.data, util_texts)
    stop, revert = ascent_should_stop(forget_cos, target, utility, utility0, c.max_utility_drop)
    run_s += step_s + time.perf_counter() - t0
    history.append(dict(round=r + 1, forget_cos=forget_cos, utility=utility,
                        ascent_loss=(-np.asarray(metrics["step_loss"])[:, -1]).tolist()))
    if revert:
      stopped = "diverging (reverted)"
      break
    theta = new
    if stop:
      stopped = "reached non-member level"
      break
  diag = dict(target_cos=target, utility0=utility0, rounds_run=len(history), stopped=stopped,
              local_steps=int(steps), ascent=history)
  return theta, diag, run_s, compile_s


def gradient_ascent(ctx: base.UnlearningContext) -> base.MethodResult:
  c = common.block(ctx.config, "gradient_ascent", DEFAULTS)
  theta, diag, run_s, compile_s = ascend(ctx, c, ctx.trained, ctx.trained, float("inf"))
  return base.MethodResult(theta, wall_time_s=run_s, compile_time_s=compile_s, diagnostics=diag)
