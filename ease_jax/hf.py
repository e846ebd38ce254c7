"""Loading and saving Hugging Face CLIP checkpoint folders, without torch.

A checkpoint folder holds `config.json` (a `transformers.CLIPConfig`) and weights in one of:

  * `model.safetensors` (or sharded, with `model.safetensors.index.json`), written either by
    PyTorch (`metadata["format"] == "pt"`: torch names and layouts, converted here) or by Flax
    (`"flax"`: `.`-joined Flax paths);
  * `flax_model.msgpack` (or sharded, `flax_model.msgpack.index.json`), as written by
    `FlaxCLIPModel.save_pretrained`;
  * `pytorch_model.bin`, only when torch happens to be installed (it is a pickle).

The loaded tree is exactly `FlaxCLIPModel.params`, which is also `ease_jax.model.CLIP.init`'s tree,
and is checked against it (missing / unexpected keys, shapes) before it is returned.
`save_clip` writes `config.json` + `flax_model.msgpack`, which `FlaxCLIPModel.from_pretrained` and
`load_clip` both read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Mapping

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ease_jax.model import CLIP, CLIPConfig, activation

Params = Mapping[str, Any]

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_INDEX_NAME = "flax_model.msgpack.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
PREPROCESSOR_NAME = "preprocessor_config.json"
# Searched in this order; the first one present is read.
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME, FLAX_WEIGHTS_NAME, FLAX_INDEX_NAME,
                TORCH_WEIGHTS_NAME)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_MAX_LISTED = 5  # Offending paths listed per category in a validation error.


def resolve_checkpoint(path_or_repo_id: str | os.PathLike[str],
                       cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
  """A local checkpoint folder, or a Hugging Face repo id found in the local HF cache.

  Nothing is downloaded: a repo id resolves only if a snapshot of it is already cached
  (`cache_dir`, default `$HF_HUB_CACHE`).

  Raises:
    FileNotFoundError: neither a folder nor a cached repo of that name exists.
  """
  path = pathlib.Path(path_or_repo_id).expanduser()
  if path.is_dir():
    return path
  if path.exists():
    raise FileNotFoundError(f"{str(path)!r} is a file; expected a checkpoint folder containing "
                            f"{CONFIG_NAME} and weights.")
  name = str(path_or_repo_id)
  if not _REPO_ID.match(name):
    raise FileNotFoundError(f"Checkpoint folder {name!r} does not exist.")
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  # The submodule explicitly: `huggingface_hub.constants` is lazy until something imports it.
  from huggingface_hub import constants as hf_constants  # pylint: disable=g-import-not-at-top
  cache = cache_dir if cache_dir is not None else hf_constants.HF_HUB_CACHE
  try:
    snapshot = huggingface_hub.snapshot_download(name, local_files_only=True, cache_dir=cache_dir)
  except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
    raise FileNotFoundError(
        f"No checkpoint folder {name!r} and no cached snapshot of Hugging Face repo {name!r} in "
        f"{str(cache)!r} (offline lookup only: {type(e).__name__}).") from e
  return pathlib.Path(snapshot)


def load_clip(path_or_repo_id: str | os.PathLike[str], dtype: Any = jnp.float32, *,
              cache_dir: str | os.PathLike[str] | None = None) -> tuple[CLIPConfig, dict[str, Any]]:
  """Reads a Hugging Face CLIP checkpoint into our config and `FlaxCLIPModel`-layout params.

  Args:
    path_or_repo_id: checkpoint folder, or a repo id present in the local HF cache.
    dtype: floating dtype of the returned arrays.
    cache_dir: HF cache to look repo ids up in.

  Returns:
    (config, params): params is a nested dict of `jax.Array`s with `CLIP(config).init`'s
    structure and shapes.

  Raises:
    FileNotFoundError: no folder, no `config.json`, or no weight file.
    ValueError: a `config.json` that is not JSON, not a CLIP model's or has sizes of the wrong
      type; an unreadable weight file, or weights that do not fit the config (missing or
      unexpected keys, shape mismatches).
  """
  ckpt = resolve_checkpoint(path_or_repo_id, cache_dir)
  config_file = ckpt / CONFIG_NAME
  if not config_file.is_file():
    raise FileNotFoundError(f"{str(ckpt)!r} has no {CONFIG_NAME}; not a Hugging Face checkpoint.")
  config = _read_config(config_file)
  flat, weights_file = _read_weights(ckpt)
  # PyTorch checkpoints store the scalar `logit_scale` as shape [1] (safetensors has no 0-d).
  if np.shape(flat.get("logit_scale", 0.0)) == (1,):
    flat["logit_scale"] = np.reshape(flat["logit_scale"], ())
  _validate(flat, config, f"{weights_file} (config {config_file})")
  flat = {p: jnp.asarray(np.asarray(x, dtype)) for p, x in flat.items()}
  return config, traverse_util.unflatten_dict(flat, sep="/")


def save_clip(out_dir: str | os.PathLike[str], config: CLIPConfig, params: Params,
              tokenizer: Any = None, *, image_processor: Any = None,
              extra_files: Mapping[str, bytes] | None = None, overwrite: bool = False) -> None:
  """Writes a checkpoint folder that `load_clip` and `FlaxCLIPModel.from_pretrained` read.

  Files: `config.json`, `flax_model.msgpack` (`flax.serialization.to_bytes(params)`, as
  transformers writes it), when given, the tokenizer's / image processor's files, and
  `extra_files` (name -> bytes, e.g. a training summary). The folder is assembled next to
  `out_dir` and renamed into place, so an interrupted save never leaves a half-written
  checkpoint at `out_dir`; what an earlier save interrupted by a kill left next to it is
  cleared first (`recover_interrupted_replace`).

  Raises:
    FileExistsError: `out_dir` is a file, or a non-empty folder and `overwrite` is False.
    ValueError: `params` does not match `config`.
  """
  out = pathlib.Path(out_dir).expanduser()
  if out.is_symlink():  # the link stays; the folder it points to is what is replaced
    out = out.resolve()
  if out.parent.is_dir():  # Before the checks: a folder put back is an existing checkpoint.
    recover_interrupted_replace(out)
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"Cannot save a checkpoint to {str(out)!r}: it is a file.")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise FileExistsError(f"Checkpoint folder {str(out)!r} exists and is not empty; pass "
                          "overwrite=True to replace it.")
  params = flax.core.unfreeze(jax.device_get(params))
  flat = traverse_util.flatten_dict(params, sep="/")
  _validate(flat, config, "params passed to save_clip")

  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    hf_config = config.to_hf()
    hf_config.architectures = ["CLIPModel"]
    hf_config.save_pretrained(tmp)
    (tmp / FLAX_WEIGHTS_NAME).write_bytes(flax.serialization.msgpack_serialize(
        traverse_util.unflatten_dict({p: np.asarray(x) for p, x in flat.items()}, sep="/")))
    if tokenizer is not None:
      tokenizer.save_pretrained(tmp)
    if image_processor is not None:
      image_processor.save_pretrained(tmp)
    for name, data in (extra_files or {}).items():
      if pathlib.PurePath(name).name != name:
        raise ValueError(f"extra file name {name!r} must be a plain file name.")
      (tmp / name).write_bytes(data)
    # mkdtemp makes the folder private (0700); a checkpoint gets a new folder's usual mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def load_tokenizer_and_processor(path_or_repo_id: str | os.PathLike[str], *,
                                 cache_dir: str | os.PathLike[str] | None = None
                                 ) -> tuple[Any, Any | None]:
  """(`CLIPTokenizerFast`, `CLIPImageProcessor`).

  The image processor is None when the folder has no `preprocessor_config.json`.

  Raises:
    FileNotFoundError: no folder, or no tokenizer files (`tokenizer.json` or `vocab.json`) in it.
    ValueError: the tokenizer files or `preprocessor_config.json` cannot be read.
  """
  import transformers  # pylint: disable=g-import-not-at-top
  ckpt = resolve_checkpoint(path_or_repo_id, cache_dir)
  if not ((ckpt / "tokenizer.json").is_file() or (ckpt / "vocab.json").is_file()):
    raise FileNotFoundError(f"{str(ckpt)!r} has no tokenizer files (tokenizer.json or "
                            "vocab.json + merges.txt).")
  # No fallback to the slow tokenizer: where the fast one cannot read the files (a malformed
  # merges.txt), the slow one reads them differently and would silently give other token ids.
  files = [f for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
           if (ckpt / f).is_file()]
  try:
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(ckpt)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot build the CLIP tokenizer from {str(ckpt)!r} ({', '.join(files)}): "
                     f"{type(e).__name__}: {e}") from e
  processor = None
  if (ckpt / PREPROCESSOR_NAME).is_file():
    try:
      processor = transformers.CLIPImageProcessor.from_pretrained(ckpt)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"Cannot read {str(ckpt / PREPROCESSOR_NAME)!r}: {type(e).__name__}: "
                       f"{e}") from e
  return tokenizer, processor


# ---------------------------------------------------------------------------------------------
# Internals.


def _read_config(config_file: pathlib.Path) -> CLIPConfig:
  """A CLIP model's `config.json`, refused by name if it is not JSON, another model type's, or
  holds a value the model cannot be built with (`_config_problems`)."""
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    raw = json.loads(config_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{str(config_file)!r} is not valid JSON: {e}.") from e
  if not isinstance(raw, dict):
    raise ValueError(f"{str(config_file)!r} must hold a JSON object, got {type(raw).__name__}.")
  model_type = raw.get("model_type", "clip")
  if model_type != "clip":
    raise ValueError(f"{str(config_file)!r}: model_type={model_type!r}, expected 'clip' (a "
                     f"CLIPModel checkpoint with both towers).")
  for tower in ("vision_config", "text_config"):
    if not isinstance(raw.get(tower) or {}, dict):
      raise ValueError(f"{str(config_file)!r}: {tower} must be a JSON object, got "
                       f"{raw[tower]!r}.")
  try:
    config = CLIPConfig.from_hf(transformers.CLIPConfig.from_pretrained(config_file.parent))
  except (OSError, TypeError, ValueError, AttributeError) as e:
    raise ValueError(f"Cannot read {str(config_file)!r} as a CLIP config: {type(e).__name__}: "
                     f"{e}") from e
  problems = _config_problems(config)
  if problems:
    raise ValueError(f"{str(config_file)!r}: {'; '.join(problems)}.")
  return config


# Our config's field names that transformers' config.json spells otherwise.
_HF_KEYS = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads"}


def _config_problems(config: CLIPConfig) -> list[str]:
  """What in a CLIP config the model cannot be built with: sizes that are not positive integers,
  a layer-norm epsilon that is not a positive number, an unknown activation (as JSON null or a
  string, these otherwise fail deep inside the first traced forward pass)."""
  problems = []
  towers = {"vision_config": config.vision, "text_config": config.text}
  for tower, cfg in towers.items():
    for field in dataclasses.fields(cfg):
      value = getattr(cfg, field.name)
      where = f"{tower}.{_HF_KEYS.get(field.name, field.name)}"  # as config.json names it
      if field.name == "hidden_act":
        try:
          activation(value)
        except (ValueError, TypeError) as e:
          problems.append(f"{where}: {e}")
      elif field.name == "layer_norm_eps":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
          problems.append(f"{where} must be a positive number, got {value!r}")
      else:
        least = 0 if field.name == "eos_token_id" else 1  # a token id may be 0
        if isinstance(value, bool) or not isinstance(value, int):
          problems.append(f"{where} must be an integer, got {value!r}")
        elif value < least:
          problems.append(f"{where} must be an integer >= {least}, got {value!r}")
  if isinstance(config.projection_dim, bool) or not isinstance(config.projection_dim, int) or (
      config.projection_dim < 1):
    problems.append(f"projection_dim must be a positive integer, got {config.projection_dim!r}")
  return problems


def recover_interrupted_replace(dst: pathlib.Path) -> None:
  """Clears what a save to `dst` killed mid-way left beside it: a folder being assembled
  (`.<name>.tmp-*`, removed) and the previous `dst` moved aside by `replace_dir`
  (`.<name>.old-*`: put back if `dst` is missing, since the kill fell between the two renames;
  removed otherwise). Each is logged."""
  for leftover in _leftovers(dst, "old"):
    if not dst.exists():
      leftover.rename(dst)
      logging.warning("%s was missing after an interrupted save; restored the previous folder "
                      "from %s.", dst, leftover)
    else:
      shutil.rmtree(leftover, ignore_errors=True)
      logging.warning("Removed %s, left by an interrupted save of %s.", leftover, dst)
  for leftover in _leftovers(dst, "tmp"):
    shutil.rmtree(leftover, ignore_errors=True)
    logging.warning("Removed %s, left by an interrupted save of %s.", leftover, dst)


def _leftovers(dst: pathlib.Path, kind: str) -> list[pathlib.Path]:
  """The folders `save_clip` / `replace_dir` name `.<dst.name>.<kind>-<mkdtemp's 8 characters>`
  beside `dst`, matched whole: never another folder's (`ckpt.old-x`'s backup starts with
  `.ckpt.old-` too), and a name with glob characters is taken literally."""
  pattern = re.compile(re.escape(f".{dst.name}.{kind}-") + r"[a-z0-9_]{8}")
  return sorted(p for p in dst.parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name))


def replace_dir(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Renames `src` to `dst`, replacing `dst` (moved aside first, restored if the rename fails)."""
  if not dst.exists():
    src.rename(dst)
    return
  backup = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
  backup.rmdir()
  dst.rename(backup)
  try:
    src.rename(dst)
  except BaseException:
    backup.rename(dst)
    raise
  shutil.rmtree(backup, ignore_errors=True)


