"""What the absl binaries in `experiments/` share around their `main`.

`cli.run(main)` is `absl.app.run` with clean errors: bad input (a config value out of range, an
unknown key, a missing file, a request that names no data, a damaged checkpoint with nothing
intact to fall back to) ends with one line on stderr that names the problem, and exit code 2; a
round that failed (e.g. every client update non-finite) with one line and exit code 1; Ctrl-C with
one line saying how to resume, and exit code 130.
`--verbose` or `EASE_VERBOSE=1` shows the traceback instead; anything else (a bug) keeps its
traceback.
"""
from __future__ import annotations

import ast
import os
import shutil
import sys
import traceback
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging

VERBOSE_ENV = "EASE_VERBOSE"
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of errors (also "
                             f"{VERBOSE_ENV}=1).")
BAD_INPUT_EXIT = 2
FAILED_RUN_EXIT = 1
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def quiet_library_logs() -> None:
  """Binaries: hide orbax/jax INFO chatter unless `--verbosity` was given on the command line."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


COMPILATION_CACHE = "jax_cache"
# Every program, whatever its compile time (JAX's default keeps those over 1 s; tests use this
# too): EASE alone compiles 44 programs of ~0.3 s per benchmark cell, which add up; an entry is
# ~0.1 MB on the embedded default.
MIN_CACHED_COMPILE_S = 0.0
# Workdirs whose only content is the cache this process made: removed if bad input ends it.
_CACHE_ONLY_WORKDIRS: list[str] = []


def _writable_folder_above(path: str) -> bool:
  """Whether the nearest existing ancestor of `path` (or `path` itself) is a writable folder."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def cache_compilations(workdir: str | os.PathLike) -> str:
  """Binaries: JAX's persistent compilation cache in `<workdir>/jax_cache`, unless
  `JAX_COMPILATION_CACHE_DIR` names a folder already; returns the folder in use ('' when there
  is none: no env folder and a workdir that cannot be made, which the binary reports itself).

  The methods build their jitted programs per call, so every benchmark seed and request compiled
  the same programs again (498 s of the Intel benchmark's 59 min, 8-12 s per method and seed);
  from the cache a program with the same HLO loads instead, and the executable is the same one,
  so the numbers are too. In the workdir, not a user-wide folder: a fresh workdir starts cold, so
  its times are what a fresh machine sees, and a resumed run reuses its own compilations.

  JAX makes the folder at the first computation, which the loading code runs before every input
  is checked; so when bad input ends the binary (`run`), a workdir that did not exist before and
  holds nothing but the cache is removed again.
  """
  import jax  # pylint: disable=g-import-not-at-top  (the binaries' XLA flags come first)
  folder = jax.config.jax_compilation_cache_dir
  if not folder:
    workdir = os.fspath(workdir)
    if not _writable_folder_above(workdir):  # Also a workdir that is a file.
      return ""
    if not os.path.exists(workdir):
      _CACHE_ONLY_WORKDIRS.append(workdir)
    folder = os.path.join(workdir, COMPILATION_CACHE)
    jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_S)
  return folder


def _remove_cache_only_workdirs() -> None:
  """Bad input: the workdirs `cache_compilations` found absent, if they hold only the cache."""
  for workdir in _CACHE_ONLY_WORKDIRS:
    if os.path.isdir(workdir) and set(os.listdir(workdir)) <= {COMPILATION_CACHE}:
      shutil.rmtree(workdir, ignore_errors=True)


def _verbose() -> bool:
  env = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")
  if flags.FLAGS.is_parsed():
    return env or _VERBOSE.value
  # While the flags parse (a config file that failed to load): as written on the command line.
  return env or any(a.lstrip("-").lower() in ("verbose", "verbose=true", "verbose=1")
                    for a in sys.argv[1:])


def one_line(error: BaseException) -> str:
  """The error's message on one line (a KeyError's without the quotes repr adds)."""
  msg = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return " ".join(str(msg).split()) or type(error).__name__


def _unquoted(error: BaseException) -> str:
  """The message of an error whose message is the repr of another's (as ml_collections raises)."""
  msg = error.args[0] if error.args else str(error)
  if isinstance(msg, BaseException):  # AttributeError(KeyError(...)): the inner message.
    return _unquoted(msg)
  while isinstance(msg, str) and len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":
    try:
      msg = ast.literal_eval(msg)
    except (ValueError, SyntaxError):
      break
  return " ".join(str(msg).split())


