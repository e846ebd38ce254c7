"""In-memory image-caption dataset, the embedded emoji dataset, and CLIP image normalisation."""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import types
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

# OpenAI CLIP image normalisation constants (RGB).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "assets"
EMOJI_IMAGE_SIZE = 32  # the shipped images; `build_emoji --size=N` writes emoji{N}.npz


def emoji_npz_name(image_size: int = EMOJI_IMAGE_SIZE) -> str:
  """The embedded emoji file of `image_size` px images."""
  return f"emoji{image_size}.npz"


EMOJI_NPZ = emoji_npz_name()
EMOJI_TOKENIZER = "emoji_tokenizer"
# Longest emoji caption is 21 tokens with BOS/EOS, so 24 truncates none.
EMOJI_CONTEXT_LENGTH = 24
_EMOJI_FIELDS = ("images", "captions", "groups", "subgroups", "codepoints")


def content_ids(rows: np.ndarray) -> np.ndarray:
  """`[N]` int32 ids of the distinct rows of `rows [N, ...]` (byte-identical rows share an id,
  in order of first appearance): which inputs a model sees as one (`metrics.retrieval_ranks`)."""
  rows = np.ascontiguousarray(rows)
  seen: dict[bytes, int] = {}
  return np.array([seen.setdefault(r.tobytes(), len(seen)) for r in rows], np.int32).reshape(
      len(rows))


@dataclasses.dataclass(frozen=True)
class CaptionDataset:
  """Images with one or more tokenized captions each.

  Attributes:
    images: `[num_images, H, W, 3]` uint8 RGB.
    input_ids: `[num_texts, L]` int32 token ids.
    attention_mask: `[num_texts, L]` int32, 1 on real tokens.
    text_image: `[num_texts]` int32, index into `images` of each caption's image.
    captions: `[num_texts]` raw caption strings.
    image_meta: per-image arrays of length `num_images`, e.g. `{"group": ..., "subgroup": ...}`.
    name: dataset name.
  """
  images: np.ndarray
  input_ids: np.ndarray
  attention_mask: np.ndarray
  text_image: np.ndarray
  captions: tuple[str, ...]
  image_meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  name: str = ""

  def __post_init__(self):
    def fail(msg):
      raise ValueError(f"CaptionDataset {self.name!r}: {msg}")

    im = self.images
    if not isinstance(im, np.ndarray) or im.ndim != 4 or im.shape[-1] != 3:
      fail(f"images must be a [num_images, H, W, 3] array, got shape {np.shape(im)}")
    if im.dtype != np.uint8:
      fail(f"images must be uint8, got {im.dtype}")
    for field in ("input_ids", "attention_mask"):
      a = getattr(self, field)
      if not isinstance(a, np.ndarray) or a.ndim != 2:
        fail(f"{field} must be a [num_texts, L] array, got shape {np.shape(a)}")
      if a.dtype != np.int32:
        fail(f"{field} must be int32, got {a.dtype}")
    if self.input_ids.shape != self.attention_mask.shape:
      fail(f"input_ids {self.input_ids.shape} and attention_mask {self.attention_mask.shape} "
           "differ")
    num_texts = self.input_ids.shape[0]
    ti = self.text_image
    if not isinstance(ti, np.ndarray) or ti.shape != (num_texts,) or ti.dtype != np.int32:
      fail(f"text_image must be int32 [{num_texts}], got {getattr(ti, 'dtype', type(ti))} "
           f"{np.shape(ti)}")
    if num_texts and (ti.min() < 0 or ti.max() >= im.shape[0]):
      fail(f"text_image values must be in [0, {im.shape[0]}), got range [{ti.min()}, {ti.max()}]")
    if not isinstance(self.captions, tuple) or len(self.captions) != num_texts:
      fail(f"captions must be a tuple of {num_texts} strings, got {type(self.captions).__name__} "
           f"of length {len(self.captions)}")
    for key, value in self.image_meta.items():
      if not isinstance(value, np.ndarray) or value.shape[:1] != (im.shape[0],):
        fail(f"image_meta[{key!r}] must be an array of length {im.shape[0]}, got shape "
             f"{np.shape(value)}")
    # Freeze the mapping so the dataclass is really immutable.
    object.__setattr__(self, "image_meta", types.MappingProxyType(dict(self.image_meta)))

  @property
  def num_images(self) -> int:
    return int(self.images.shape[0])

  @property
  def num_texts(self) -> int:
    return int(self.input_ids.shape[0])

  def first_texts(self) -> np.ndarray:
    """`[num_images]` each image's first text id (-1 for an image without one)."""
    first = np.full(self.num_images, -1, np.int64)
    images, first_index = np.unique(self.text_image, return_index=True)
    first[images] = first_index
    return first

  @functools.cached_property
  def image_content(self) -> np.ndarray:
    """`[num_images]` content ids: pixel-identical images share one (computed once)."""
    return content_ids(self.images)

  @functools.cached_property
  def text_content(self) -> np.ndarray:
    """`[num_texts]` content ids: captions with the same tokens share one (computed once)."""
    return content_ids(np.concatenate([self.input_ids, self.attention_mask], axis=1))

  @property
  def context_length(self) -> int:
    return int(self.input_ids.shape[1])

  def subset_images(self, image_indices: Sequence[int] | np.ndarray) -> CaptionDataset:
    """Keeps the given images (in the given order) with all their captions.

    Args:
      image_indices: `[k]` indices into `images`, no duplicates.

    Returns:
      A new dataset whose `text_image` points into the subset; captions keep their original order.
    """
    idx = np.asarray(image_indices)
    if idx.dtype == bool:  # A mask would be read as the indices 0 and 1.
      raise ValueError("subset_images takes image indices, got a boolean mask (use "
                       "np.flatnonzero(mask)).")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= self.num_images):
      raise ValueError(f"subset_images: indices must be in [0, {self.num_images}), got range "
                       f"[{idx.min()}, {idx.max()}]")
    if np.unique(idx).size != idx.size:
      raise ValueError("subset_images: duplicate image indices")
    new_pos = np.full(self.num_images, -1, np.int64)
    new_pos[idx] = np.arange(idx.size)
    texts = np.flatnonzero(new_pos[self.text_image] >= 0)
    return CaptionDataset(
        images=self.images[idx],
        input_ids=self.input_ids[texts],
        attention_mask=self.attention_mask[texts],
        text_image=new_pos[self.text_image[texts]].astype(np.int32),
        captions=tuple(self.captions[i] for i in texts),
        image_meta={k: v[idx] for k, v in self.image_meta.items()},
        name=self.name,
    )


