"""JSON results on disk: per-round JSON lines, atomic JSON files, numpy → JSON values."""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Mapping

from absl import logging
import numpy as np


class JsonlWriter:
  """Per-round metrics as JSON lines; on resume, rows past the restored round are dropped.

  A file there without a checkpoint to resume from (a run killed before its first checkpoint,
  one whose checkpoints were all damaged, or another run's leftovers) is moved aside, not
  overwritten: `<name>.<time>.stale`, with a warning, and the run starts afresh.
  """

  def __init__(self, path: pathlib.Path, keep_through_round: int | None):
    self.path = path
    rows = []
    if path.exists() and keep_through_round is not None:
      # A line cut by a kill is dropped (`read_jsonl`); its round is redone.
      rows = [r for r in read_jsonl(path) if r.get("round", -1) <= keep_through_round]
    elif path.exists():
      stale = path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.stale")
      n = 1
      while stale.exists():
        stale, n = path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{n}.stale"), n + 1
      os.replace(path, stale)
      logging.warning("%s exists but there is no checkpoint to resume from: moved it to %s and "
                      "starting afresh.", path, stale)
    _write_atomic(path, "".join(dumps(r) + "\n" for r in rows))

  def write(self, row: Mapping[str, Any]) -> None:
    append_jsonl(self.path, row)


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """The rows of a JSON-lines file. A last line without its newline that does not parse is a
  write cut by a kill: dropped, with a warning (whoever wrote it redoes that row). Any other
  line that does not parse is an error naming the file and the line."""
  path = pathlib.Path(path)
  try:
    text = path.read_text()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e}); it was damaged after it was written.") from e
  lines = text.split("\n")
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == len(lines):  # the text after the last newline: an unfinished write
        logging.warning("%s: dropped its last line, cut off mid-write (%d characters).", path,
                        len(line))
        continue
      raise ValueError(f"{path}, line {number}: not a JSON row ({e}).") from e
  return rows


def read_json(path: str | pathlib.Path) -> Any:
  """The value of a JSON file; one that does not parse is an error naming the file."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e}); it was damaged after it was written (it is "
                     "written atomically). Remove it to recompute what it describes.") from e


def append_jsonl(path: pathlib.Path, row: Mapping[str, Any]) -> None:
  """Appends `row` as one line, flushed to disk. A cut last line left by a kill is first cut off
  the file, so the new row starts a line of its own rather than joining it."""
  if path.exists() and path.stat().st_size:
    with path.open("rb+") as f:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
        logging.warning("%s: cut off an unfinished last line before appending.", path)
  with path.open("a") as f:
    f.write(dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _write_atomic(path: pathlib.Path, text: str) -> None:
  """`text` to `path` through a temporary file, flushed to disk before it replaces `path`: a
  reader sees the old file or the new one, never a part."""
  tmp = path.with_suffix(path.suffix + ".tmp")
  with tmp.open("w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def to_jsonable(x: Any) -> Any:
  """Nested containers of numpy scalars/arrays -> plain JSON values (NaN/inf -> None)."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray) or (hasattr(x, "__array__") and hasattr(x, "shape")):
    return to_jsonable(np.asarray(x).tolist())  # numpy and device (jax) arrays
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, np.str_):
    return str(x)
  return x


def dumps(obj: Any, **kwargs: Any) -> str:
  """Standard JSON text of `obj` (through `to_jsonable`): a non-finite number is written as
  null, never as the `NaN` / `Infinity` tokens that strict parsers (jq, JavaScript, Go) refuse."""
  return json.dumps(to_jsonable(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  _write_atomic(pathlib.Path(path), dumps(obj, indent=1))
