"""The README's library example runs as written, from the repository root."""
import os
import pathlib
import re
import subprocess
import sys

from conftest import FAST_COMPILE_FLAGS

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _example() -> str:
  text = (ROOT / "README.md").read_text()
  section = text.split("## Using the library", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_using_the_library_example_runs(tmp_path):
  # A fresh folder that looks like the repository root (the example reads experiments/configs
  # and writes workdirs/example): nothing lands in the checkout.
  (tmp_path / "experiments").symlink_to(ROOT / "experiments")
  script = tmp_path / "example.py"
  script.write_text(_example())
  # The example sets what it needs itself (`avoid_cpu_hang`); the suite's compile flags only.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  forget_r1 = float(proc.stdout.strip().splitlines()[-1])
  assert 0.0 <= forget_r1 <= 100.0
  assert (tmp_path / "workdirs" / "example" / "train" / "metrics.jsonl").exists()
