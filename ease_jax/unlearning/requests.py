"""Unlearning requests: what to forget, who holds it, and the retain / forget views of the data.

A request is expressed over text (caption) indices of the setup's dataset; an image is forgotten
with all of its captions, so the forget / retain image sets used for evaluation are disjoint.
Three kinds ([paper]: client; [ours]: sample and concept):

* `client`: whole clients leave; D_f is all of their data, they take no further part.
* `sample`: a random fraction of image–caption pairs, drawn per client (from the given clients or
  spread over all of them); the holders stay, with their remaining data.
* `concept`: every client-held pair of a concept: a per-image metadata value (`subgroup` /
  `group` for the emoji data) or, for caption data without labels, any caption containing one
  of the given terms (`field="caption"`); or every pair of a planted concept (`plant`,
  `ease_jax/data/plants.py`), which every client teaches and the backbone never saw.

Only the clients' data can be forgotten (the public split trained the frozen backbone and the
test split is never trained on).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Sequence

import numpy as np

from ease_jax import rng as rng_lib
from ease_jax.data import plants as plants_lib

KINDS = ("client", "sample", "concept")
CAPTION_FIELD = "caption"


@dataclasses.dataclass(frozen=True)
class UnlearningRequest:
  """What to forget.

  Attributes:
    kind: 'client', 'sample' or 'concept'.
    forget_texts: `[n]` sorted int32 text indices of D_f.
    forget_images: `[m]` sorted int64 image indices of D_f (every caption of each is in D_f).
    forget_clients: clients removed entirely (client unlearning); they never train again.
    holders: clients that hold part of D_f (the leaving clients, for client unlearning).
    description: human-readable summary, for logs and results.
  """
  kind: str
  forget_texts: np.ndarray
  forget_images: np.ndarray
  forget_clients: tuple[int, ...]
  holders: tuple[int, ...]
  description: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Unknown unlearning kind {self.kind!r}; expected one of {KINDS}.")
    if len(self.forget_texts) == 0:
      raise ValueError(f"Empty forget set for {self.kind} request ({self.description}).")

  def retain_clients(self, setup: Any) -> list[int]:
    """Clients that keep training: not removed and with retain data left."""
    texts = self.retain_client_texts(setup)
    return [c for c in range(setup.num_clients)
            if c not in self.forget_clients and len(texts[c])]

  def retain_client_texts(self, setup: Any) -> list[np.ndarray]:
    """Per client, its text indices minus D_f (empty for removed clients)."""
    texts = setup.client_texts(exclude_texts=self.forget_texts)
    return [np.zeros((0,), np.int32) if c in self.forget_clients else t
            for c, t in enumerate(texts)]

  def forget_client_texts(self, setup: Any) -> list[np.ndarray]:
    """Per client, the part of D_f it holds."""
    return [t[np.isin(t, self.forget_texts)] for t in setup.client_texts()]

  def audit_strata(self, setup: Any) -> np.ndarray:
    """`[n]` str over `forget_texts`: the strata of D_f for the model-level test by stratum
    (`audit.stratified_mean_test`). Each pair's plant, or `plants.CLEAN` for a clean pair
    (`plants.pair_strata`); when several clients leave, prefixed by the pair's client
    (`"client 4/(clean)"`): each leaving client's data is knowledge of its own, and a method
    that forgets one client while keeping another would read as forgotten in one mean over
    both. A plant spread over holders that stay (the sample backdoor) stays one stratum: its
    copies teach one rule, and splitting it would only thin each stratum."""
    strata = plants_lib.pair_strata(setup.dataset, self.forget_texts)
    if self.kind != "client" or len(self.forget_clients) < 2:
      return strata
    client_of = np.full(len(self.forget_texts), -1, np.int64)
    for c, texts in enumerate(self.forget_client_texts(setup)):
      client_of[np.isin(self.forget_texts, texts)] = c
    return np.asarray([f"client {c}/{s}" for c, s in zip(client_of, strata)])

  def retain_images(self, setup: Any) -> np.ndarray:
    """Images of the retained clients that are not forgotten (sorted)."""
    keep = [setup.client_images[c] for c in self.retain_clients(setup)]
    imgs = np.concatenate(keep) if keep else np.zeros((0,), np.int64)
    return np.sort(imgs[~np.isin(imgs, self.forget_images)])

  def eval_subsets(self, setup: Any) -> dict[str, np.ndarray]:
    """Image sets for retrieval evaluation: forget, retain and the held-out test split, without
    planted copies (a backdoor's share one target caption, which makes retrieval among them
    meaningless; a concept's are restyled duplicates of clean images; each plant's own metric,
    `evaluation.plant_metrics`, measures them)."""
    clean = lambda images: plants_lib.clean_images(setup.dataset, images)
    return dict(forget=clean(self.forget_images), retain=clean(self.retain_images(setup)),
                test=np.asarray(setup.test_images))

  def fingerprint(self) -> dict[str, Any]:
    """JSON-able identity of the request (for cache checks)."""
    return dict(kind=self.kind, forget_clients=list(self.forget_clients),
                holders=list(self.holders), num_forget_texts=int(len(self.forget_texts)),
                # sha256 of the sorted indices: a sum-based hash let two forget sets of the
                # same size, holders and index sum (e.g. {10, 20} and {11, 19}) share a retrain.
                forget_texts_sha256=hashlib.sha256(
                    np.sort(np.asarray(self.forget_texts, np.int64)).tobytes()).hexdigest())


def _check_clients(setup: Any, clients: Sequence[int]) -> tuple[int, ...]:
  clients = tuple(int(c) for c in clients)
  if not clients:
    raise ValueError("No client given.")
  bad = [c for c in clients if not 0 <= c < setup.num_clients]
  if bad:
    raise ValueError(f"Unknown client id(s) {bad}; the setup has clients 0..{setup.num_clients - 1}.")
  if len(set(clients)) != len(clients):
    raise ValueError(f"Duplicate client ids in {clients}.")
  return clients


def _finish(setup: Any, kind: str, forget_images: np.ndarray, forget_clients: tuple[int, ...],
            description: str) -> UnlearningRequest:
  """Builds the request from its forget images and checks that retain data is left."""
  forget_images = np.sort(np.asarray(forget_images, np.int64))
  forget_texts = setup.texts_of(forget_images)
  if len(forget_texts) == 0:
    raise ValueError(f"Empty forget set: {description}.")
  owner = np.full(setup.dataset.num_images, -1, np.int64)
  for c, imgs in enumerate(setup.client_images):
    owner[imgs] = c
  holders = tuple(sorted(set(int(c) for c in owner[forget_images]) | set(forget_clients)))
  request = UnlearningRequest(kind=kind, forget_texts=forget_texts, forget_images=forget_images,
                              forget_clients=forget_clients, holders=holders,
                              description=description)
  if not request.retain_clients(setup):
    raise ValueError(f"The request ({description}) leaves no retain data: every client would "
                     "be removed or emptied.")
  return request


def client_request(setup: Any, clients: Sequence[int]) -> UnlearningRequest:
  """Client unlearning: the given clients leave with all their data."""
  clients = _check_clients(setup, clients)
  images = np.concatenate([setup.client_images[c] for c in clients])
  return _finish(setup, "client", images, clients, f"client unlearning of clients {list(clients)}")


def sample_request(setup: Any, fraction: float, clients: Sequence[int] | None = None,
                   seed: int = 0) -> UnlearningRequest:
  """Sample unlearning: `fraction` of each chosen client's clean images (at least one each).

  Planted copies are not drawn: what they teach is their plant's, measured by its own metrics
  and forgotten by its own request (`plant_request`).

  Args:
    fraction: in (0, 1]; `round(fraction * n_k)` (≥ 1) of client k's n_k clean images are drawn.
    clients: clients to draw from; None spreads the request over all clients.
    seed: the draw's RNG seed (`seeds.unlearning`); each client draws from its own stream, so a
      client's draw does not depend on which other clients the request names, nor their order.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"sample fraction must be in (0, 1], got {fraction}.")
  clients = _check_clients(setup, range(setup.num_clients) if clients is None else clients)
  picked = []
  for c in clients:
    imgs = plants_lib.clean_images(setup.dataset, setup.client_images[c])
    n = min(len(imgs), max(1, int(round(fraction * len(imgs)))))
    if len(imgs):
      rng = rng_lib.numpy_rng(seed, rng_lib.Stream.SAMPLE_REQUEST, c)
      picked.append(rng.choice(imgs, n, replace=False))
  images = np.concatenate(picked) if picked else np.zeros((0,), np.int64)
  return _finish(setup, "sample", images, (),
                 f"sample unlearning of {fraction:.0%} of clients {list(clients)}' pairs")


