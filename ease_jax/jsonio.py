"""JSON results on disk: per-round JSON lines, atomic JSON files, numpy → JSON values."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np


class JsonlWriter:
  """Per-round metrics as JSON lines; on resume, rows past the restored round are dropped."""

  def __init__(self, path: pathlib.Path, keep_through_round: int | None):
    self.path = path
    rows = []
    if path.exists() and keep_through_round is not None:
      rows = [r for r in read_jsonl(path) if r.get("round", -1) <= keep_through_round]
    elif path.exists():
      raise FileExistsError(f"{path} exists but no checkpoint to resume from; refusing to "
                            "overwrite it. Use a new --workdir.")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)

  def write(self, row: Mapping[str, Any]) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines() if l.strip()]


def to_jsonable(x: Any) -> Any:
  """Nested containers of numpy scalars/arrays -> plain JSON values (NaN/inf -> None)."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return to_jsonable(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, np.str_):
    return str(x)
  return x


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)