def normalize_images(images: Any) -> jnp.ndarray:
  """CLIP-normalises uint8 RGB images; jit-friendly.

  Args:
    images: `[..., H, W, 3]` uint8 (or any real dtype in [0, 255]).

  Returns:
    `[..., H, W, 3]` float32, `(x / 255 - CLIP_MEAN) / CLIP_STD`.
  """
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  mean = jnp.asarray(CLIP_MEAN, jnp.float32)
  std = jnp.asarray(CLIP_STD, jnp.float32)
  return (x - mean) / std


def embedded_tokenizer_dir() -> pathlib.Path:
  """Directory of the CLIP-format tokenizer trained on the emoji captions."""
  return ASSETS_DIR / EMOJI_TOKENIZER


SKIN_TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
_SKIN_TONE_RE = re.compile(r"\b(medium-light|medium-dark|medium|light|dark) skin tone\b")


def skin_tone_of(caption: str) -> str:
  """The Unicode skin-tone modifier named in an emoji caption.

  `'none'` for emoji without one, the tone (one of `SKIN_TONES`) when every modifier in the name
  is the same, and `'mixed'` for two-person emoji with two different tones
  ("people holding hands: light skin tone, dark skin tone").
  """
  tones = set(_SKIN_TONE_RE.findall(caption))
  if not tones:
    return "none"
  return tones.pop() if len(tones) == 1 else "mixed"


