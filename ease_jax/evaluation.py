"""Retrieval evaluation of a (backbone, LoRA) pair on a subset of a caption dataset."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ease_jax import metrics
from ease_jax.data import dataset as dataset_lib
from ease_jax.data.device import DeviceData, embed
from ease_jax.model import CLIP


def subset_texts(ds: dataset_lib.CaptionDataset, image_indices: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Captions of `image_indices`: (text indices [Nt], their image's position in the subset [Nt])."""
  image_indices = np.asarray(image_indices)
  position = np.full(ds.num_images, -1, np.int64)
  position[image_indices] = np.arange(len(image_indices))
  texts = np.flatnonzero(position[ds.text_image] >= 0)
  return texts.astype(np.int32), position[ds.text_image[texts]].astype(np.int32)


def evaluate_images(model: CLIP, backbone: Any, trainable: Any, data: DeviceData,
                    ds: dataset_lib.CaptionDataset, image_indices: np.ndarray,
                    batch_size: int = 256) -> dict[str, float]:
  """Recall@{1,5,10} both directions and R-precision, retrieving within the subset's own images
  and captions (the usual Flickr30K/COCO protocol), as percentages."""
  texts, text_image = subset_texts(ds, image_indices)
  image_emb, text_emb = embed(model, backbone, trainable, data, image_indices, texts,
                              batch_size)
  return metrics.retrieval_metrics(image_emb, text_emb, text_image)


def evaluate_splits(setup: Any, trainable: Any, subsets: Mapping[str, np.ndarray],
                    batch_size: int = 256) -> dict[str, float]:
  """`{f"{subset}/{metric}": value}` for each named set of image indices of a `FederatedSetup`."""
  out = {}
  for name, images in subsets.items():
    if len(images) == 0:
      continue
    res = evaluate_images(setup.model, setup.backbone, trainable, setup.data, setup.dataset,
                          images, batch_size=batch_size)
    out.update({f"{name}/{k}": v for k, v in res.items()})
  return out
