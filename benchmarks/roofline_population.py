"""How close to this CPU's compute limit do a single FedAvg run and a population of them get?
XLA's FLOP count of one local step of the embedded default, the real steps of one round, and
this machine's matmul rate, against the per-member-round times of `bench_population.py`
(BENCHMARKS.md, "Population").

  python benchmarks/roofline_population.py --single_s 1.867 --batched_s 1.349

`--single_s` / `--batched_s`: seconds per member-round of the two sides (the one-by-one runs
and the batched population), from a `bench_population.py` run. The matmul rate is the median of
`--repeats` float32 `[n, n] @ [n, n]` products on every core (one jit, all threads), the
practical peak for the dense math a step is made of.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from ease_jax import runtime

runtime.avoid_cpu_hang()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax.federated import local  # noqa: E402
from ease_jax.federated import schedules  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" / (
    "unlearn_emoji.py")


def step_flops(setup: builders.FederatedSetup, trainable, batch_size: int) -> float:
  """XLA's FLOP count of one local step on one full batch: the loss and its gradient in the LoRA
  parameters (the optimizer's update is a few elementwise operations on them, left out)."""
  loss_fn = local.clip_objective(setup.model)
  texts = jnp.arange(batch_size, dtype=jnp.int32)
  batch = dict(setup.data.batch(texts), mask=jnp.ones(batch_size, bool))
  grad_fn = jax.value_and_grad(loss_fn)

  def step(params):
    loss, grads = grad_fn(params, jax.lax.stop_gradient(setup.backbone), batch)
    return loss, grads

  cost = jax.jit(step).lower(trainable).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def matmul_gflops(n: int, repeats: int) -> float:
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  median, _ = common.time_fn(lambda: f(a), repeats=repeats)
  return 2 * n ** 3 / median / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--single_s", type=float, required=True)
  parser.add_argument("--batched_s", type=float, required=True)
  parser.add_argument("--matmul_n", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  config = configs.from_file(CONFIG)
  setup = builders.build_setup(config)
  plan = builders.round_plan(setup, config)
  steps = sum(schedules.num_local_steps(len(plan.client_texts[c]), plan.batch_size,
                                        plan.local_epochs) for c in plan.active_clients)
  per_step = step_flops(setup, builders.init_trainable(setup, config), plan.batch_size)
  round_gflop = steps * per_step / 1e9
  peak = matmul_gflops(args.matmul_n, args.repeats)
  out = dict(machine=common.machine(), steps_per_round=steps, gflop_per_step=per_step / 1e9,
             gflop_per_member_round=round_gflop, matmul_gflops=peak)
  for side, seconds in (("single", args.single_s), ("batched", args.batched_s)):
    out[f"{side}_gflops"] = round_gflop / seconds
    out[f"{side}_share_of_matmul"] = round_gflop / seconds / peak
  # The best a batched side could do is the matmul rate itself.
  out["ratio_at_matmul_rate"] = round_gflop / peak / args.single_s
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
