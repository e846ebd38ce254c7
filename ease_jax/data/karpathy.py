"""Loader for caption datasets in Karpathy's split format (Flickr30K, MSCOCO).

Format (`dataset_flickr30k.json`, `dataset_coco.json`)::

  {"dataset": "flickr30k",
   "images": [{"filename": "1000092795.jpg", "filepath": "val2014" (COCO only),
               "split": "train" | "val" | "test" | "restval", "imgid": 0,
               "sentences": [{"raw": "Two young guys ...", "tokens": [...]}, ...]}, ...]}

Images live at `image_root / filepath / filename` (or `image_root / filename` without `filepath`).
"""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Mapping

import numpy as np

from ease_jax.data import tokenizer as tok_lib
from ease_jax.data.dataset import CaptionDataset

VALID_SPLITS = ("train", "val", "test", "restval")
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the resampling CLIP's processor uses


def image_path(root: pathlib.Path | str, entry: Mapping[str, Any]) -> pathlib.Path:
  """Where an entry's image lives: `root / filepath / filename` (`filepath` is COCO's)."""
  return pathlib.Path(root, str(entry.get("filepath", "")), entry["filename"])


def _target_geometry(image_size: int, image_processor: Any) -> tuple[int, int, int]:
  """(shortest_edge, crop_height, crop_width), from the processor when given."""
  if image_processor is None:
    return image_size, image_size, image_size
  size = image_processor.size
  crop = image_processor.crop_size
  unsupported = [name for name in ("do_resize", "do_center_crop")
                 if getattr(image_processor, name, True) is False]
  if isinstance(size, dict) and "shortest_edge" not in size:
    unsupported.append(f"size={dict(size)}")
  resample = getattr(image_processor, "resample", _BICUBIC)
  if resample is not None and int(resample) != _BICUBIC:
    unsupported.append(f"resample={resample} (only bicubic, {_BICUBIC})")
  if unsupported:
    raise ValueError(f"image processor settings {unsupported} are not supported: images are "
                     "resized on their shortest edge (size={'shortest_edge': N}, bicubic) and "
                     "center cropped, as CLIP's processor does.")
  short = size["shortest_edge"] if isinstance(size, dict) else int(size)
  if isinstance(crop, dict):
    return int(short), int(crop["height"]), int(crop["width"])
  return int(short), int(crop), int(crop)


def preprocess_image(image: Any, shortest_edge: int, crop_height: int,
                     crop_width: int) -> np.ndarray:
  """CLIP geometry: bicubic resize of the shortest side, then center crop.

  Args:
    image: a PIL image (any mode).
    shortest_edge: target length of the shorter side.
    crop_height: output height.
    crop_width: output width.

  Returns:
    `[crop_height, crop_width, 3]` uint8 RGB.
  """
  from PIL import Image

  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16-bit grey: Pillow's convert("RGB") clips at 255 (everything above is white).
    grey = np.clip(np.asarray(image, np.float64), 0, 65535) / 257.0
    image = Image.fromarray(np.round(grey).astype(np.uint8), "L")
  image = image.convert("RGB")
  w, h = image.size
  # The long side truncated, as transformers' `get_resize_output_image_size`: rounding it made
  # 4:3 photos (COCO's 640x480) one pixel longer and shifted their crop.
  if w <= h:
    new_w, new_h = shortest_edge, max(1, int(shortest_edge * h / w))
  else:
    new_w, new_h = max(1, int(shortest_edge * w / h)), shortest_edge
  image = image.resize((new_w, new_h), Image.Resampling(_BICUBIC))
  arr = np.asarray(image, dtype=np.uint8)
  # Pad with black if the crop is larger than the resized image (as HF's center_crop does).
  if new_h < crop_height or new_w < crop_width:
    ph, pw = max(crop_height, new_h), max(crop_width, new_w)
    padded = np.zeros((ph, pw, 3), np.uint8)
    top, left = -(-(ph - new_h) // 2), -(-(pw - new_w) // 2)  # ceil, as transformers pads
    padded[top:top + new_h, left:left + new_w] = arr
    arr, new_h, new_w = padded, ph, pw
  top, left = (new_h - crop_height) // 2, (new_w - crop_width) // 2
  return np.ascontiguousarray(arr[top:top + crop_height, left:left + crop_width])


def _validate_entries(path: pathlib.Path, data: Any) -> list[dict[str, Any]]:
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise ValueError(f"{path}: not a Karpathy-format file (expected a top-level object with an "
                     "'images' list)")
  entries = data["images"]
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict):
      raise ValueError(f"{path}: images[{i}] is not an object")
    for field in ("filename", "split"):
      if not isinstance(entry.get(field), str):
        raise ValueError(f"{path}: images[{i}] has no string field {field!r}")
    if not isinstance(entry.get("filepath", ""), str):
      raise ValueError(f"{path}: images[{i}] ({entry['filename']}) has a 'filepath' that is not "
                       f"a string: {entry['filepath']!r}")
    if entry["split"] not in VALID_SPLITS:
      raise ValueError(f"{path}: images[{i}] has split {entry['split']!r}, expected one of "
                       f"{list(VALID_SPLITS)}")
    if not isinstance(entry.get("sentences"), list):
      raise ValueError(f"{path}: images[{i}] ({entry['filename']}) has no 'sentences' list")
    if not entry["sentences"]:
      raise ValueError(f"{path}: images[{i}] ({entry['filename']}) has no sentences: an image "
                       "without a caption can be neither trained on nor retrieved")
    for j, sentence in enumerate(entry["sentences"]):
      if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
        raise ValueError(f"{path}: images[{i}] ({entry['filename']}) sentences[{j}] has no "
                         "string field 'raw'")
      if not sentence["raw"].strip():
        raise ValueError(f"{path}: images[{i}] ({entry['filename']}) sentences[{j}] is empty")
    relative = pathlib.PurePath(entry.get("filepath", ""), entry["filename"])
    if relative.is_absolute() or ".." in relative.parts:
      kind = "an absolute path" if relative.is_absolute() else "a path out of the image root"
      raise ValueError(f"{path}: images[{i}] names {kind} "
                       f"{entry.get('filepath', '')!r} / {entry['filename']!r}: image paths are "
                       "relative to the image root, inside it")
  # One image listed twice (in train and test, say) would be trained on and tested on.
  seen: dict[str, int] = {}
  for i, entry in enumerate(entries):
    key = str(pathlib.PurePath(entry.get("filepath", ""), entry["filename"]))
    if key in seen:
      raise ValueError(f"{path}: images[{seen[key]}] and images[{i}] are the same image {key!r} "
                       f"(splits {entries[seen[key]]['split']!r} and {entry['split']!r})")
    seen[key] = i
  return entries


