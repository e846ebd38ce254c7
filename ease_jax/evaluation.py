"""Retrieval evaluation of a (backbone, LoRA) pair on a subset of a caption dataset."""
from __future__ import annotations

from typing import Any

import numpy as np

from ease_jax import federated
from ease_jax import metrics
from ease_jax.data import dataset as dataset_lib
from ease_jax.model import CLIP


def subset_texts(ds: dataset_lib.CaptionDataset, image_indices: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Captions of `image_indices`: (text indices [Nt], their image's position in the subset [Nt])."""
  image_indices = np.asarray(image_indices)
  position = np.full(ds.num_images, -1, np.int64)
  position[image_indices] = np.arange(len(image_indices))
  texts = np.flatnonzero(position[ds.text_image] >= 0)
  return texts.astype(np.int32), position[ds.text_image[texts]].astype(np.int32)


def evaluate_images(model: CLIP, backbone: Any, trainable: Any, data: federated.DeviceData,
                    ds: dataset_lib.CaptionDataset, image_indices: np.ndarray,
                    batch_size: int = 256) -> dict[str, float]:
  """Recall@{1,5,10} both directions and R-precision, retrieving within the subset's own images
  and captions (the usual Flickr30K/COCO protocol), as percentages."""
  texts, text_image = subset_texts(ds, image_indices)
  image_emb, text_emb = federated.embed(model, backbone, trainable, data, image_indices, texts,
                                        batch_size)
  return metrics.retrieval_metrics(image_emb, text_emb, text_image)
