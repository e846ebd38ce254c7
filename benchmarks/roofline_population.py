"""How close to this CPU's compute limit do a single FedAvg run and a population of them get?
XLA's FLOP count of one local step of the embedded default, the real steps of one round, and
this machine's matmul rate, against the per-member-round times of `bench_population.py`
(BENCHMARKS.md, "Population").

  python benchmarks/roofline_population.py --single_s 1.867 --batched_s 1.349

`--single_s` / `--batched_s`: seconds per member-round of the two sides (the one-by-one runs
and the batched population), from a `bench_population.py` run. The matmul rate is the median of
`--repeats` float32 `[n, n] @ [n, n]` products on every core (one jit, all threads), the
practical peak for the dense math a step is made of. The step alone is also timed on one
device, for one member and `--members` vmapped (as each device of a population runs it), and
`--profile_dir` traces 10 of each with the JAX profiler and prints where XLA's operation time
goes (matrix products, which XLA:CPU runs as `ynn_fusion` or `dot` kernels, transposes and
copies, the rest), with the products' count and mean duration.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import pathlib
import re

from ease_jax import runtime

runtime.avoid_cpu_hang()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax.federated import local  # noqa: E402
from ease_jax.unlearning import population  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" / (
    "unlearn_emoji.py")
FIRST_SEED = 100  # as bench_population.py's members


def local_step(setup: builders.FederatedSetup, batch_size: int, members: int = 1):
  """One local step on one full batch per member, jitted: `params [members, ...] -> (loss,
  grads in the LoRA parameters)`, vmapped over the members (each on its own batch) as a
  population's step is (the optimizer's update is a few elementwise operations, left out)."""
  texts = jnp.arange(members * batch_size, dtype=jnp.int32).reshape(members, batch_size)
  grad_fn = jax.value_and_grad(local.clip_objective(setup.model))
  backbone = jax.lax.stop_gradient(setup.backbone)

  def one(params, member_texts):
    batch = dict(setup.data.batch(member_texts), mask=jnp.ones(batch_size, bool))
    return grad_fn(params, backbone, batch)

  return jax.jit(lambda params: jax.vmap(one)(params, texts))


def stacked_trainables(setup: builders.FederatedSetup, config, members: int):
  """`[members, ...]` LoRA inits of a population's first members."""
  return population.stacked_inits(
      setup, [population.member_config(config, FIRST_SEED + i) for i in range(members)])


def step_seconds(step, trainable, repeats: int) -> float:
  return common.time_fn(lambda: step(trainable), repeats=repeats)[0]


def step_flops(compiled) -> float:
  """XLA's FLOP count of a compiled step."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def op_time_breakdown(step, trainable, trace_dir: str, steps: int = 10) -> dict:
  """Where XLA's operation time goes over `steps` traced calls of `step` (ms per step, summed
  over threads; the executor's own wrapper events left out)."""
  jax.block_until_ready(step(trainable))
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for _ in range(steps):
    out = step(trainable)
  jax.block_until_ready(out)
  jax.profiler.stop_trace()
  trace = json.load(gzip.open(sorted(glob.glob(
      f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz"))[-1]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  time_us, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if (e.get("ph") != "X" or threads.get((e["pid"], e["tid"]), "").startswith("python")
        or name.startswith(("ThunkExecutor", "SlinkyThreadPool", "end:"))):
      continue
    kind = ("matrix products" if name.startswith("ynn_fusion") or "dot" in name
            else "transposes and copies" if re.match(r"(transpose|copy)", name)
            else "other (elementwise, reductions)")
    time_us[kind] += e.get("dur", 0)
    count[kind] += 1
  total = sum(time_us.values())
  return dict(op_ms_per_step=total / 1e3 / steps,
              shares={k: v / total for k, v in time_us.items()},
              products_per_step=count["matrix products"] / steps,
              product_mean_us=time_us["matrix products"] / max(count["matrix products"], 1))


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
  parser.add_argument("--profile_dir", default="", help="trace 10 steps here (empty: no trace)")
  parser.add_argument("--members", type=int, default=4,
                      help="also time (and profile) the step vmapped over this many members, "
                           "as one device of the population runs it (0: not)")
  args = parser.parse_args()
  config = configs.from_file(CONFIG)
  setup = builders.build_setup(config)
  plan = builders.round_plan(setup, config)
  if plan.clients_per_round and plan.clients_per_round < len(plan.active_clients):
    raise SystemExit("The FLOP count assumes every client trains every round.")
  steps = sum(plan.client_steps)
  # The step alone on one device: one member, and `--members` vmapped (compiled once each).
  variants = {}
  for m in sorted({1, args.members} - {0}):
    trainable = stacked_trainables(setup, config, m)
    variants[m] = (local_step(setup, plan.batch_size, m).lower(trainable).compile(), trainable)
  per_step = step_flops(variants[1][0])
  round_gflop = steps * per_step / 1e9
  peak = matmul_gflops(args.matmul_n, args.repeats)
  out = dict(machine=common.machine(), steps_per_round=steps, gflop_per_step=per_step / 1e9,
             gflop_per_member_round=round_gflop, matmul_gflops=peak)
  for side, seconds in (("single", args.single_s), ("batched", args.batched_s)):
    out[f"{side}_gflops"] = round_gflop / seconds
    out[f"{side}_share_of_matmul"] = round_gflop / seconds / peak
  # The best a batched side could do is the matmul rate itself.
  out["ratio_at_matmul_rate"] = round_gflop / peak / args.single_s
  for m, (s_m, t_m) in variants.items():
    seconds = step_seconds(s_m, t_m, args.repeats) / m
    out[f"step_{m}_members"] = dict(s_per_member_step=seconds,
                                    gflops=per_step / 1e9 / seconds)
    if args.profile_dir:
      out[f"step_{m}_members"]["profile"] = op_time_breakdown(
          s_m, t_m, f"{args.profile_dir}/members_{m}")
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