def _fail(error: BaseException, code: int) -> None:
  print(f"error: {one_line(error)} (for the traceback: --verbose or {VERBOSE_ENV}=1)",
        file=sys.stderr)
  sys.exit(code)


def _bad_input_errors() -> tuple[type[BaseException], ...]:
  from ease_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from ease_jax import validation  # pylint: disable=g-import-not-at-top
  # OSError: a missing, existing, unreadable or unwritable path, and a read-only or full disk
  # (EROFS, ENOSPC are no PermissionError).
  return (validation.ConfigError, checkpointing.CheckpointMismatchError,
          checkpointing.CheckpointCorruptError, ValueError, KeyError, OSError)


def _config_file_failure(error: BaseException, argv: Sequence[str]) -> str | None:
  """Where a config file named on the command line failed while it loaded, in one line: its
  syntax error, or the exception its own code raised (the innermost of its lines in the
  traceback). None when the error did not come from such a file."""
  named = set()
  for arg in argv[1:]:
    value = arg.split("=", 1)[-1].split(":", 1)[0]  # `--config=path.py:override`
    if value.endswith(".py"):
      named.add(os.path.realpath(value))
  # ml_collections re-raises a config's ValueError or TypeError as a new one holding the
  # traceback as text, and absl wraps that again: the config's own error is down the chain.
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, SyntaxError) and error.filename:
      if os.path.realpath(error.filename) in named:
        return (f"the config file {error.filename!r} has a syntax error at line "
                f"{error.lineno}: {error.msg}")
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.realpath(f.filename) in named]
    if frames:
      where = frames[-1]
      return (f"the config file {where.filename!r} raised {type(error).__name__} at line "
              f"{where.lineno} (in {where.name}): {_unquoted(error)}")
    error = error.__cause__ or error.__context__
  return None


def _parse_flags(argv: Sequence[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  # ml_collections reports a bad `--config.x=...` override as a chain of KeyError /
  # AttributeError ("'rundos' Did you mean "rounds" ..."); absl its own errors as flags.Error.
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    if _verbose():
      raise
    failure = _config_file_failure(e, argv)
    _fail(ValueError(failure or f"bad command-line flag: {_unquoted(e)}"), BAD_INPUT_EXIT)
    raise  # unreachable
  # A config file is Python that runs while the flags parse: its own errors are bad input too.
  except Exception as e:  # pylint: disable=broad-except
    failure = _config_file_failure(e, argv)
    if failure is None or _verbose():
      raise
    _fail(ValueError(failure), BAD_INPUT_EXIT)
    raise  # unreachable


def check_config_flags() -> None:
  """A `--config` file that did not load is bad input named by its flag and path; ml_collections
  otherwise defers the error to the config's first use, as an IOError about "an earlier
  failure"."""
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if type(flag.value).__name__ != "_ErrorConfig":
      continue
    cause = object.__getattribute__(flag.value, "_error")
    path = getattr(flag, "config_filename", None) or flag.serialize()
    missing = "No such file or directory" in str(cause) or "empty string" in str(cause)
    if missing and not os.path.isfile(str(path).split(":", 1)[0]):
      raise FileNotFoundError(f"--{name}: no config file {path!r}.")
    raise ValueError(f"--{name}: the config file {path!r} failed to load: "
                     f"{' '.join(str(cause).split())}")


def _workdir_given() -> None:
  """An empty `--workdir=` would write runs and caches into the current folder."""
  if "workdir" in flags.FLAGS and flags.FLAGS["workdir"].value is not None and not str(
      flags.FLAGS["workdir"].value).strip():
    raise ValueError("--workdir is empty; name a folder for the run's outputs.")


def run(main: Callable[[Sequence[str]], Any]) -> None:
  """`app.run(main)` with the clean errors described in the module docstring."""
  from ease_jax.federated import driver  # pylint: disable=g-import-not-at-top

  def wrapped(argv):
    try:
      check_config_flags()
      _workdir_given()
      return main(argv)
    except KeyboardInterrupt:
      if _verbose():
        raise
      print("interrupted: what was checkpointed is kept; rerun the same command to resume.",
            file=sys.stderr)
      sys.exit(INTERRUPTED_EXIT)
    except driver.RoundFailedError as e:
      if _verbose():
        raise
      _fail(e, FAILED_RUN_EXIT)
    except _bad_input_errors() as e:
      _remove_cache_only_workdirs()
      if _verbose():
        raise
      _fail(e, BAD_INPUT_EXIT)

  app.run(wrapped, flags_parser=_parse_flags)
