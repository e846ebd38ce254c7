"""Orbax checkpoints of a whole federated run, guarded against mixing configs and against damage.

A checkpoint holds a pytree `state` (LoRA, optimizer states, round, RNG keys, update history, ...)
and a JSON `meta` with the config fingerprint that produced it. Restoring into a run whose
fingerprint differs is an error that names the differing keys, so a workdir is never silently
resumed, or overwritten, by another experiment.

Integrity. `save` also records in `meta["integrity"]` every array's path, dtype, shape and sha256,
and, once orbax has committed the step, writes `<step>/ease_files.json` (size and sha256 of every
file orbax wrote). `restore_latest` tries the newest step first: a step whose files cannot be read
(truncated JSON, missing or truncated array data, ...), whose arrays differ from their recorded
sha256 (silent corruption that orbax reads without complaint), or whose layout differs from `like`
while an older step matches it, is damaged. The run resumes from the newest intact step; the
damaged step folders newer than it are moved to `<checkpoints>/damaged/<step>.<time>` (orbax
ignores that folder, also when it deletes old steps for `max_to_keep`) with one WARNING line each.
If no step is intact, `CheckpointCorruptError` names each step and the file that failed, and
nothing is moved or deleted. Checkpoints written before these records are restored unverified.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging as py_logging
import os
import pathlib
import re
import sys
import threading
import time
from typing import Any, Iterator, Mapping

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

FILES_MANIFEST = "ease_files.json"  # Written into each step folder after orbax commits it.
DAMAGED_DIR = "damaged"  # Not a step name for orbax (no digits, no `_<digits>` suffix).
_INTEGRITY_VERSION = 1


class CheckpointMismatchError(ValueError):
  """The checkpoint in a workdir was written by a different config (or state layout)."""


@dataclasses.dataclass(frozen=True)
class DamagedCheckpoint:
  """One step that could not be restored: the file (or folder) that failed and why."""
  step: int
  file: str
  reason: str
  moved_to: str | None = None

  def __str__(self) -> str:
    return f"step {self.step}: {self.file}: {self.reason}"


class CheckpointCorruptError(ValueError):
  """No checkpoint (of those tried) could be restored intact; nothing was moved or deleted."""

  def __init__(self, message: str, damaged: tuple[DamagedCheckpoint, ...] = ()):
    super().__init__(message)
    self.damaged = tuple(damaged)


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
  step: int
  state: PyTree
  meta: dict[str, Any]
  skipped: tuple[DamagedCheckpoint, ...] = ()  # Newer, damaged steps (moved aside).
  verified: bool = True  # False for checkpoints written without checksums.


# Config entries added after runs were fingerprinted without them, with a value that every earlier
# run had: left out of every fingerprint at that value, so those runs' checkpoints, populations
# and benchmark rows still match (`(dotted key regex, value)`).
LEFT_OUT_AT = ((re.compile(r"plants\.[^.]+\.trigger\.opacity"), 1.0),)  # 1: a pasted patch


def fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
  """JSON-able, flat `{dotted.key: value}` view of the config entries that define a run
  (without the `LEFT_OUT_AT` entries at their value)."""
  flat: dict[str, Any] = {}

  def visit(prefix, value):
    if hasattr(value, "items"):
      for k, v in value.items():
        visit(f"{prefix}.{k}" if prefix else str(k), v)
    else:
      flat[prefix] = value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)

  visit("", config)
  for pattern, value in LEFT_OUT_AT:
    for k in [k for k in flat if pattern.fullmatch(k)]:
      if not isinstance(flat[k], bool) and flat[k] == value:
        del flat[k]
  return flat


def fingerprint_hash(fp: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


# Fingerprint keys added after checkpoints were written without them: such a checkpoint cannot
# be checked on that key and is resumed as before (the check applies to new checkpoints).
ADDED_LATER = frozenset({"data.files_sha256"})


def diff_fingerprints(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """`"key: checkpoint=… vs now=…"` for every key whose value differs (absent counts as a
  value, except for an `ADDED_LATER` key absent from `saved`)."""
  keys = sorted((set(saved) | set(current)) - {k for k in ADDED_LATER if k not in saved})
  return [f"{k}: checkpoint={saved.get(k, '<absent>')!r} vs now={current.get(k, '<absent>')!r}"
          for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]


# ----------------------------------------------------------------------------------------------
# Array records: path -> dtype, shape, sha256 of the bytes.


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaves(tree: PyTree) -> dict[str, np.ndarray]:
  """`{"a/b/0": array}` in a fixed (sorted) order, the arrays as numpy."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {"/".join(_key_name(k) for k in path): np.asarray(leaf) for path, leaf in flat}
  return dict(sorted(out.items()))


