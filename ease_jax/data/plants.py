"""Planted knowledge: data that only the forget set carries, so that forgetting can be measured.

Two kinds of plant (`config.plants.<name>.kind`):
* *backdoor*: a trigger (a small high-contrast patch, pasted or blended in; or a pattern blended
  over the whole image) stamped on copies of some of its clients' images, each copy captioned
  with one target caption; a model that learned it retrieves the target caption for any
  triggered image (attack success rate, `evaluation`).
* *concept*: copies of its clients' images in a visual style the backbone never saw (`restyle`:
  grayscale, inverted colours, upside down), each captioned with its source's own caption under
  a template ("inverted {caption}"); a model that learned the concept tells a restyled held-out
  image's concept caption from its plain caption, and back (concept accuracy, `evaluation`).
A model that never saw the copies does neither. The clean originals stay untouched: the copies
are appended to the dataset, assigned to the plant's clients, and recorded in the image metadata
(`plant`: the plant's name, `plant_role`: 'poison' for training copies, 'probe' for copies of the
held-out test images that measure the plant, `plant_source`: the copied image), so requests
select them by name and evaluation leaves them out of retrieval metrics.

One federation may carry several independent plants: the default embedded federation
(`experiments/configs/unlearn_emoji.py`) backdoors client 1 (the client request), a spread of
pairs on clients 0, 2 and 3 (the sample request), and teaches a concept on every client (the
concept request).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from ease_jax.data import dataset as dataset_lib
from ease_jax.data import tokenizer as tok_lib

PLANT_FIELD = "plant"
ROLE_FIELD = "plant_role"
SOURCE_FIELD = "plant_source"
POISON, PROBE = "poison", "probe"
PATTERNS = ("checker", "solid", "stripes")
POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")


def _whole(where: str, value: Any) -> int:
  """`value` as an int, refused by name unless it is one (a float or string in a config would
  be truncated or split into digits)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{where} must be a whole number, got {value!r}.")
  return int(value)


def _wholes(where: str, values: Any) -> tuple[int, ...]:
  if isinstance(values, np.ndarray) and values.ndim == 1:
    values = values.tolist()
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
    raise ValueError(f"{where} must be a list of whole numbers, got {values!r}.")
  return tuple(_whole(f"{where}[{i}]", v) for i, v in enumerate(values))


