#!/usr/bin/env bash
# The accelerator benchmark as one command (BENCHMARKS.md, "Accelerator"):
#   bash benchmarks/accelerator.sh --out "$OUT" [more accelerator.py flags]
cd "$(dirname "$0")/.." && PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" benchmarks/accelerator.py "$@"
