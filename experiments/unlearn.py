r"""Federated unlearning: FedAvg, an unlearning request, the retrain reference, EASE (+ablations).

  python experiments/unlearn.py --config=experiments/configs/unlearn_emoji.py --workdir=/tmp/ul \
      [--config.seed=1 --config.unlearning.kind=sample --config.methods="('ease',)" ...]

Writes to the workdir: `train/` and `retrain/` (cached, resumable runs), `results.json`,
`results.csv`, `r1_bars.png`, `reanchoring.png`, `drift.png` and `angles.png`; prints the table.
"""
# Before JAX starts: see ease_jax/runtime.py (an XLA:CPU hang; populations on every core).
from ease_jax import runtime  # pylint: disable=g-bad-import-order

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from ml_collections import config_flags

from ease_jax import cli

from ease_jax.unlearning import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Unlearning config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for runs, results and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.quiet_library_logs()
  cli.cache_compilations(_WORKDIR.value)
  results = pipeline.run_unlearning(_CONFIG.value, _WORKDIR.value)
  print(results["request"]["description"])
  print(pipeline.format_table(results["table"], results["forgotten_knowledge"]))
  pops = results["populations"]
  if pops:
    print(f"audit: populations of {len(pops['seeds'])}; one retrain's scores on D_f share "
          f"{pops['model_effect_share']:.2f} of their spread (a single model's TPR@1% strays "
          "from 1% the more, the higher this is).")
  t = results["retrain_timing"]
  print(f"retrain: {t['wall_time_s']:.1f} s as run, {t['steady_time_s']:.1f} s without its "
        "first-round compile (the speed-up's reference); method times exclude compilation.")


if __name__ == "__main__":
  cli.run(main)