def _read_weights(ckpt: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
  """Flat `/`-joined Flax paths -> arrays, from the first weight file present in `ckpt`."""
  for name in WEIGHT_FILES:
    file = ckpt / name
    if not file.is_file():
      continue
    if name == SAFE_WEIGHTS_NAME:
      return _read_safetensors([file]), file
    if name == SAFE_INDEX_NAME:
      return _read_safetensors(_shard_files(file)), file
    if name == FLAX_WEIGHTS_NAME:
      return _read_msgpack([file]), file
    if name == FLAX_INDEX_NAME:
      return _read_msgpack(_shard_files(file)), file
    return _read_torch_bin(file), file
  raise FileNotFoundError(f"{str(ckpt)!r} has no weights; expected one of {list(WEIGHT_FILES)}.")


def _shard_files(index_file: pathlib.Path) -> list[pathlib.Path]:
  try:
    weight_map = json.loads(index_file.read_text())["weight_map"]
    names = sorted(set(weight_map.values()))
  except Exception as e:
    raise ValueError(f"Could not read the shard index {index_file}: {e}") from e
  files = [index_file.parent / n for n in names]
  absent = [str(f) for f in files if not f.is_file()]
  if absent:
    raise FileNotFoundError(f"Shards listed in {index_file} are missing: {absent[:_MAX_LISTED]}")
  return files


def _check_not_lfs_pointer(file: pathlib.Path) -> None:
  with open(file, "rb") as f:
    if f.read(7) == b"version":
      raise ValueError(f"{file} is a git-lfs pointer, not the weights; run `git lfs pull`.")


def _read_safetensors(files: list[pathlib.Path]) -> dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  tensors: dict[str, np.ndarray] = {}
  formats = set()
  for file in files:
    _check_not_lfs_pointer(file)
    try:
      with safe_open(file, framework="np") as f:
        formats.add((f.metadata() or {}).get("format"))
        tensors.update({k: f.get_tensor(k) for k in f.keys()})
    except Exception as e:  # SafetensorError has no public base class to catch.
      raise ValueError(f"Could not read safetensors weights {file}: {e}") from e
  fmt = formats.pop() if len(formats) == 1 else None
  if fmt == "flax" or (fmt is None and not any(k.endswith(".weight") for k in tensors)):
    return {k.replace(".", "/"): v for k, v in tensors.items()}
  if fmt in ("pt", None):
    return _torch_to_flax(tensors)
  raise ValueError(f"Unsupported safetensors format {fmt!r} in {files[0]}; expected 'pt' or "
                   "'flax'.")


def _read_msgpack(files: list[pathlib.Path]) -> dict[str, np.ndarray]:
  flat: dict[str, np.ndarray] = {}
  for file in files:
    _check_not_lfs_pointer(file)
    try:
      state = flax.serialization.msgpack_restore(file.read_bytes())
    except Exception as e:
      raise ValueError(f"Could not read msgpack weights {file}: {e}") from e
    if not isinstance(state, dict):
      raise ValueError(f"Could not read msgpack weights {file}: it holds a "
                       f"{type(state).__name__}, not a parameter dict.")
    flat.update(traverse_util.flatten_dict(state, sep="/"))
  return flat


def _read_torch_bin(file: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"{file} is a PyTorch pickle and torch is not installed; convert it to "
                     f"{SAFE_WEIGHTS_NAME} (e.g. save_pretrained(..., safe_serialization=True)).") \
        from e
  try:
    state = torch.load(file, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ValueError(f"Could not read PyTorch weights {file}: {e}") from e
  return _torch_to_flax({k: (v.float() if v.is_floating_point() else v).numpy()
                         for k, v in state.items()})


def _torch_to_flax(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """PyTorch CLIP names/layouts -> Flax paths/layouts (as transformers' PT->Flax conversion)."""
  flat = {}
  for name, x in tensors.items():
    *module, leaf = name.split(".")
    if leaf == "position_ids":  # A non-trainable index buffer.
      continue
    if leaf in ("weight", "gamma") and x.ndim == 1:  # LayerNorm.
      leaf = "scale"
    elif leaf == "beta" and x.ndim == 1:
      leaf = "bias"
    elif leaf == "weight" and x.ndim == 2 and module and module[-1].endswith("embedding"):
      leaf = "embedding"  # nn.Embedding [num, dim], same layout.
    elif leaf == "weight" and x.ndim == 2:  # nn.Linear [out, in] -> [in, out].
      leaf, x = "kernel", x.T
    elif leaf == "weight" and x.ndim == 4:  # nn.Conv2d [out, in, kh, kw] -> [kh, kw, in, out].
      leaf, x = "kernel", x.transpose(2, 3, 1, 0)
    flat["/".join([*module, leaf])] = np.ascontiguousarray(x)
  return flat


def _expected_shapes(config: CLIPConfig) -> dict[str, jax.ShapeDtypeStruct]:
  # eval_shape traces `init` abstractly: no FLOPs, no memory.
  shapes = jax.eval_shape(CLIP(config).init, jax.random.key(0))
  return traverse_util.flatten_dict(flax.core.unfreeze(shapes), sep="/")


def _validate(flat: Mapping[str, Any], config: CLIPConfig, source: str) -> None:
  """Raises ValueError if `flat` is not exactly `CLIP(config).init`'s tree (paths and shapes)."""
  expected = _expected_shapes(config)
  missing = [p for p in expected if p not in flat]
  unexpected = sorted(p for p in flat if p not in expected)
  mismatched = [f"{p}: {tuple(np.shape(flat[p]))} != expected {tuple(s.shape)}"
                for p, s in expected.items()
                if p in flat and tuple(np.shape(flat[p])) != tuple(s.shape)]
  not_float = [f"{p}: {np.asarray(flat[p]).dtype}" for p in expected
               if p in flat and not jnp.issubdtype(np.asarray(flat[p]).dtype, jnp.floating)]
  problems = []
  for what, items in (("missing", missing), ("unexpected", unexpected),
                      ("shape mismatch", mismatched), ("not floating point", not_float)):
    if items:
      more = f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else ""
      problems.append(f"{what}: {', '.join(items[:_MAX_LISTED])}{more}")
  if problems:
    raise ValueError(f"Weights in {source} do not match the CLIP config (checkpoint from another "
                     f"architecture?): " + "; ".join(problems))