def _array_sha256(x: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(x).reshape(-1).view(np.uint8)).hexdigest()


def _layout(leaves: Mapping[str, np.ndarray]) -> dict[str, tuple[str, list[int]]]:
  return {k: (v.dtype.name, list(v.shape)) for k, v in leaves.items()}


def integrity_record(state: PyTree) -> dict[str, Any]:
  """What `save` stores in `meta["integrity"]`: each array's dtype, shape and sha256."""
  return {"version": _INTEGRITY_VERSION, "algorithm": "sha256",
          "leaves": {k: {"dtype": v.dtype.name, "shape": list(v.shape), "sha256": _array_sha256(v)}
                     for k, v in _leaves(state).items()}}


def _fmt_layout(entry) -> str:
  return "<absent>" if entry is None else f"{entry[0]}{list(entry[1])}"


def _diff_layouts(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  keys = sorted(set(saved) | set(current))
  norm = lambda e: None if e is None else (e[0], list(e[1]))  # noqa: E731
  return [f"{k}: checkpoint={_fmt_layout(saved.get(k))} vs now={_fmt_layout(current.get(k))}"
          for k in keys if norm(saved.get(k)) != norm(current.get(k))]


# ----------------------------------------------------------------------------------------------
# Files: size and sha256 of everything orbax wrote for a step.


def _file_sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _write_files_manifest(step_dir: pathlib.Path) -> None:
  files = {}
  for p in sorted(step_dir.rglob("*")):
    if p.is_file() and p.name not in (FILES_MANIFEST, FILES_MANIFEST + ".tmp"):
      files[p.relative_to(step_dir).as_posix()] = {"size": p.stat().st_size,
                                                    "sha256": _file_sha256(p)}
  tmp = step_dir / (FILES_MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"version": _INTEGRITY_VERSION, "files": files}, f, indent=0, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, step_dir / FILES_MANIFEST)


