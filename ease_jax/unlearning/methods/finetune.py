"""Fine-tuning: continued FedAvg of the trained model on the retained clients' retain data only.

D_f is never read: the holders train on their retain texts (D_f removed), leaving clients are
inactive. The baseline every unlearning method must beat on the forget side.
"""
from __future__ import annotations

from typing import Any

from ease_jax import validation as check
from ease_jax.unlearning import base
from ease_jax.unlearning import common

DEFAULTS: dict[str, Any] = dict(
    rounds=3,                 # FedAvg rounds on the retained clients (EASE's PFL has 3)
)
RULES = {"finetune.rounds": check.integer(0)}


def finetune(ctx: base.UnlearningContext) -> base.MethodResult:
  c = common.block(ctx.config, "finetune", DEFAULTS)
  theta, rows, seconds = common.continue_fedavg(ctx, ctx.trained, c.rounds)
  return base.MethodResult(theta, wall_time_s=seconds, curves=rows,
                           diagnostics=dict(rounds=c.rounds))