def load_karpathy(json_path: str | os.PathLike[str], image_root: str | os.PathLike[str],
                  split: str | Sequence[str], tokenizer: Any, max_length: int,
                  image_size: int = 224, image_processor: Any = None,
                  max_images: int | None = None) -> CaptionDataset:
  """Loads one or more splits of a Karpathy-format caption dataset into memory.

  Args:
    json_path: the Karpathy json file.
    image_root: directory holding the images (COCO: the parent of `train2014/`, `val2014/`).
    split: a split name or several (e.g. `("train", "restval")` for the usual COCO train set).
    tokenizer: a `transformers` CLIP tokenizer.
    max_length: context length `L`.
    image_size: output side; shortest side is resized to it, then center-cropped to a square.
    image_processor: optional `transformers.CLIPImageProcessor`; its `size` / `crop_size` replace
      `image_size` (normalisation is not applied here: images stay uint8, see `normalize_images`).
    max_images: keep only the first this many matching images (file order).

  Returns:
    A `CaptionDataset` with images `[num_images, H, W, 3]` uint8, every sentence as a caption,
    and `image_meta = {"split", "filename"}`.

  Raises:
    FileNotFoundError: missing json or image file.
    ValueError: malformed json (an entry without sentences, an empty caption, a non-string
      field), unknown split name, no image in the splits, or an image Pillow cannot read (or
      one too large to decode).
  """
  from PIL import Image, UnidentifiedImageError
  from tqdm import tqdm

  path = pathlib.Path(json_path)
  if not path.is_file():
    raise FileNotFoundError(f"Karpathy json not found: {path}")
  splits = (split,) if isinstance(split, str) else tuple(split)
  unknown = [s for s in splits if s not in VALID_SPLITS]
  if unknown or not splits:
    raise ValueError(f"unknown split(s) {unknown or list(splits)}; valid splits are "
                     f"{list(VALID_SPLITS)}")
  if max_images is not None and max_images < 1:
    raise ValueError(f"max_images must be >= 1 (None: every image), got {max_images}")
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e
  all_entries = _validate_entries(path, data)
  entries = [e for e in all_entries if e["split"] in splits]
  if not entries:
    held = sorted({e["split"] for e in all_entries})
    raise ValueError(f"{path}: no images in split(s) {list(splits)}; the file holds {held}")
  if max_images is not None:
    entries = entries[:max_images]

  root = pathlib.Path(image_root)
  geometry = _target_geometry(image_size, image_processor)
  images = np.zeros((len(entries), geometry[1], geometry[2], 3), np.uint8)
  captions, text_image = [], []
  for i, entry in enumerate(tqdm(entries, desc=f"loading {path.name} {'+'.join(splits)}",
                                 unit="img", disable=len(entries) < 100)):
    path_of_image = image_path(root, entry)
    if not path_of_image.is_file():
      raise FileNotFoundError(f"image file not found: {path_of_image}")
    try:
      with Image.open(path_of_image) as im:
        images[i] = preprocess_image(im, *geometry)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
      raise ValueError(f"cannot read image {path_of_image}: {e}") from e
    for sentence in entry["sentences"]:
      captions.append(sentence["raw"].strip())
      text_image.append(i)

  input_ids, attention_mask = tok_lib.tokenize(tokenizer, captions, max_length)
  name = str(data.get("dataset", path.stem))
  return CaptionDataset(
      images=images,
      input_ids=input_ids,
      attention_mask=attention_mask,
      text_image=np.asarray(text_image, np.int32).reshape(-1),
      captions=tuple(captions),
      image_meta={"split": np.asarray([e["split"] for e in entries], dtype=str).reshape(-1),
                  "filename": np.asarray([e["filename"] for e in entries], dtype=str).reshape(-1)},
      name=name,
  )
