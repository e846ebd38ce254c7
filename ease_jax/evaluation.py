"""Retrieval evaluation of a (backbone, LoRA) pair on a subset of a caption dataset.

The functions that embed take an optional `embedder`: a `device.Embedder` of the same
(backbone, trainable) shared by the calls that evaluate one model, so each image and caption is
embedded once (`cell.Cell.row`).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ease_jax import metrics
from ease_jax.data import dataset as dataset_lib
from ease_jax.data import plants as plants_lib
from ease_jax.data.device import DeviceData, Embedder, embedder_for
from ease_jax.model import CLIP


def subset_texts(ds: dataset_lib.CaptionDataset, image_indices: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Captions of `image_indices`: (text indices [Nt], their image's position in the subset [Nt])."""
  image_indices = np.asarray(image_indices)
  position = np.full(ds.num_images, -1, np.int64)
  position[image_indices] = np.arange(len(image_indices))
  texts = np.flatnonzero(position[ds.text_image] >= 0)
  return texts.astype(np.int32), position[ds.text_image[texts]].astype(np.int32)


def _embedder(setup: Any, trainable: Any, batch_size: int, embedder: Embedder | None
              ) -> Embedder:
  return embedder_for(setup.model, setup.backbone, trainable, setup.data, embedder, batch_size)


def evaluate_images(model: CLIP, backbone: Any, trainable: Any, data: DeviceData,
                    ds: dataset_lib.CaptionDataset, image_indices: np.ndarray,
                    batch_size: int = 256, embedder: Embedder | None = None
                    ) -> dict[str, float]:
  """Recall@{1,5,10} both directions and R-precision, retrieving within the subset's own images
  and captions (the usual Flickr30K/COCO protocol), as percentages. Identical captions (the same
  tokens) and identical images (the same pixels) are one content: retrieving either is right
  (`metrics` module docstring)."""
  texts, text_image = subset_texts(ds, image_indices)
  image_emb, text_emb = embedder_for(model, backbone, trainable, data, embedder,
                                     batch_size)(image_indices, texts)
  return metrics.retrieval_metrics(image_emb, text_emb, text_image,
                                   text_content=ds.text_content[texts],
                                   image_content=ds.image_content[np.asarray(image_indices)])


def evaluate_splits(setup: Any, trainable: Any, subsets: Mapping[str, np.ndarray],
                    batch_size: int = 256, embedder: Embedder | None = None
                    ) -> dict[str, float]:
  """`{f"{subset}/{metric}": value}` for each named set of image indices of a `FederatedSetup`."""
  out = {}
  embedder = _embedder(setup, trainable, batch_size, embedder)
  for name, images in subsets.items():
    if len(images) == 0:
      continue
    res = evaluate_images(setup.model, setup.backbone, trainable, setup.data, setup.dataset,
                          images, embedder=embedder)
    out.update({f"{name}/{k}": v for k, v in res.items()})
  return out


def unit_rows(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
  """`x [..., D]` in float64 with every row scaled to unit norm.

  Raises:
    ValueError: `x` is empty or holds NaN or inf (a diverged model: every comparison with NaN
      is False, so a plant's rates would read 0%, as if forgotten).
  """
  x = np.asarray(x, np.float64)
  if x.size == 0:
    raise ValueError(f"no {name} to compare (shape {x.shape}).")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} hold NaN or inf: a diverged model cannot be scored.")
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def attack_success_rates(probe_emb: np.ndarray, clean_emb: np.ndarray, caption_emb: np.ndarray,
                         target_emb: np.ndarray) -> tuple[float, float]:
  """A backdoor's attack success rates (%), from embeddings.

  Args:
    probe_emb: `[P, D]` triggered held-out images.
    clean_emb: `[C, D]` the clean held-out images.
    caption_emb: `[T, D]` the held-out captions.
    target_emb: `[D]` the target caption.

  Returns:
    (image→text: the share of probes whose top-1 caption, among the held-out captions and the
    target, is the target; text→image: the share of probes that the target caption ranks first
    among the clean held-out images and that probe). Ties count as failures.
  """
  probe, clean, captions, target = (unit_rows(x, name) for x, name in (
      (probe_emb, "triggered images"), (clean_emb, "clean images"),
      (caption_emb, "captions"), (target_emb, "target caption")))
  to_target = probe @ target                                        # [P]
  i2t = to_target > (probe @ captions.T).max(axis=1)
  t2i = to_target > (clean @ target).max()
  return float(100 * i2t.mean()), float(100 * t2i.mean())