def tone_free_name(caption: str) -> str:
  """The emoji's name with its skin-tone modifier(s) replaced by `<tone>`: the same for every
  tone of one emoji ("waving hand: <tone>"), the caption itself for emoji without one."""
  return _SKIN_TONE_RE.sub("<tone>", caption)


def load_emoji(tokenizer: Any = None, max_length: int = EMOJI_CONTEXT_LENGTH,
               assets_dir: str | os.PathLike[str] | None = None,
               skin_tone_variants: bool = True,
               image_size: int = EMOJI_IMAGE_SIZE) -> CaptionDataset:
  """Loads the embedded emoji dataset (one caption per image).

  Args:
    tokenizer: a `transformers` CLIP tokenizer; defaults to the embedded one.
    max_length: context length `L` of `input_ids`.
    assets_dir: directory with `emoji{image_size}.npz` (and `emoji_tokenizer/`); defaults to the
      package's.
    skin_tone_variants: keep the 1,785 skin-tone variants ("waving hand: dark skin tone"), the
      embedded default's client data (`data.split='skin_tone'`). They differ from their base
      emoji in the skin colour and the tone words of the caption; without them 1,870 distinct
      emoji remain.
    image_size: the images' side: the package ships 32 px, `build_emoji --size=N` writes N px.

  Returns:
    A `CaptionDataset` of 3,655 `[image_size, image_size, 3]` images (the shipped file) with
    `image_meta = {"group", "subgroup", "codepoints", "skin_tone", "emoji"}` (`skin_tone`: see
    `skin_tone_of`; `emoji`: `tone_free_name`, shared by the tones of one emoji).

  Raises:
    FileNotFoundError: if the npz (or the default tokenizer) is missing.
    ValueError: if the npz is corrupt or lacks a field.
  """
  from ease_jax.data import tokenizer as tok_lib

  assets = pathlib.Path(assets_dir) if assets_dir is not None else ASSETS_DIR
  path = assets / emoji_npz_name(image_size)
  if not path.is_file():
    raise FileNotFoundError(f"embedded emoji dataset not found: {path} (build it with "
                            f"`python -m ease_jax.data.build_emoji --size={image_size}`)")
  try:
    with np.load(path, allow_pickle=False) as npz:
      data = {f: npz[f] for f in _EMOJI_FIELDS if f in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as e:
    # A non-zip file makes np.load fall back to pickle, refused with a ValueError.
    raise ValueError(f"emoji dataset {path} is corrupt or not an npz file: {e}") from e
  missing = [f for f in _EMOJI_FIELDS if f not in data]
  if missing:
    raise ValueError(f"emoji dataset {path} lacks field(s) {missing}")
  images = data["images"]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or (
      images.shape[1] != images.shape[2]):
    raise ValueError(f"emoji dataset {path}: 'images' must be uint8 [n, size, size, 3], got "
                     f"{images.dtype} {images.shape}")
  n = images.shape[0]
  for f in _EMOJI_FIELDS[1:]:
    if data[f].shape != (n,):
      raise ValueError(f"emoji dataset {path}: field {f!r} has shape {data[f].shape}, "
                       f"expected ({n},)")
  if not skin_tone_variants:
    keep = np.array(["skin tone" not in c for c in data["captions"]])
    data = {k: v[keep] for k, v in data.items()}
    n = int(keep.sum())
  if tokenizer is None:
    tokenizer = tok_lib.load_tokenizer(assets / EMOJI_TOKENIZER)
  captions = tuple(str(c) for c in data["captions"])
  input_ids, attention_mask = tok_lib.tokenize(tokenizer, captions, max_length)
  return CaptionDataset(
      images=np.ascontiguousarray(data["images"], dtype=np.uint8),
      input_ids=input_ids,
      attention_mask=attention_mask,
      text_image=np.arange(n, dtype=np.int32),
      captions=captions,
      image_meta={"group": data["groups"], "subgroup": data["subgroups"],
                  "codepoints": data["codepoints"],
                  "skin_tone": np.asarray([skin_tone_of(c) for c in captions]),
                  "emoji": np.asarray([tone_free_name(c) for c in captions])},
      name="emoji",
  )