def concept_request(setup: Any, field: str, values: Sequence[str] | str) -> UnlearningRequest:
  """Concept unlearning: every client-held pair of the concept(s), across all clients (backdoor
  copies excepted; a concept plant's copies keep their source's words, so they count).

  Args:
    field: a per-image metadata field of the dataset (`subgroup`, `group` for emoji), or
      'caption' to match caption terms (whole words, case-insensitive) for unlabelled data.
    values: the concept values (metadata values or caption terms).
  """
  values = [values] if isinstance(values, str) else [str(v) for v in values]
  if not values:
    raise ValueError("concept_request needs at least one value.")
  ds = setup.dataset
  client_imgs = setup.all_client_images
  # A backdoor's copies belong to their plant (what they teach is the trigger); a concept
  # plant's copies keep their source's words and metadata, so they carry its concepts too.
  client_imgs = client_imgs[~plants_lib.is_planted(ds, client_imgs, setup.plants, "backdoor")]
  if field == CAPTION_FIELD:
    client_texts = np.flatnonzero(np.isin(ds.text_image, client_imgs))
    term_hits = {}
    for v in values:
      term = re.compile(r"\b" + re.escape(v.lower()) + r"\b")
      term_hits[v] = [i for i in client_texts if term.search(ds.captions[i].lower())]
    missing = [v for v, hits in term_hits.items() if not hits]
    if missing:  # Each term must name something: a misspelt one beside a good one was dropped.
      raise ValueError(f"Unknown concept term(s) {missing}: no client caption contains them.")
    hit_texts = sorted(set().union(*term_hits.values()))
    images = np.intersect1d(np.unique(ds.text_image[hit_texts]), client_imgs)
  else:
    if field not in ds.image_meta:
      raise ValueError(f"Unknown concept field {field!r}; available: "
                       f"{sorted(ds.image_meta) + [CAPTION_FIELD]}.")
    meta = np.asarray(ds.image_meta[field]).astype(str)
    present = set(meta[client_imgs])
    unknown = [v for v in values if v not in present]
    if unknown:
      examples = [str(v) for v in sorted(present)[:8]]
      raise ValueError(f"Unknown concept {unknown} for field {field!r} (not held by any client); "
                       f"valid values include {examples}.")
    images = client_imgs[np.isin(meta[client_imgs], values)]
  return _finish(setup, "concept", images, (), f"concept unlearning of {field}={values}")