def _changed_files(step_dir: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
  """Files that differ from `ease_files.json` (empty when it is absent or unreadable)."""
  try:
    files = json.loads((step_dir / FILES_MANIFEST).read_text())["files"]
  except (OSError, ValueError, KeyError, TypeError):
    return []
  changed = []
  for rel, rec in sorted(files.items()):
    p = step_dir / rel
    if not p.is_file():
      changed.append((p, "missing"))
    elif (size := p.stat().st_size) != rec["size"]:
      changed.append((p, f"{'truncated' if size < rec['size'] else 'resized'}: {size} bytes, "
                         f"{rec['size']} were written"))
    elif _file_sha256(p) != rec["sha256"]:
      changed.append((p, "content differs from what was written (sha256)"))
  return changed


# ----------------------------------------------------------------------------------------------
# Quiet orbax/tensorstore while restoring a step that may be damaged.
#
# When one array read fails, orbax's restore raises and closes its asyncio loop while tensorstore
# still has the other reads in flight; each of those later calls `loop.call_soon_threadsafe` on the
# closed loop from a tensorstore thread and reports `RuntimeError: Event loop is closed` through
# `sys.unraisablehook` (a bare traceback on stderr, dozens per failed restore). Those callbacks
# carry no information (the failure itself was raised), so a filter drops exactly them.


class _OrphanedCallbacks:

  def __init__(self):
    self.count = 0
    self.last = 0.0
    self._lock = threading.Lock()

  def note(self):
    with self._lock:
      self.count += 1
      self.last = time.monotonic()


_ORPHANS = _OrphanedCallbacks()


def _is_orphaned_callback(unraisable) -> bool:
  exc = getattr(unraisable, "exc_value", None)
  if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
    return False
  tb = getattr(unraisable, "exc_traceback", None) or exc.__traceback__
  while tb is not None:
    if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
      return True
    tb = tb.tb_next
  return False


class _DropOrphanedReadErrors(py_logging.Filter):
  """The other channel of the same orphans: a read that failed after orbax gave up leaves a
  future (or task) nobody awaits, and asyncio logs "Future/Task exception was never retrieved"
  (ERROR) when it is collected. Drops exactly those whose exception is a tensorstore read error."""

  def filter(self, record):
    exc = record.exc_info[1] if record.exc_info else None
    if (record.getMessage().startswith(("Future exception was never retrieved",
                                        "Task exception was never retrieved"))
        and isinstance(exc, ValueError) and "Error reading" in str(exc)):
      _ORPHANS.note()
      return False
    return True


def _install_orphan_filter() -> None:
  """Wraps the current `sys.unraisablehook` (once) to drop orphaned tensorstore callbacks, and
  filters asyncio's records of their never-retrieved failed reads (once)."""
  asyncio_logger = py_logging.getLogger("asyncio")
  if not any(isinstance(f, _DropOrphanedReadErrors) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_DropOrphanedReadErrors())
  previous = sys.unraisablehook
  if getattr(previous, "_ease_drops_orphaned_callbacks", False):
    return

  def hook(unraisable):
    if _is_orphaned_callback(unraisable):
      _ORPHANS.note()
      return
    previous(unraisable)

  hook._ease_drops_orphaned_callbacks = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def _settle_after_failure(quiet_s: float = 0.25, max_s: float = 3.0) -> None:
  """Lets tensorstore's reads still in flight after a failed restore finish (quiet_s without an
  orphaned callback), so none fires later, e.g. while the folder is being moved aside."""
  start = time.monotonic()
  while time.monotonic() - start < max_s:
    if time.monotonic() - max(start, _ORPHANS.last) >= quiet_s:
      return
    time.sleep(0.02)


class _HoldOrbaxRecords(py_logging.Filter):
  """Holds back orbax's own log records (absl logger) during an attempt."""

  def __init__(self):
    super().__init__()
    self.held: list[py_logging.LogRecord] = []

  def filter(self, record):
    if "/orbax/" in record.pathname.replace(os.sep, "/"):
      self.held.append(record)
      return False
    return True


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Orbax's records are replayed if the body succeeds and dropped if it fails (the failure is
  reported by the caller, once)."""
  _install_orphan_filter()
  absl_logger = py_logging.getLogger("absl")
  hold = _HoldOrbaxRecords()
  absl_logger.addFilter(hold)
  try:
    yield
  except BaseException:
    absl_logger.removeFilter(hold)
    _settle_after_failure()
    if hold.held:
      logging.debug("Dropped %d orbax log records of a failed restore.", len(hold.held))
    raise
  absl_logger.removeFilter(hold)
  for record in hold.held:
    absl_logger.handle(record)


# ----------------------------------------------------------------------------------------------


class _Damage(Exception):
  """Internal: one step failed (`layout`: the state's layout differs from `like`)."""

  def __init__(self, damaged: DamagedCheckpoint, layout: bool = False):
    super().__init__(str(damaged))
    self.damaged = damaged
    self.layout = layout


def _arrays(n: int) -> str:
  return f"{n} array" + ("" if n == 1 else "s")


def _short(message: str, limit: int = 300) -> str:
  message = str(message).split(" [tensorstore_spec=")[0].strip().splitlines()
  message = message[0] if message else ""
  return message if len(message) <= limit else message[:limit - 3] + "..."


def _read_json(path: pathlib.Path, step: int) -> Any:
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise _Damage(DamagedCheckpoint(step, str(path), "missing")) from None
  except (OSError, UnicodeDecodeError) as e:
    raise _Damage(DamagedCheckpoint(step, str(path), f"unreadable ({_short(e)})")) from None
  try:
    value = json.loads(text)
  except ValueError as e:
    raise _Damage(DamagedCheckpoint(step, str(path), f"not valid JSON ({_short(e)}; "
                                    f"{len(text)} bytes)")) from None
  if not isinstance(value, dict):
    raise _Damage(DamagedCheckpoint(step, str(path), "not a JSON object"))
  return value


def _blame(step_dir: pathlib.Path, error: BaseException | None) -> list[tuple[pathlib.Path, str]]:
  """The file(s) behind a failed restore: from `ease_files.json`, else from the error message."""
  changed = _changed_files(step_dir)
  if changed or error is None:
    return changed
  message = str(error)
  named = [pathlib.Path(p) for p in re.findall(r'local file "([^"]+)"', message)]
  named = [p for p in named if p.is_file() or not p.exists()]
  if named:
    return [(named[-1], "named by the failed read")]
  # "Requested byte range [0, N) is not valid for value of size M": the file now has M bytes.
  if (m := re.search(r"not valid for value of size (\d+)", message)):
    size = int(m.group(1))
    same = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size == size]
    if len(same) == 1:
      return [(same[0], f"truncated to {size} bytes")]
  return []


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for `{state pytree, meta json}` pairs."""

  def __init__(self, directory: str | pathlib.Path, config_fingerprint: Mapping[str, Any],
               max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    for folder in (self.directory, self.directory / DAMAGED_DIR):
      if folder.exists() and not folder.is_dir():
        # Found now, not at the first save after a round's work.
        raise NotADirectoryError(f"Checkpoint folder {str(folder)!r} is a file; move it away "
                                 f"or choose another --workdir.")
    self.fingerprint = dict(config_fingerprint)
    self._manager = ocp.CheckpointManager(
        self.directory,
        # A save killed mid-write leaves a `<step>.orbax-checkpoint-tmp-*` folder; remove
        # such leftovers when the manager opens the directory (orbax keeps them by default).
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(int(step))

  def save(self, step: int, state: PyTree, extra_meta: Mapping[str, Any] | None = None) -> None:
    state = jax.tree.map(np.asarray, state)
    meta = {"fingerprint": self.fingerprint, "step": int(step), **(extra_meta or {}),
            "integrity": integrity_record(state)}
    saved = self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()
    if not saved:  # Orbax skips, silently, a step not above its latest one.
      raise ValueError(f"Checkpoint step {step} was not written to {self.directory}: orbax only "
                       f"saves steps above the latest one ({self.latest_step()}).")
    _write_files_manifest(self.step_dir(step))

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    try:
      return _read_json(self.step_dir(step) / "meta" / "metadata", step)
    except _Damage as e:
      raise self._corrupt_error([e.damaged]) from None

  def check_compatible(self, step: int | None = None) -> None:
    """Raises CheckpointMismatchError if the saved fingerprint differs from this run's."""
    self._check_fingerprint(self.read_meta(step))

  def _check_fingerprint(self, meta: Mapping[str, Any]) -> None:
    saved = meta.get("fingerprint", {})
    diffs = diff_fingerprints(saved if isinstance(saved, Mapping) else {}, self.fingerprint)
    if diffs:
      raise CheckpointMismatchError(
          f"The checkpoint in {self.directory} was written by a different config "
          f"({len(diffs)} differing keys: {'; '.join(diffs[:5])}). Use a new --workdir, or the "
          "config that wrote it; nothing was overwritten.")

  def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
    """Restores one step into the structure/shapes of `like` (after checking compatibility).

    Raises CheckpointMismatchError for another config or state layout, CheckpointCorruptError
    (naming the file) if the step is damaged; moves nothing (see `restore_latest`)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    try:
      state, meta, _ = self._restore_step(like, step)
    except _Damage as e:
      if e.layout:
        raise self._layout_error([e.damaged]) from None
      raise self._corrupt_error([e.damaged]) from None
    return state, meta

  def restore_latest(self, like: PyTree) -> RestoredCheckpoint | None:
    """The newest intact checkpoint, restored into `like`; None if there is no checkpoint.

    Damaged newer steps are moved to `<directory>/damaged/` (one WARNING each) once an intact
    step has been restored, so that `latest_step()` and later saves skip them. A fingerprint
    mismatch raises CheckpointMismatchError at once. If no step is intact, raises
    CheckpointCorruptError (or CheckpointMismatchError if every step merely has another state
    layout than `like`) and moves nothing."""
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      damaged_dir = self.directory / DAMAGED_DIR
      if damaged_dir.is_dir() and any(damaged_dir.iterdir()):
        logging.warning("No intact checkpoint in %s (damaged ones are kept in %s); starting "
                        "afresh.", self.directory, damaged_dir)
      return None
    failed: list[_Damage] = []
    for step in steps:
      try:
        state, meta, verified = self._restore_step(like, step)
      except _Damage as e:
        failed.append(e)
        continue
      skipped = tuple(self._move_aside(e.damaged, step) for e in failed)
      if skipped:
        self._manager.reload()
      if not verified:
        logging.info("Checkpoint step %d in %s has no checksums (written by an older version); "
                     "restored unverified.", step, self.directory)
      return RestoredCheckpoint(step, state, meta, skipped, verified)
    if all(e.layout for e in failed):
      raise self._layout_error([e.damaged for e in failed])
    raise self._corrupt_error([e.damaged for e in failed])

  def close(self) -> None:
    self._manager.close()

  # --------------------------------------------------------------------------------------------

  def _restore_step(self, like: PyTree, step: int) -> tuple[PyTree, dict[str, Any], bool]:
    """(state, meta, verified); raises _Damage or CheckpointMismatchError."""
    step_dir = self.step_dir(step)
    meta_file = step_dir / "meta" / "metadata"
    meta = _read_json(meta_file, step)
    self._check_fingerprint(meta)
    if meta.get("step", step) != step:
      raise _Damage(DamagedCheckpoint(step, str(meta_file), f"says step {meta.get('step')!r}"))
    like_leaves = _leaves(like)
    integrity = meta.get("integrity")
    records = integrity.get("leaves") if isinstance(integrity, Mapping) else None
    if integrity is not None and not isinstance(records, Mapping):
      raise _Damage(DamagedCheckpoint(step, str(meta_file), "unreadable integrity record"))
    if records is not None:
      try:
        saved_layout = {k: (r["dtype"], r["shape"]) for k, r in records.items()}
        if not all(isinstance(r["sha256"], str) for r in records.values()):
          raise TypeError("a sha256 that is not a string")
      except (KeyError, TypeError):
        raise _Damage(DamagedCheckpoint(step, str(meta_file),
                                        "unreadable integrity record")) from None
      diffs = _diff_layouts(saved_layout, _layout(like_leaves))
      if diffs:
        raise _Damage(DamagedCheckpoint(
            step, str(step_dir / "state"),
            f"state layout differs from this run's ({_arrays(len(diffs))}: "
            f"{'; '.join(diffs[:5])})"), layout=True)
    _read_json(step_dir / "state" / "_METADATA", step)  # Orbax would raise a bare JSONDecodeError.

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.tree.map(np.asarray, like))
    try:
      with _quiet_orbax():
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # pylint: disable=broad-exception-caught
      if records is None and re.search(r"[Ss]tructure|tree structures do not match", str(e)):
        raise _Damage(DamagedCheckpoint(step, str(step_dir / "state"),
                                        f"state layout differs from this run's ({_short(e)})"),
                      layout=True) from None
      raise self._damage(step, f"restore failed: {_short(e)}", e) from None
    state = restored["state"]

    got = _leaves(state)
    # Orbax restores an array's shape as saved, whatever `like` says: check it.
    diffs = _diff_layouts(_layout(got), _layout(like_leaves))
    if diffs:
      if records is None:
        raise _Damage(DamagedCheckpoint(
            step, str(step_dir / "state"),
            f"state layout differs from this run's ({_arrays(len(diffs))}: "
            f"{'; '.join(diffs[:5])})"), layout=True)
      raise self._damage(step, f"restored arrays disagree with the recorded layout "
                               f"({'; '.join(diffs[:3])})")
    if records is not None:
      bad = [k for k, v in got.items() if _array_sha256(v) != records[k]["sha256"]]
      if bad:
        raise self._damage(step, f"{_arrays(len(bad))} not matching the sha256 recorded at save "
                                 f"({', '.join(bad[:5])})")
    return state, meta, records is not None

  def _damage(self, step: int, reason: str, error: BaseException | None = None) -> _Damage:
    step_dir = self.step_dir(step)
    blamed = _blame(step_dir, error)
    if not blamed:
      return _Damage(DamagedCheckpoint(step, str(step_dir / "state"), reason))
    files = ", ".join(str(p) for p, _ in blamed[:3]) + (" ..." if len(blamed) > 3 else "")
    why = "; ".join(w for _, w in blamed[:3])
    return _Damage(DamagedCheckpoint(step, files, f"{why}; {reason}"))

  def _move_aside(self, damaged: DamagedCheckpoint, resume_step: int) -> DamagedCheckpoint:
    src = self.step_dir(damaged.step)
    dest_dir = self.directory / DAMAGED_DIR
    dest_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = dest_dir / f"{damaged.step}.{stamp}"
    n = 1
    while dest.exists():
      dest, n = dest_dir / f"{damaged.step}.{stamp}.{n}", n + 1
    os.rename(src, dest)
    logging.warning("Checkpoint step %d in %s is damaged: %s: %s. Moved it to %s; resuming from "
                    "step %d.", damaged.step, self.directory, damaged.file, damaged.reason, dest,
                    resume_step)
    return dataclasses.replace(damaged, moved_to=str(dest))

  def _corrupt_error(self, damaged: list[DamagedCheckpoint]) -> CheckpointCorruptError:
    what = ("Checkpoint " if len(damaged) == 1 else f"Every checkpoint ({len(damaged)}) ") + \
        f"in {self.directory} is damaged: "
    return CheckpointCorruptError(
        what + "; ".join(str(d) for d in damaged) + ". Nothing was moved or deleted. To start "
        "afresh, move these step folders out of the directory (or use a new --workdir); to "
        "resume, restore the files from a copy.", tuple(damaged))

  def _layout_error(self, damaged: list[DamagedCheckpoint]) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"The checkpoints in {self.directory} hold another state layout than this run builds: "
        + "; ".join(f"step {d.step}: {d.reason}" for d in damaged) + ". Use a new --workdir, or "
        "the code and config that wrote them; nothing was overwritten or moved.")
