#!/usr/bin/env bash
# Downloads into .whl/ (untracked: listed in .git/info/exclude) the wheels that the GPU machine
# lacks for benchmarks/accelerator.py, for its Python 3.12 on manylinux x86-64 (it has no network).
#
# What the benchmark imports: everything it loads (accelerator.py, torch_reference.py, ease_jax with
# ease_jax.unlearning.ease and ease_jax.configs, torch, transformers), mapped to distributions with
# importlib.metadata.packages_distributions(), against the machine's package list
# (the device tool's KINDS.md, "Python packages already there"). All are there but ml-collections
# (ease_jax.configs and ease_jax.unlearning: the GSD measurement); its own needs, absl-py and
# PyYAML, are there. Pinned as in requirements.txt.
#
#   bash benchmarks/download_wheels.sh        # then name .whl in the device run's carry
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(ml-collections==1.1.0)
PY=${PYTHON:-python3}

exclude=$(git rev-parse --git-path info/exclude)  # Also right in a worktree (.git is a file).
mkdir -p "$(dirname "$exclude")"
if ! grep -qxF '/.whl/' "$exclude" 2>/dev/null; then
  [[ -s "$exclude" && -n "$(tail -c1 "$exclude")" ]] && echo >>"$exclude"  # End the last line.
  echo '/.whl/' >>"$exclude"
fi
rm -rf .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
if git status --porcelain --ignored=no .whl | grep -q .; then
  echo "error: .whl/ is not ignored by git" >&2
  exit 1
fi
ls -l .whl
du -sh .whl