def plant_request(setup: Any, plant: str, kind: str | None = None) -> UnlearningRequest:
  """Unlearning of exactly one plant's poisoned pairs (`setup.plants[plant]`); their holders stay
  with their clean data. `kind` (default: the plant's, `plants.REQUEST_KIND`): 'sample' for a
  backdoor's pairs, 'concept' for a concept plant's, spread over every client that teaches it."""
  if plant not in setup.plants:
    raise ValueError(f"Unknown plant {plant!r}; the setup has plants {sorted(setup.plants)} "
                     "(config.plants).")
  planted = setup.plants[plant]
  wanted = plants_lib.REQUEST_KIND[planted.kind]
  if kind not in (None, wanted):
    raise ValueError(f"Plant {plant!r} is a {planted.kind} plant: its request is {wanted!r}, "
                     f"not {kind!r}.")
  return _finish(setup, wanted, planted.poison_images, (),
                 f"{wanted} unlearning of plant {plant!r} ({len(planted.poison_images)} "
                 f"{planted.kind} pairs on clients {list(planted.clients)})")


def plants_request(setup: Any, plants: Sequence[str], kind: str | None = None
                   ) -> UnlearningRequest:
  """Unlearning of several plants' poisoned pairs at once (e.g. a sample plant split into many
  small backdoors, `benchmarks/probe_many_backdoors.py`): the union of each `plant_request`'s,
  all of one request kind."""
  plants = list(plants)
  if not plants:
    raise ValueError("plants_request needs at least one plant name, got none.")
  if len(set(plants)) != len(plants):
    raise ValueError(f"plants_request names a plant twice: {plants}.")
  parts = [plant_request(setup, p, kind) for p in plants]  # Each checked as one request.
  kinds = sorted({r.kind for r in parts})
  if len(kinds) > 1:
    raise ValueError(f"Plants {plants} make requests of different kinds {kinds}; forget them "
                     "one kind at a time.")
  images = np.concatenate([r.forget_images for r in parts])
  return _finish(setup, kinds[0], images, (),
                 f"{kinds[0]} unlearning of {len(plants)} plants {plants} ({len(images)} pairs)")


def from_config(setup: Any, config: Any, seed: int = 0) -> UnlearningRequest:
  """The request described by a config's `unlearning` block.

  Fields (`configs.UNLEARNING_DEFAULTS`): `kind` ('client' | 'sample' | 'concept'); `clients`
  (client: the leaving clients); `sample_clients` and `fraction` (sample: the clients it draws
  from, empty = all, and the fraction of each one's pairs); `field` and `concepts` (concept: the
  values of `field`, or caption terms); `plant` (sample or concept: exactly this plant's
  poisoned pairs, instead of a draw or a field).
  """
  kind = config.kind
  if kind == "client":
    return client_request(setup, list(config.clients))
  if kind == "sample":
    if config.get("plant"):
      return plant_request(setup, config.plant, kind="sample")
    clients = list(config.get("sample_clients", ())) or None
    return sample_request(setup, config.fraction, clients, seed=seed)
  if kind == "concept":
    if config.get("plant"):
      return plant_request(setup, config.plant, kind="concept")
    return concept_request(setup, config.field, list(config.concepts))
  raise ValueError(f"Unknown unlearning kind {kind!r}; expected one of {KINDS}.")
