r"""Pretrains a tiny CLIP centrally on the public split (the embedded default backbone).

  python experiments/pretrain.py --config=experiments/configs/pretrain_emoji.py \
      --workdir=/tmp/pretrain [--export_to=ease_jax/assets/emoji_clip]
"""
# Before JAX starts: see ease_jax/runtime.py (an XLA:CPU hang).
from ease_jax import runtime  # pylint: disable=g-bad-import-order

runtime.avoid_cpu_hang()

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import pathlib
import shutil

from absl import flags
from ml_collections import config_flags

from ease_jax import centralized
from ease_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pretraining config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (must not exist or be empty).")
_EXPORT_TO = flags.DEFINE_string("export_to", None,
                                 "Also copy the checkpoint here (e.g. the package's assets).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.quiet_library_logs()
  cli.cache_compilations(_WORKDIR.value)
  out = pathlib.Path(_WORKDIR.value) / "backbone"
  summary = centralized.pretrain_backbone(_CONFIG.value, out)
  print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}, indent=1))
  if _EXPORT_TO.value:
    dst = pathlib.Path(_EXPORT_TO.value)
    if dst.exists():
      shutil.rmtree(dst)
    shutil.copytree(out, dst)
    print(f"Exported to {dst}")


if __name__ == "__main__":
  cli.run(main)