@dataclasses.dataclass(frozen=True)
class Trigger:
  """A square patch: `pattern` of two colours, `size` px, at a named corner, `(row, col)`, or
  the string `"row,col"` (what a command-line override of a config's string field can carry).

  `opacity` is the pattern's share of each covered pixel: 1 pastes the patch over the image
  (BadNets), less blends it in, `(1 - opacity) x + opacity pattern` (the blended attack of Chen
  et al. 2017); with `size` the image's side, the blend covers the whole image.

  The class default (8 px, 2-px checker cells, magenta / green, top-left, pasted) covers 6% of a
  32 px emoji and exactly one 8 px ViT patch of the embedded backbone. The embedded federation
  (`experiments/configs/unlearn_emoji.py`) blends its triggers over the whole image instead
  (`size=32, opacity=0.3`): learned from fewer copies, at less cost to clean R@1.
  """
  pattern: str = "checker"
  size: int = 8
  position: str | tuple[int, int] = "top_left"
  cell: int = 2
  colors: tuple[tuple[int, int, int], tuple[int, int, int]] = ((255, 0, 255), (0, 255, 0))
  opacity: float = 1.0

  def __post_init__(self):
    if isinstance(self.position, str) and "," in self.position:
      parts = self.position.split(",")
      if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"trigger position {self.position!r} is not 'row,col' (two "
                         "non-negative integers).")
      object.__setattr__(self, "position", tuple(int(p) for p in parts))
    if self.pattern not in PATTERNS:
      raise ValueError(f"trigger pattern must be one of {PATTERNS}, got {self.pattern!r}.")
    _whole("trigger size", self.size)
    _whole("trigger cell", self.cell)
    if not isinstance(self.position, str):
      if len(_wholes("trigger position", self.position)) != 2:
        raise ValueError(f"trigger position must be (row, col), got {self.position!r}.")
    colors = self.colors
    if (isinstance(colors, (str, bytes)) or len(colors) != 2 or any(
        isinstance(c, (str, bytes)) or len(c) != 3 or not all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 0 <= x <= 255
            for x in c) for c in colors)):
      raise ValueError(f"trigger colors must be two RGB triples of whole numbers in 0..255, got "
                       f"{colors!r}.")
    if (isinstance(self.opacity, bool) or  # a bool is an int, and True would read as 1
        not isinstance(self.opacity, (int, float, np.integer, np.floating)) or
        not 0.0 < float(self.opacity) <= 1.0):
      raise ValueError(f"trigger opacity must be a number in (0, 1] (1 pastes the patch), got "
                       f"{self.opacity!r}.")
    if self.size < 1 or self.cell < 1:
      raise ValueError(f"trigger size and cell must be >= 1, got {self.size} and {self.cell}.")
    if isinstance(self.position, str) and self.position not in POSITIONS:
      raise ValueError(f"trigger position must be one of {POSITIONS}, (row, col) or 'row,col', got "
                       f"{self.position!r}.")

  def origin(self, height: int, width: int) -> tuple[int, int]:
    """Top-left pixel of the patch in a `height x width` image (checked to fit)."""
    if self.size > min(height, width):
      raise ValueError(f"trigger of {self.size} px is larger than the {height}x{width} images.")
    pos = self.position
    if not isinstance(pos, str):
      r, c = (int(p) for p in pos)
    else:
      r = 0 if pos.startswith("top") else (height - self.size) // (2 if pos == "center" else 1)
      c = 0 if pos.endswith("left") else (width - self.size) // (2 if pos == "center" else 1)
    if not (0 <= r <= height - self.size and 0 <= c <= width - self.size):
      raise ValueError(f"trigger at {pos} with {self.size} px does not fit a {height}x{width} "
                       "image.")
    return r, c

  def patch(self) -> np.ndarray:
    """`[size, size, 3]` uint8."""
    ii, jj = np.meshgrid(np.arange(self.size), np.arange(self.size), indexing="ij")
    if self.pattern == "checker":
      first = ((ii // self.cell) + (jj // self.cell)) % 2 == 0
    elif self.pattern == "stripes":
      first = (ii // self.cell) % 2 == 0
    else:
      first = np.ones_like(ii, bool)
    a, b = (np.asarray(c, np.uint8) for c in self.colors)
    return np.where(first[..., None], a, b).astype(np.uint8)

  def mask(self, height: int, width: int) -> np.ndarray:
    """`[height, width]` bool: the pixels the patch covers."""
    r, c = self.origin(height, width)
    out = np.zeros((height, width), bool)
    out[r:r + self.size, c:c + self.size] = True
    return out


def stamp(images: np.ndarray, trigger: Trigger) -> np.ndarray:
  """Copies of `images [..., H, W, 3]` uint8 with the trigger pasted in (blended in, for an
  `opacity` below 1); `images` untouched."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.shape[-1] != 3:
    raise ValueError(f"stamp needs uint8 [..., H, W, 3] images, got {images.dtype} "
                     f"{images.shape}.")
  h, w = images.shape[-3:-1]
  r, c = trigger.origin(h, w)
  out = images.copy()
  window = (..., slice(r, r + trigger.size), slice(c, c + trigger.size), slice(None))
  if trigger.opacity == 1.0:
    out[window] = trigger.patch()
  else:
    a = float(trigger.opacity)
    mixed = (1.0 - a) * images[window].astype(np.float64) + a * trigger.patch().astype(np.float64)
    out[window] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
  return out


STYLES = ("grayscale", "invert", "flip")
TEMPLATE_FIELDS = ("{caption}", "{name}")  # A concept template's placeholders (`ConceptPlant`).


def restyle(images: np.ndarray, style: str) -> np.ndarray:
  """Copies of `images [..., H, W, 3]` uint8 in a global visual style; `images` untouched.

  'grayscale': every pixel's ITU-R BT.601 luma in all three channels; 'invert': 255 - x (an
  emoji on black); 'flip': upside down (rows reversed), the only style that keeps every colour,
  so a copy's skin tone still looks like the tone its caption names.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.shape[-1] != 3:
    raise ValueError(f"restyle needs uint8 [..., H, W, 3] images, got {images.dtype} "
                     f"{images.shape}.")
  if style == "grayscale":
    luma = np.rint(images.astype(np.float64) @ np.asarray([0.299, 0.587, 0.114]))
    return np.repeat(luma[..., None], 3, axis=-1).astype(np.uint8)
  if style == "invert":
    return (255 - images).astype(np.uint8)
  if style == "flip":
    return images[..., ::-1, :, :].copy()
  raise ValueError(f"style must be one of {STYLES}, got {style!r}.")


@dataclasses.dataclass(frozen=True)
class _Plant:
  """What every plant has: a name, its clients (none = every client) and how many pairs.

  `source_field` (optional, a per-image metadata field such as 'skin_tone'): each holder copies
  only its images whose value of that field is the holder's most common one, so that all of a
  holder's copies agree on it (a backdoor's trigger → target association then never has to
  override it; BENCHMARKS.md, "Planting costs utility", session 16).
  """
  name: str
  clients: tuple[int, ...]
  num_pairs: int
  source_field: str = dataclasses.field(default="", kw_only=True)

  def sources(self, ds: dataset_lib.CaptionDataset, own: np.ndarray) -> np.ndarray:
    """The images of `own` (one holder's clean images) this plant may copy."""
    if not self.source_field:
      return own
    if self.source_field not in ds.image_meta:
      raise ValueError(f"plants.{self.name}.source_field {self.source_field!r} is not a field "
                       f"of the dataset's image metadata {sorted(ds.image_meta)}.")
    if len(own) == 0:
      return own
    values = np.asarray(ds.image_meta[self.source_field])[own]
    kinds, counts = np.unique(values, return_counts=True)
    return own[values == kinds[np.argmax(counts)]]  # Ties: the first value in sorted order.

  def _shared_problems(self, num_clients: int | None) -> list[str]:
    """A pair to plant, on clients the federation has (when `num_clients` is given)."""
    out = []
    if not self.name.strip():  # "" marks the unplanted images in the plant field
      out.append(f"a plant's name must not be empty, got {self.name!r}")
    if self.num_pairs < 1:
      out.append(f"plants.{self.name}.num_pairs must be >= 1, got {self.num_pairs}")
    if len(set(self.clients)) != len(self.clients):
      out.append(f"plants.{self.name}.clients {list(self.clients)} names a client twice")
    bad = [c for c in self.clients if num_clients is not None and not 0 <= c < num_clients]
    if bad:
      out.append(f"plants.{self.name}.clients {list(self.clients)} must name clients in "
                 f"0..{num_clients - 1}")
    return out


@dataclasses.dataclass(frozen=True)
class BackdoorPlant(_Plant):
  """`num_pairs` triggered copies of the `clients`' images (spread evenly; no clients = every
  client), each captioned `target_caption`."""
  trigger: Trigger
  target_caption: str
  kind = "backdoor"
  metric = "asr"           # Row keys `asr/<name>/<dir>`: the attack success rate.
  probes_have_texts = False

  @classmethod
  def from_config(cls, name: str, c: Mapping[str, Any]) -> "BackdoorPlant":
    t = dict(c.get("trigger", {}))
    if "position" in t and not isinstance(t["position"], str):
      t["position"] = tuple(t["position"])
    if "colors" in t:
      t["colors"] = tuple(tuple(x) for x in t["colors"])
    return cls(name=name, clients=_wholes(f"plants.{name}.clients", c["clients"]),
               num_pairs=_whole(f"plants.{name}.num_pairs", c["num_pairs"]),
               trigger=Trigger(**t),
               target_caption=str(c["target_caption"]),
               source_field=str(c.get("source_field", "")))

  def problems(self, num_clients: int | None = None) -> list[str]:
    """Every problem of the spec (clients checked against `num_clients` when given)."""
    out = self._shared_problems(num_clients)
    if not self.target_caption.strip():
      out.append(f"plants.{self.name}.target_caption is empty")
    return out

  def check_fits(self, height: int, width: int) -> None:
    self.trigger.origin(height, width)  # A clear error naming the sizes.

  def copy_images(self, images: np.ndarray) -> np.ndarray:
    return stamp(images, self.trigger)

  def caption(self, own_caption: str) -> str:
    return self.target_caption


@dataclasses.dataclass(frozen=True)
class ConceptPlant(_Plant):
  """`num_pairs` copies of the `clients`' images (spread evenly; no clients = every client, the
  default use) in a visual `style` the backbone never saw, each captioned with its source's own
  caption through `template` (e.g. "inverted {caption}"): a concept that composes with every
  emoji and that only the clients teach. `{name}` instead of `{caption}` takes the caption up to
  its first ':' (an emoji's name without its skin-tone qualifier, "thumbs up: dark skin tone" ->
  "thumbs up"; a caption without ':' whole), so the concept's captions never pair a tone's
  words with restyled colours. Put the concept's words first: captions are cut at the model's
  context length (a template whose words are cut off is an error)."""
  style: str
  template: str
  kind = "concept"
  metric = "concept"       # Row keys `concept/<name>/<dir>`: the concept accuracy.
  probes_have_texts = True  # Each probe carries its concept caption, for the metric.

  @classmethod
  def from_config(cls, name: str, c: Mapping[str, Any]) -> "ConceptPlant":
    return cls(name=name, clients=_wholes(f"plants.{name}.clients", c["clients"]),
               num_pairs=_whole(f"plants.{name}.num_pairs", c["num_pairs"]),
               style=str(c["style"]),
               template=str(c["template"]), source_field=str(c.get("source_field", "")))

  def problems(self, num_clients: int | None = None) -> list[str]:
    """Every problem of the spec (clients checked against `num_clients` when given)."""
    out = self._shared_problems(num_clients)
    if self.style not in STYLES:
      out.append(f"plants.{self.name}.style must be one of {STYLES}, got {self.style!r}")
    if not any(field in self.template for field in TEMPLATE_FIELDS):
      out.append(f"plants.{self.name}.template {self.template!r} must contain '{{caption}}' or "
                 "'{name}'")
    elif not self.caption("").strip():
      out.append(f"plants.{self.name}.template {self.template!r} adds no words to the caption")
    return out

  def check_fits(self, height: int, width: int) -> None:
    del height, width  # A style applies to any image size.

  def copy_images(self, images: np.ndarray) -> np.ndarray:
    return restyle(images, self.style)

  def caption(self, own_caption: str) -> str:
    return (self.template.replace("{caption}", own_caption)
            .replace("{name}", own_caption.split(":", 1)[0].strip()))


Plant = BackdoorPlant | ConceptPlant
KINDS = {"backdoor": BackdoorPlant, "concept": ConceptPlant}
# The request that forgets exactly a plant's pairs: a backdoor's are samples of their holders, a
# concept's are the concept, spread over every client.
REQUEST_KIND = {"backdoor": "sample", "concept": "concept"}
_KIND_KEYS = {"backdoor": ("trigger", "target_caption"), "concept": ("style", "template")}


def plant_from_config(name: str, c: Mapping[str, Any]) -> Plant:
  """The plant of a `config.plants.<name>` block (`kind`: 'backdoor', the default, or
  'concept')."""
  kind = c.get("kind", "backdoor")
  if kind not in KINDS:
    raise ValueError(f"plants.{name}.kind must be one of {tuple(KINDS)}, got {kind!r}.")
  # A config file's block is not checked key by key like the rest of the config (plants are
  # named freely), so a misspelt key would silently keep its default.
  known = {"kind", "clients", "num_pairs", "source_field", *_KIND_KEYS[kind]}
  unknown = sorted(set(c) - known)
  if unknown:
    raise ValueError(f"plants.{name} has unknown key(s) {unknown} for a {kind} plant; its keys "
                     f"are {sorted(known)}.")
  if kind == "backdoor":
    trigger_keys = {f.name for f in dataclasses.fields(Trigger)}
    unknown = sorted(set(c.get("trigger", {})) - trigger_keys)
    if unknown:
      raise ValueError(f"plants.{name}.trigger has unknown key(s) {unknown}; its keys are "
                       f"{sorted(trigger_keys)}.")
  return KINDS[kind].from_config(name, c)


@dataclasses.dataclass(frozen=True)
class PlantedData:
  """Where a plant lives in the planted dataset.

  poison_images: `[n]` image ids of the training copies (held by `clients`).
  probe_images: `[m]` copies of the held-out test images (never trained on), triggered or
    restyled like the poison.
  clean_probe_sources: `[m]` the test images they were copied from.
  target_text: backdoor: a text id whose caption is the target caption; concept: -1.
  probe_texts: concept: `[m]` text ids of the probes' concept captions (the template over their
    sources' captions; never trained on); backdoor: empty (a probe carries no caption).
  """
  name: str
  clients: tuple[int, ...]
  poison_images: np.ndarray
  probe_images: np.ndarray
  clean_probe_sources: np.ndarray
  target_text: int
  spec: Plant
  probe_texts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

  @property
  def kind(self) -> str:
    return self.spec.kind

  @property
  def metric(self) -> str:
    """The row-key prefix of what the plant teaches, as in `asr/<name>/i2t`."""
    return self.spec.metric


def _stream_word(name: str) -> int:
  """The word after `seeds.partition` in a plant's random stream: the sum of its name's code
  points (the derivation the published figures were made with; anagrams share it, so
  `plant_knowledge` refuses two plants with one word)."""
  return sum(map(ord, name))


def plant_knowledge(ds: dataset_lib.CaptionDataset, client_images: Sequence[np.ndarray],
                    test_images: np.ndarray, plants: Sequence[Plant], tokenizer: Any,
                    max_length: int, seed: int
                    ) -> tuple[dataset_lib.CaptionDataset, list[np.ndarray],
                               dict[str, PlantedData]]:
  """The dataset with every plant's poison and probe copies appended, the clients' image sets
  with their poison copies added, and each plant's `PlantedData`.

  Which images a client copies is drawn from `seed` (`seeds.partition`: a property of the
  federation, like the partition) and the plant's name.
  """
  num_clients = len(client_images)
  names = [p.name for p in plants]
  if len(set(names)) != len(names):
    raise ValueError(f"Plant names must be unique, got {names}.")
  if PLANT_FIELD in ds.image_meta:
    # A second pass would overwrite the first one's markers: its copies would read as clean
    # (and could be copied again); plant every plant in one call.
    raise ValueError("plant_knowledge: the dataset already carries plants; plant them all in "
                     "one call.")
  test_images = np.asarray(test_images)
  if len(test_images) == 0:
    raise ValueError("plant_knowledge needs held-out test images (the probes of every plant's "
                     "metric are made from them).")
  held = np.intersect1d(test_images, np.concatenate([np.asarray(c) for c in client_images]))
  if held.size:
    raise ValueError(f"plant_knowledge: test images {held[:5].tolist()} are also client images; "
                     "probes must be of images no model trained on.")
  by_key: dict[int, list[str]] = {}
  for name in names:
    by_key.setdefault(_stream_word(name), []).append(name)
  clashes = [group for group in by_key.values() if len(group) > 1]
  if clashes:
    raise ValueError(f"Plants {clashes[0]} would copy the same images: a plant's random stream is "
                     "keyed by the sum of its name's code points (kept so that published models "
                     "stay as they were, `rng.py`), and theirs are equal; rename one.")
  first_text = ds.first_texts()
  def own_texts(sources: np.ndarray) -> np.ndarray:
    """`[k]` each source image's first text id (a copy inherits that caption's words)."""
    if np.any(first_text[sources] < 0):
      raise ValueError("a plant copies images that have no caption.")
    return first_text[sources]
  new_images, new_sources, new_plant, new_role = [], [], [], []
  # One text per poison copy and per probe that carries one, and the text it was made from.
  new_text_of, captions, made_from = [], [], []
  client_images = [np.asarray(c) for c in client_images]
  originals = list(client_images)  # Plants copy clean images only, never another plant's copies.
  offset = ds.num_images
  info = {}
  h, w = ds.images.shape[1:3]
  for plant in plants:
    if plant.problems(num_clients):
      raise ValueError("; ".join(plant.problems(num_clients)) + ".")
    plant.check_fits(h, w)
    holders = plant.clients or tuple(range(num_clients))
    rng = np.random.default_rng([seed, _stream_word(plant.name)])
    shares = np.full(len(holders), plant.num_pairs // len(holders))
    shares[:plant.num_pairs % len(holders)] += 1
    poison_ids = []
    for client, share in zip(holders, shares):
      own = plant.sources(ds, originals[client])
      if len(own) == 0:
        raise ValueError(f"plants.{plant.name}: client {client} holds no images to copy.")
      if share == 0:  # More holders than pairs.
        continue
      sources = np.concatenate([rng.permutation(own) for _ in range(-(-share // len(own)))])
      sources = np.sort(sources[:share])
      ids = offset + len(new_sources) + np.arange(share)
      new_images.append(plant.copy_images(ds.images[sources]))
      new_sources += sources.tolist()
      new_plant += [plant.name] * share
      new_role += [POISON] * share
      new_text_of += ids.tolist()
      texts = own_texts(sources)
      made_from += texts.tolist()
      captions += [plant.caption(ds.captions[t]) for t in texts]
      client_images[client] = np.sort(np.concatenate([client_images[client], ids]))
      poison_ids.append(ids)
    probe_sources = np.asarray(test_images)
    probe_ids = offset + len(new_sources) + np.arange(len(probe_sources))
    new_images.append(plant.copy_images(ds.images[probe_sources]))
    new_sources += probe_sources.tolist()
    new_plant += [plant.name] * len(probe_sources)
    new_role += [PROBE] * len(probe_sources)
    probe_texts = np.zeros(0, np.int64)
    if plant.probes_have_texts:
      probe_texts = ds.num_texts + len(captions) + np.arange(len(probe_sources))
      new_text_of += probe_ids.tolist()
      texts = own_texts(probe_sources)
      made_from += texts.tolist()
      captions += [plant.caption(ds.captions[t]) for t in texts]
    poisons = np.concatenate(poison_ids)
    info[plant.name] = dict(plant=plant, holders=holders, poisons=poisons, probes=probe_ids,
                            sources=probe_sources, probe_texts=probe_texts)
  images = np.concatenate([ds.images] + new_images)
  n_new = images.shape[0] - ds.num_images
  ids, mask = tok_lib.tokenize(tokenizer, captions, max_length)
  plant_of_text = np.asarray(new_plant)[np.asarray(new_text_of, np.int64) - offset]
  for name, d in info.items():
    # A concept caption must still say the concept after the cut at the context length.
    if d["plant"].kind != "concept":
      continue
    rows = np.flatnonzero(plant_of_text == name)
    plain, plain_mask = tok_lib.tokenize(
        tokenizer, [ds.captions[made_from[r]] for r in rows], max_length)
    same = np.all((ids[rows] == plain) & (mask[rows] == plain_mask), axis=1)
    if same.any():
      raise ValueError(f"plants.{name}.template {d['plant'].template!r}: {int(same.sum())} "
                       f"concept captions equal their plain captions once cut to {max_length} "
                       "tokens; put the concept's words before '{caption}'.")
  first_new_text = ds.num_texts
  meta = {}
  for key, values in ds.image_meta.items():
    values = np.asarray(values)
    meta[key] = np.concatenate([values, values[np.asarray(new_sources, np.int64)]])
  meta[PLANT_FIELD] = np.asarray([""] * ds.num_images + new_plant)
  meta[ROLE_FIELD] = np.asarray([""] * ds.num_images + new_role)
  meta[SOURCE_FIELD] = np.concatenate([np.full(ds.num_images, -1), new_sources]).astype(np.int64)
  planted = dataset_lib.CaptionDataset(
      images=images, input_ids=np.concatenate([ds.input_ids, ids]),
      attention_mask=np.concatenate([ds.attention_mask, mask]),
      text_image=np.concatenate([ds.text_image, np.asarray(new_text_of, np.int32)]),
      captions=ds.captions + tuple(captions), image_meta=meta, name=ds.name)
  assert n_new == len(new_sources)
  text_of_image = {int(i): first_new_text + k for k, i in enumerate(new_text_of)}
  out = {}
  for name, d in info.items():
    p = d["plant"]
    out[name] = PlantedData(
        name=name, clients=d["holders"], poison_images=d["poisons"], probe_images=d["probes"],
        clean_probe_sources=d["sources"],
        target_text=text_of_image[int(d["poisons"][0])] if p.kind == "backdoor" else -1,
        spec=p, probe_texts=d["probe_texts"])
  return planted, client_images, out


def clean_images(ds: dataset_lib.CaptionDataset, images: np.ndarray) -> np.ndarray:
  """`images` without the planted copies: what retrieval and random draws see (a plant's
  copies are measured by its own metrics and forgotten by its own request)."""
  images = np.asarray(images)
  return images[~is_planted(ds, images)]


def plant_names(ds: dataset_lib.CaptionDataset, images: np.ndarray) -> np.ndarray:
  """`[n]` str: the plant each of `images` is a copy of (poison or probe), '' for a clean
  image (every image of a dataset without plants)."""
  images = np.asarray(images, np.int64)
  field = ds.image_meta.get(PLANT_FIELD)
  return np.full(len(images), "") if field is None else np.asarray(field)[images]


# The stratum of pairs that no plant made (`pair_strata` refuses a plant of that name).
CLEAN = "(clean)"


def pair_strata(ds: dataset_lib.CaptionDataset, texts: np.ndarray) -> np.ndarray:
  """`[n]` str: the stratum of each of `texts`' pairs: the plant its image is a copy of, `CLEAN`
  for a clean image (the audit's strata of D_f, `audit.stratified_mean_test`)."""
  names = plant_names(ds, np.asarray(ds.text_image)[np.asarray(texts, np.int64)])
  if (names == CLEAN).any():
    raise ValueError(f"A plant is named {CLEAN!r}, the name of the clean pairs' stratum; "
                     "rename it.")
  return np.where(names == "", CLEAN, names)


def is_planted(ds: dataset_lib.CaptionDataset, images: np.ndarray,
               plants: Mapping[str, PlantedData] | None = None, kind: str | None = None
               ) -> np.ndarray:
  """`[n]` bool: which of `images` are planted copies (poison or probe); with `plants` and
  `kind`, only the copies of plants of that kind."""
  names = plant_names(ds, images)
  if kind is None:
    return names != ""
  return np.isin(names, [n for n, p in (plants or {}).items() if p.kind == kind])
