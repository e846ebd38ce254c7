"""What the absl binaries in `experiments/` share around their `main`."""
from __future__ import annotations

from absl import logging


def quiet_library_logs() -> None:
  """Binaries: hide orbax/jax INFO chatter unless `--verbosity` was given on the command line."""
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  if not absl_flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