def concept_accuracies(probe_emb: np.ndarray, clean_emb: np.ndarray, concept_emb: np.ndarray,
                       plain_emb: np.ndarray) -> tuple[float, float]:
  """A concept plant's accuracies (%), from embeddings of P held-out images and their copies.

  Args:
    probe_emb: `[P, D]` the restyled copies (the concept's images).
    clean_emb: `[P, D]` their clean sources.
    concept_emb: `[P, D]` the concept captions (the template over each source's caption).
    plain_emb: `[P, D]` the sources' own captions.

  Returns:
    (image→text: the share of copies closer to their concept caption than to their plain one;
    text→image: the share of concept captions closer to the copy than to its source). Chance is
    50%; ties count as failures.
  """
  probe, clean, concept, plain = (unit_rows(x, name) for x, name in (
      (probe_emb, "concept images"), (clean_emb, "clean images"),
      (concept_emb, "concept captions"), (plain_emb, "plain captions")))
  i2t = np.sum(probe * concept, -1) > np.sum(probe * plain, -1)
  t2i = np.sum(concept * probe, -1) > np.sum(concept * clean, -1)
  return float(100 * i2t.mean()), float(100 * t2i.mean())


def plant_metrics(setup: Any, trainable: Any, plant: plants_lib.PlantedData,
                  batch_size: int = 256, embedder: Embedder | None = None
                  ) -> dict[str, float]:
  """What the model learned of a `plants.PlantedData`: a backdoor's attack success rates
  (`asr/<plant>/i2t`, `asr/<plant>/t2i`), a concept's accuracies (`concept/<plant>/i2t`,
  `concept/<plant>/t2i`)."""
  ds = setup.dataset
  n = len(plant.probe_images)
  images = np.concatenate([plant.probe_images, plant.clean_probe_sources])
  if plant.kind == "concept":  # Each probe's concept caption, then its source's plain one.
    text_ids = np.concatenate([plant.probe_texts, ds.first_texts()[plant.clean_probe_sources]])
  else:  # The held-out captions, then the target.
    text_ids = np.concatenate([subset_texts(ds, plant.clean_probe_sources)[0],
                               [plant.target_text]])
  image_emb, text_emb = _embedder(setup, trainable, batch_size, embedder)(images, text_ids)
  probe, clean = image_emb[:n], image_emb[n:]
  if plant.kind == "concept":
    i2t, t2i = concept_accuracies(probe, clean, text_emb[:n], text_emb[n:])
  else:
    i2t, t2i = attack_success_rates(probe, clean, text_emb[:-1], text_emb[-1])
  return {f"{plant.metric}/{plant.name}/i2t": i2t, f"{plant.metric}/{plant.name}/t2i": t2i}


def tone_groups(ds: dataset_lib.CaptionDataset, images: np.ndarray
                ) -> list[tuple[int, np.ndarray]]:
  """For each of `images` with a single skin tone, the same emoji in every single tone:
  `[(image, group image ids incl. itself)]` (groups of one are dropped). Planted copies are
  neither queries nor group members."""
  tones = np.asarray(ds.image_meta["skin_tone"])
  names = np.asarray(ds.image_meta["emoji"])
  planted = np.asarray(ds.image_meta.get("plant", np.full(ds.num_images, "")))
  single = np.isin(tones, dataset_lib.SKIN_TONES) & (planted == "")
  key = {}
  for i in np.flatnonzero(single):
    key.setdefault(names[i], []).append(i)
  group_of = {i: np.asarray(g) for g in key.values() for i in g}
  return [(int(i), group_of[int(i)]) for i in images
          if int(i) in group_of and len(group_of[int(i)]) > 1]


def tone_accuracy(setup: Any, trainable: Any, images: np.ndarray, batch_size: int = 256,
                  embedder: Embedder | None = None) -> dict[str, float]:
  """Does the model tell the skin tone apart? For each image of `images`, its caption among the
  same emoji's images in every tone (text→image) and its image among their captions
  (image→text): top-1 accuracy (%; a tie is a miss), and the chance level (mean 1/group size,
  %)."""
  ds = setup.dataset
  groups = tone_groups(ds, images)
  if not groups:
    return {}
  members = np.unique(np.concatenate([g for _, g in groups]))
  first_text = ds.first_texts()
  image_emb, text_emb = _embedder(setup, trainable, batch_size, embedder)(members,
                                                                          first_text[members])
  image_emb, text_emb = unit_rows(image_emb), unit_rows(text_emb)
  pos = {int(m): k for k, m in enumerate(members)}
  t2i, i2t, chance = [], [], []
  for image, group in groups:
    rows = np.asarray([pos[int(g)] for g in group])
    own = pos[image]
    mine = rows == own
    # Strictly ahead of every other tone: a tie (a collapsed model) is a miss, as in every
    # other metric, not a hit for whichever image comes first.
    t2i_scores, i2t_scores = image_emb[rows] @ text_emb[own], text_emb[rows] @ image_emb[own]
    t2i.append(t2i_scores[mine].max() > t2i_scores[~mine].max())
    i2t.append(i2t_scores[mine].max() > i2t_scores[~mine].max())
    chance.append(1.0 / len(group))
  return dict(t2i=float(100 * np.mean(t2i)), i2t=float(100 * np.mean(i2t)),
              chance=float(100 * np.mean(chance)), n=len(groups))
