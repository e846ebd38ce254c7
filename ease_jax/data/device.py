"""A caption dataset on device: `DeviceData`, indexed by text id inside jit, `embed`, and
`Embedder`, which embeds each image and caption of one model once."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ease_jax.data import dataset as dataset_lib

if TYPE_CHECKING:
  from ease_jax.model import CLIP

PyTree = Any


@flax.struct.dataclass
class DeviceData:
  """A caption dataset's arrays, put on device once and indexed by text id inside jit."""
  images: jax.Array          # [num_images, H, W, 3] uint8
  input_ids: jax.Array       # [num_texts, L] int32
  attention_mask: jax.Array  # [num_texts, L] int32
  text_image: jax.Array      # [num_texts] int32

  @classmethod
  def from_dataset(cls, ds: dataset_lib.CaptionDataset) -> "DeviceData":
    return cls(images=jnp.asarray(ds.images), input_ids=jnp.asarray(ds.input_ids),
               attention_mask=jnp.asarray(ds.attention_mask),
               text_image=jnp.asarray(ds.text_image))

  def batch(self, text_indices: jax.Array) -> dict[str, jax.Array]:
    """text_indices [B] -> pixels [B, H, W, 3] float, input_ids/attention_mask [B, L]."""
    pixels = dataset_lib.normalize_images(self.images[self.text_image[text_indices]])
    return dict(pixels=pixels, input_ids=self.input_ids[text_indices],
                attention_mask=self.attention_mask[text_indices])


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _embed_chunk(model, backbone, trainable, data, text_idx, image_idx, batch_size):
  del batch_size
  pixels = dataset_lib.normalize_images(data.images[image_idx])
  image_emb = model.encode_image(backbone, trainable, pixels)
  text_emb = model.encode_text(backbone, trainable, data.input_ids[text_idx],
                               data.attention_mask[text_idx])
  return image_emb, text_emb


def _checked_ids(kind: str, ids: Any, count: int) -> np.ndarray:
  """`ids` as int32, refused if any is outside [0, count): on device an index past the end
  reads the last row and a negative one wraps, so a wrong id would embed another example."""
  ids = np.asarray(ids, np.int64).reshape(-1)
  bad = ids[(ids < 0) | (ids >= count)]
  if bad.size:
    raise ValueError(f"{bad.size} {kind} id(s) out of range [0, {count}): "
                     f"{sorted(set(bad.tolist()))[:5]}")
  return ids.astype(np.int32)


def embed(model: "CLIP", backbone: PyTree, trainable: PyTree, data: DeviceData,
          image_indices: np.ndarray, text_indices: np.ndarray, batch_size: int = 256
          ) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings of the given images [Ni, P] and texts [Nt, P], in jitted fixed-size batches."""
  image_indices = _checked_ids("image", image_indices, data.images.shape[0])
  text_indices = _checked_ids("text", text_indices, data.input_ids.shape[0])
  n = max(len(image_indices), len(text_indices))
  num_batches = max(1, -(-n // batch_size))
  pad = lambda a: np.pad(a, (0, num_batches * batch_size - len(a)))
  imgs, txts = pad(image_indices), pad(text_indices)
  image_out, text_out = [], []
  for b in range(num_batches):
    sl = slice(b * batch_size, (b + 1) * batch_size)
    ie, te = _embed_chunk(model, backbone, trainable, data, jnp.asarray(txts[sl]),
                          jnp.asarray(imgs[sl]), batch_size)
    image_out.append(np.asarray(ie))
    text_out.append(np.asarray(te))
  return (np.concatenate(image_out)[:len(image_indices)],
          np.concatenate(text_out)[:len(text_indices)])


class Embedder:
  """`embed` for one (backbone, trainable) that keeps every row it computed, so the metrics of
  one evaluated model, which share test images, held-out captions and D_f, embed each once.
  At one batch size an embedding does not depend on the other rows of its batch (the encoders
  work per example; tests/test_mia.py checks it bit for bit), so the cache changes no number.
  Memory grows with the rows computed, not with the dataset.

  `embedder(image_indices [Ni], text_indices [Nt])` -> `([Ni, P], [Nt, P])`, like `embed`.
  """

  def __init__(self, model: "CLIP", backbone: PyTree, trainable: PyTree, data: DeviceData,
               batch_size: int = 256) -> None:
    self.model, self.backbone, self.trainable, self.data = model, backbone, trainable, data
    self.batch_size = batch_size
    # Per side (images, texts): the ids computed so far, sorted, and their embeddings.
    self._ids = [np.zeros(0, np.int64), np.zeros(0, np.int64)]
    self._rows: list[np.ndarray | None] = [None, None]

  def __call__(self, image_indices: np.ndarray, text_indices: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    wanted = [np.asarray(image_indices, np.int64), np.asarray(text_indices, np.int64)]
    new = [np.setdiff1d(ids, known) for ids, known in zip(wanted, self._ids)]
    if self._rows[0] is None or any(ids.size for ids in new):  # (the first call sets P)
      computed = embed(self.model, self.backbone, self.trainable, self.data, *new,
                       self.batch_size)
      for side in (0, 1):
        ids = np.concatenate([self._ids[side], new[side]])
        rows = (computed[side] if self._rows[side] is None
                else np.concatenate([self._rows[side], computed[side]]))
        order = np.argsort(ids, kind="stable")
        self._ids[side], self._rows[side] = ids[order], rows[order]
    return tuple(rows[np.searchsorted(ids, w)]
                 for ids, rows, w in zip(self._ids, self._rows, wanted))


def embedder_for(model: "CLIP", backbone: PyTree, trainable: PyTree, data: DeviceData,
                 embedder: Embedder | None = None, batch_size: int = 256) -> Embedder:
  """`embedder` (a shared `Embedder` of this very `trainable`; then `batch_size` is its own), or
  a fresh one. A shared one of another model is refused: its rows would be that model's."""
  if embedder is None:
    return Embedder(model, backbone, trainable, data, batch_size)
  if getattr(embedder, "trainable", trainable) is not trainable:
    raise ValueError("The shared embedder belongs to another trainable tree than the one "
                     "evaluated.")
  return embedder


def matched_cosines(model: "CLIP", backbone: PyTree, trainable: PyTree, data: DeviceData,
                    texts: np.ndarray, embedder: Embedder | None = None,
                    images: np.ndarray | None = None) -> np.ndarray:
  """`[n]` cosine of each caption with its own image under (backbone, trainable); `embedder`,
  when given, is a shared `Embedder` of that pair. `images [n]`, when given, pairs caption i
  with image i instead (pairs the dataset does not hold, e.g. a caption on another image)."""
  texts = np.asarray(texts, np.int32)
  if images is None:
    images = np.asarray(data.text_image)[texts]
  elif np.shape(images) != texts.shape:
    raise ValueError(f"matched_cosines pairs text i with image i: got {texts.shape[0]} texts and "
                     f"images of shape {np.shape(images)}.")
  ie, te = embedder_for(model, backbone, trainable, data, embedder)(images, texts)
  ie = ie / np.linalg.norm(ie, axis=1, keepdims=True)
  te = te / np.linalg.norm(te, axis=1, keepdims=True)
  return np.sum(ie * te, axis=1)
