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


def _backbone_files(folder: pathlib.Path) -> bool:
  """Whether `folder` holds an exported backbone and nothing else a user could lose."""
  names = {p.name for p in folder.iterdir()}
  return {"config.json", "flax_model.msgpack"} <= names and all(
      p.is_file() and p.suffix in (".json", ".msgpack", ".txt") for p in folder.iterdir())


def check_outputs(workdir: pathlib.Path, export_to: pathlib.Path | None) -> None:
  """Refuses, before any training, outputs that would fail or destroy something: a backbone
  folder that is a file or not empty, and an export target that is not an exported backbone
  (replacing it deletes what it holds) or that contains, or lies in, the workdir."""
  out = workdir / "backbone"
  if workdir.exists() and not workdir.is_dir():
    raise FileExistsError(f"--workdir {str(workdir)!r} is a file.")
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise FileExistsError(f"{str(out)!r} already holds a backbone; choose a new --workdir (or "
                          "remove that folder).")
  if export_to is None:
    return
  dst, work = export_to.resolve(), workdir.resolve()
  if dst == work or work in dst.parents or dst in work.parents:
    raise ValueError(f"--export_to {str(export_to)!r} must lie outside --workdir {str(workdir)!r} "
                     "and not contain it.")
  if dst.exists() and not dst.is_dir():
    raise FileExistsError(f"--export_to {str(export_to)!r} is a file.")
  if dst.is_dir() and any(dst.iterdir()) and not _backbone_files(dst):
    raise FileExistsError(f"--export_to {str(export_to)!r} is a folder that does not hold an "
                          "exported backbone (config.json, flax_model.msgpack, tokenizer files "
                          "only); it is not replaced. Name a new or empty folder.")


def export(out: pathlib.Path, dst: pathlib.Path) -> None:
  """Copies the backbone folder `out` to `dst`, replacing an exported backbone there only once
  the copy is complete (a failed copy leaves the old one in place)."""
  tmp = dst.with_name(f".{dst.name}.incoming")
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(out, tmp)
  old = dst.with_name(f".{dst.name}.replaced")
  if dst.exists():
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
  tmp.rename(dst)
  shutil.rmtree(old, ignore_errors=True)


def main(argv):
  del argv
  cli.quiet_library_logs()
  workdir = pathlib.Path(_WORKDIR.value)
  export_to = pathlib.Path(_EXPORT_TO.value) if _EXPORT_TO.value else None
  check_outputs(workdir, export_to)
  cli.cache_compilations(workdir)
  out = workdir / "backbone"
  summary = centralized.pretrain_backbone(_CONFIG.value, out)
  print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}, indent=1))
  if export_to is not None:
    export(out, export_to)
    print(f"Exported to {export_to}")


if __name__ == "__main__":
  cli.run(main)
