r"""Unlearning on the embedded emoji data: client unlearning of one client, EASE vs retrain.

  python experiments/unlearn.py --config=experiments/configs/unlearn_emoji.py --workdir=/tmp/ul
  python experiments/unlearn.py --config=experiments/configs/unlearn_emoji.py --workdir=/tmp/ul1 \
      --config.seed=1    # partition, LoRA init, sampling, shuffles and the request; not the split

Other requests: `--config.unlearning.kind=sample --config.unlearning.fraction=0.1`, or
`--config.unlearning.kind=concept` (default: subgroup 'person-sport'; any subgroup, group or skin
tone of the clients' toned emoji works, e.g. `--config.unlearning.field=skin_tone
--config.unlearning.concepts="('medium-dark',)"`).
"""
import ml_collections

from ease_jax import configs


def get_config() -> ml_collections.ConfigDict:
  c = configs.base_config()
  # One knob for the run's randomness. `seeds.split` stays 0: it must match the split the
  # embedded backbone was pretrained on (its public part).
  c.seed = 0
  for name in ("partition", "init", "sampling", "data", "unlearning"):
    c.seeds[name] = c.get_ref("seed")
  # Modest federated run: the whole experiment (train + retrain + EASE + PFL) fits ~8 CPU-minutes.
  c.fed.rounds = 12
  c.eval.every = 0
  c.checkpoint_every = 4

  # The request block and every method's block (`config.gsd`, `.bke`, `.pfl`, `.pga`, ...;
  # defaults next to each method in ease_jax/unlearning/methods/), so `--config.pga.radius=0.1`
  # works.
  configs.add_unlearning(c)
  return c
