r"""The unlearning comparison on the embedded emoji default: methods × scenarios × seeds.

  python experiments/benchmark.py --config=experiments/configs/benchmark_emoji.py \
      --workdir=workdirs/benchmark_emoji

Starts from `unlearn_emoji.py` (model, data, federated run, EASE's and the baselines' blocks) and
adds `benchmark`: the scenarios (each an `unlearning` block), the seeds and the methods. 8 FedAvg
rounds (train + 3 retrains per seed); on a 2-core CPU the whole table (3 scenarios × 3 seeds ×
8 methods) takes about 35 min in one invocation (BENCHMARKS.md, "Unlearning comparison").
`benchmark.variants` (optional) adds a method under other knobs, e.g.
`ease_retain90=dict(method="ease", overrides=dict(gsd=dict(retain_energy=0.9)))`.
"""
import pathlib

import ml_collections

from ease_jax import configs


def get_config() -> ml_collections.ConfigDict:
  c = configs.from_file(pathlib.Path(__file__).with_name("unlearn_emoji.py"))
  c.fed.rounds = 8
  c.checkpoint_every = 2
  c.methods = ("ease",)  # Unused here (the unlearn binary's list); see benchmark.methods.
  c.benchmark = ml_collections.ConfigDict(dict(
      seeds=(0, 1, 2),
      scenarios=("client", "sample", "concept"),
      methods=("ease", "finetune", "gradient_ascent", "pga", "federaser", "fedrecovery", "ccu",
               "mvi_causal"),
      mia_score="cosine",      # 'cosine' | 'loss' (ease_jax/mia.py)
      scenario_blocks=dict(
          client=dict(kind="client", clients=(0,)),
          sample=dict(kind="sample", clients=(), fraction=0.1),
          concept=dict(kind="concept", field="subgroup", concepts=("person-sport",)),
      ),
  ))
  return c
