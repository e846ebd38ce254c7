r"""Federated LoRA training of a frozen CLIP (FedAvg over vmapped clients).

  python experiments/train.py --config=experiments/configs/emoji_default.py --workdir=/tmp/emoji \
      [--config.fed.rounds=30 --config.fed.num_clients=16 ...]

Writes to the workdir: `metrics.jsonl` (one row per round), orbax `checkpoints/` (a killed run
resumes where it stopped), `summary.json`, and `r1_per_round.png`.
"""
# Before JAX starts: see ease_jax/runtime.py (an XLA:CPU hang).
from ease_jax import runtime  # pylint: disable=g-bad-import-order

runtime.avoid_cpu_hang()

# pylint: disable=g-import-not-at-top,wrong-import-position
import json

from absl import flags
from ml_collections import config_flags

from ease_jax import cli
from ease_jax import training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.quiet_library_logs()
  cli.cache_compilations(_WORKDIR.value)
  summary = training.train_and_summarize(_CONFIG.value, _WORKDIR.value)
  print(json.dumps(summary["table"], indent=1))


if __name__ == "__main__":
  cli.run(main)
