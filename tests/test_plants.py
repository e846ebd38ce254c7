"""Planted knowledge: stamping, restyling, planting, attack success rates, concept accuracies and
the tone metric, against brute-force references."""
import dataclasses

import numpy as np
import pytest

from ease_jax import evaluation
from ease_jax.data import dataset as dataset_lib
from ease_jax.data import plants
from ease_jax.data import tokenizer as tok_lib


@pytest.fixture(scope="module")
def emoji():
  tokenizer = tok_lib.load_tokenizer(dataset_lib.embedded_tokenizer_dir())
  return dataset_lib.load_emoji(tokenizer=tokenizer, max_length=16), tokenizer


@pytest.mark.parametrize("trigger", [
    plants.Trigger(),
    plants.Trigger(pattern="stripes", size=5, position="bottom_right"),
    plants.Trigger(pattern="solid", size=3, position=(10, 20)),
    plants.Trigger(size=9, position="center", cell=3),
])
def test_stamp_changes_pixels_only_inside_the_patch(trigger):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  before = images.copy()
  out = plants.stamp(images, trigger)
  np.testing.assert_array_equal(images, before)  # The originals are never touched.
  inside = trigger.mask(32, 32)
  assert inside.sum() == trigger.size ** 2
  np.testing.assert_array_equal(out[:, ~inside], images[:, ~inside])
  r, c = trigger.origin(32, 32)
  np.testing.assert_array_equal(out[:, r:r + trigger.size, c:c + trigger.size],
                                np.broadcast_to(trigger.patch(), (6,) + trigger.patch().shape))
  colors = {tuple(x) for x in trigger.patch().reshape(-1, 3)}
  assert colors <= {tuple(c) for c in trigger.colors}


def test_trigger_patches_and_places_written_out():
  """Hand-written patches and positions (not the code's own `patch` and `origin`): the 8 px
  default checker of 2-px cells top-left; 5 px horizontal stripes of 1-px rows bottom-right;
  9 px centred."""
  a, b = (255, 0, 255), (0, 255, 0)
  checker_rows = ["AABBAABB", "AABBAABB", "BBAABBAA", "BBAABBAA"] * 2
  out = plants.stamp(np.zeros((32, 32, 3), np.uint8), plants.Trigger())
  want = np.array([[a if ch == "A" else b for ch in row] for row in checker_rows], np.uint8)
  np.testing.assert_array_equal(out[:8, :8], want)
  assert not out[8:].any() and not out[:, 8:].any()
  yellow, blue = (255, 255, 0), (0, 0, 255)
  stripes = plants.Trigger(pattern="stripes", size=5, position="bottom_right", cell=1,
                           colors=(yellow, blue))
  out = plants.stamp(np.zeros((32, 32, 3), np.uint8), stripes)
  for row, colour in zip(range(27, 32), (yellow, blue, yellow, blue, yellow)):
    assert (out[row, 27:] == colour).all(), row
  assert not out[:27].any() and not out[:, :27].any()
  assert np.argwhere(plants.Trigger(size=9, position="center").mask(32, 32))[0].tolist() == [
      11, 11]


def test_blended_trigger_mixes_the_pattern_in_by_its_opacity():
  """`opacity` < 1 (the blended attack): every covered pixel is (1 - a) x + a pattern, rounded,
  against a reference built here in exact integers (a = k / 20, the checker written out by its
  cell formula); every other pixel is untouched; a whole-image trigger (size = the side) covers
  every pixel; opacity 1 is the paste."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  before = images.copy()
  a, b = np.array((255, 0, 255)), np.array((0, 255, 0))
  for size, position, opacity in ((8, "top_left", 0.25), (32, "top_left", 0.2),
                                  (5, (10, 20), 0.5)):
    trigger = plants.Trigger(size=size, position=position, opacity=opacity)
    out = plants.stamp(images, trigger)
    np.testing.assert_array_equal(images, before)
    r, c = trigger.origin(32, 32)
    inside = np.zeros((32, 32), bool)
    inside[r:r + size, c:c + size] = True
    np.testing.assert_array_equal(out[:, ~inside], images[:, ~inside])
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    pattern = np.where(((ii // 2 + jj // 2) % 2 == 0)[..., None], a, b)  # [size, size, 3]
    k = round(opacity * 20)
    twenty_x = (20 - k) * images[:, r:r + size, c:c + size].astype(np.int64) + k * pattern
    # The stored value is the exact one rounded: within half a level of it.
    assert (np.abs(20 * out[:, r:r + size, c:c + size].astype(np.int64) - twenty_x) <= 10).all()
    assert not np.array_equal(out[:, r:r + size, c:c + size], images[:, r:r + size, c:c + size])
  assert plants.Trigger(size=32, opacity=0.2).mask(32, 32).all()
  np.testing.assert_array_equal(plants.stamp(images, plants.Trigger(opacity=1)),
                                plants.stamp(images, plants.Trigger()))
  spec = dict(kind="backdoor", clients=(0,), num_pairs=5, target_caption="rocket")
  assert plants.plant_from_config("x", dict(spec, trigger=dict(opacity=0.3))
                                  ).trigger.opacity == 0.3


def test_trigger_errors_name_the_problem():
  with pytest.raises(ValueError, match="larger than the 32x32"):
    plants.stamp(np.zeros((1, 32, 32, 3), np.uint8), plants.Trigger(size=40))
  with pytest.raises(ValueError, match="does not fit"):
    plants.Trigger(size=8, position=(30, 0)).origin(32, 32)
  with pytest.raises(ValueError, match="pattern"):
    plants.Trigger(pattern="spots")
  with pytest.raises(ValueError, match="position"):
    plants.Trigger(position="middle")
  for bad in (0.0, -0.1, 1.5, "0.2", True, None):
    with pytest.raises(ValueError, match="trigger opacity must be a number in \\(0, 1\\]"):
      plants.Trigger(opacity=bad)


def test_trigger_position_from_a_config_string():
  """A command-line override can only put a string into the config's position field: "row,col"
  means the same as [row, col]."""
  spec = dict(kind="backdoor", clients=(0,), num_pairs=5, target_caption="rocket")
  for position in ("8,16", " 8 , 16", (8, 16), [8, 16]):
    plant = plants.plant_from_config("x", dict(spec, trigger=dict(position=position)))
    assert plant.trigger.position == (8, 16)
    assert plant.trigger.origin(32, 32) == (8, 16)
  assert plants.Trigger(position="8,16") == plants.Trigger(position=(8, 16))
  assert plants.plant_from_config("x", dict(spec, trigger=dict(position="center"))
                                  ).trigger.position == "center"
  for bad in ("8,x", "8,16,2", "-1,3"):
    with pytest.raises(ValueError, match="row,col"):
      plants.plant_from_config("x", dict(spec, trigger=dict(position=bad)))


def _random_split(ds, seed, num_test, client_size, num_clients):
  """`(test [num_test], [client images [client_size]] * num_clients)`, disjoint, sorted."""
  order = np.random.default_rng(seed).permutation(ds.num_images)
  clients = [order[num_test + client_size * k: num_test + client_size * (k + 1)]
             for k in range(num_clients)]
  return np.sort(order[:num_test]), [np.sort(c) for c in clients]


def test_plant_knowledge_appends_copies_and_keeps_the_originals(emoji):
  ds, tokenizer = emoji
  test, clients = _random_split(ds, 1, 20, 50, 4)
  specs = [plants.BackdoorPlant("a", (0,), 30, plants.Trigger(), "grinning face"),
           plants.BackdoorPlant("b", (1, 2, 3), 10, plants.Trigger(pattern="stripes",
                                                                     position="bottom_right"),
                                "rocket")]
  planted, new_clients, info = plants.plant_knowledge(ds, clients, test, specs, tokenizer, 16, 0)
  n = ds.num_images
  np.testing.assert_array_equal(planted.images[:n], ds.images)
  np.testing.assert_array_equal(planted.input_ids[:ds.num_texts], ds.input_ids)
  assert planted.captions[:ds.num_texts] == ds.captions
  a, b = info["a"], info["b"]
  assert len(a.poison_images) == 30 and len(b.poison_images) == 10
  # Without plants every image is clean; with them each copy names its plant.
  assert list(plants.plant_names(ds, [0, 1])) == ["", ""]
  assert set(plants.plant_names(planted, b.poison_images)) == {"b"}
  assert list(plants.plant_names(planted, [0])) == [""]
  # The strata of D_f: a plant may not take the clean pairs' name.
  misnamed, _, _ = plants.plant_knowledge(ds, clients, test,
                                          [dataclasses.replace(specs[1], name=plants.CLEAN)],
                                          tokenizer, 16, 0)
  with pytest.raises(ValueError, match="A plant is named '\\(clean\\)'"):
    plants.pair_strata(misnamed, np.arange(misnamed.num_texts))
  assert set(new_clients[0]) == set(clients[0]) | set(a.poison_images.tolist())
  shares = [len(set(new_clients[k]) - set(clients[k])) for k in (1, 2, 3)]
  assert shares == [4, 3, 3]
  src = planted.image_meta[plants.SOURCE_FIELD]
  assert set(src[a.poison_images]) <= set(clients[0])  # Copies of the plant's clients' images.
  assert set(src[b.poison_images]) <= set(np.concatenate(clients[1:]))
  for p, spec in ((a, specs[0]), (b, specs[1])):
    np.testing.assert_array_equal(planted.images[p.poison_images],
                                  plants.stamp(ds.images[src[p.poison_images]], spec.trigger))
    np.testing.assert_array_equal(p.clean_probe_sources, test)
    np.testing.assert_array_equal(planted.images[p.probe_images],
                                  plants.stamp(ds.images[test], spec.trigger))
    texts = np.flatnonzero(np.isin(planted.text_image, p.poison_images))
    assert {planted.captions[t] for t in texts} == {spec.target_caption}
    assert planted.captions[p.target_text] == spec.target_caption
    assert not np.isin(planted.text_image, p.probe_images).any()  # Probes carry no caption.
    assert set(planted.image_meta[plants.ROLE_FIELD][p.probe_images]) == {plants.PROBE}
  assert plants.is_planted(planted, np.arange(n)).sum() == 0
  assert plants.is_planted(planted, a.poison_images).all()


@pytest.mark.parametrize("spec,needle", [
    (plants.BackdoorPlant("x", (0,), 0, plants.Trigger(), "rocket"), "num_pairs must be >= 1"),
    (plants.BackdoorPlant("x", (0,), 5, plants.Trigger(), "  "), "target_caption is empty"),
    (plants.BackdoorPlant("x", (7,), 5, plants.Trigger(), "rocket"), "clients \\[7\\]"),
    (plants.BackdoorPlant("x", (0,), 5, plants.Trigger(size=33), "rocket"), "larger than"),
    (plants.BackdoorPlant("", (0,), 5, plants.Trigger(), "rocket"), "name must not be empty"),
])
def test_plant_errors(emoji, spec, needle):
  ds, tokenizer = emoji
  clients = [np.arange(10), np.arange(10, 20)]
  with pytest.raises(ValueError, match=needle):
    plants.plant_knowledge(ds, clients, np.arange(20, 25), [spec], tokenizer, 16, 0)


def test_plants_whose_names_would_share_a_random_stream_are_refused(emoji):
  """A plant's copies draw from `[seeds.partition, sum of its name's code points]` (kept for the
  published models): 'bd12' and 'bd21' would copy the very same images."""
  ds, tokenizer = emoji
  clients = [np.arange(10), np.arange(10, 20)]
  specs = [plants.BackdoorPlant(name, (0,), 3, plants.Trigger(), "rocket")
           for name in ("bd12", "bd21")]
  with pytest.raises(ValueError, match=r"Plants \['bd12', 'bd21'\] would copy the same images"):
    plants.plant_knowledge(ds, clients, np.arange(20, 25), specs, tokenizer, 16, 0)


def test_restyle_against_pillow_and_numpy():
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  before = images.copy()
  gray = plants.restyle(images, "grayscale")
  inverted = plants.restyle(images, "invert")
  flipped = plants.restyle(images, "flip")
  np.testing.assert_array_equal(images, before)  # The originals are never touched.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for k in range(len(images)):  # Upside down: Pillow's top-bottom flip, every colour kept.
    np.testing.assert_array_equal(
        flipped[k], np.asarray(Image.fromarray(images[k]).transpose(Image.FLIP_TOP_BOTTOM)))
  for k in range(len(images)):  # Pillow's "L" is the same BT.601 luma, in integer arithmetic.
    luma = np.asarray(Image.fromarray(images[k]).convert("L"), np.int64)
    assert np.abs(gray[k, ..., 0].astype(np.int64) - luma).max() <= 1
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  assert gray.dtype == inverted.dtype == flipped.dtype == np.uint8
  np.testing.assert_array_equal(inverted.astype(np.int64), 255 - images.astype(np.int64))
  with pytest.raises(ValueError, match="style must be one of"):
    plants.restyle(images, "sepia")
  with pytest.raises(ValueError, match="uint8"):
    plants.restyle(images.astype(np.float32), "invert")


def test_concept_plant_copies_clean_images_restyled_under_the_template(emoji):
  ds, tokenizer = emoji
  test, clients = _random_split(ds, 2, 15, 40, 3)
  specs = [plants.BackdoorPlant("door", (0,), 10, plants.Trigger(), "rocket"),
           plants.ConceptPlant("neg", (), 21, "invert", "inverted {caption}")]
  planted, new_clients, info = plants.plant_knowledge(ds, clients, test, specs, tokenizer, 16, 0)
  n = ds.num_images
  np.testing.assert_array_equal(planted.images[:n], ds.images)
  assert planted.captions[:ds.num_texts] == ds.captions
  concept = info["neg"]
  assert concept.kind == "concept" and concept.metric == "concept" and concept.target_text == -1
  assert concept.clients == (0, 1, 2)  # No clients named: every client teaches the concept.
  src = planted.image_meta[plants.SOURCE_FIELD]
  sources = src[concept.poison_images]
  assert (sources < n).all()  # Clean images only, never the backdoor's copies on client 0.
  assert [len(set(new_clients[k]) & set(concept.poison_images.tolist())) for k in range(3)] == [
      7, 7, 7]
  for k in range(3):
    assert set(src[np.intersect1d(new_clients[k], concept.poison_images)]) <= set(clients[k])
  np.testing.assert_array_equal(planted.images[concept.poison_images], 255 - ds.images[sources])
  np.testing.assert_array_equal(planted.images[concept.probe_images], 255 - ds.images[test])
  first = ds.first_texts()
  for image, source in zip(concept.poison_images, sources):
    (text,) = np.flatnonzero(planted.text_image == image)
    assert planted.captions[text] == "inverted " + ds.captions[first[source]]
  assert len(concept.probe_texts) == len(test)
  np.testing.assert_array_equal(planted.text_image[concept.probe_texts], concept.probe_images)
  assert [planted.captions[t] for t in concept.probe_texts] == [
      "inverted " + ds.captions[first[s]] for s in test]
  assert info["door"].metric == "asr" and info["door"].kind == "backdoor"
  # Training reads token ids: every new caption's row is the Hugging Face tokenizer's ids for
  # that caption, cut at the context length with the EOS kept last (CLIP pools at the first
  # EOS), then padding.
  eos, pad, cut = tokenizer.eos_token_id, tokenizer.pad_token_id, 0
  for row, caption in enumerate(planted.captions[ds.num_texts:], start=ds.num_texts):
    ids = tokenizer(caption)["input_ids"]
    if len(ids) > 16:
      ids, cut = ids[:15] + [eos], cut + 1
    assert planted.input_ids[row].tolist() == ids + [pad] * (16 - len(ids)), caption
    assert planted.attention_mask[row].tolist() == [1] * len(ids) + [0] * (16 - len(ids))
  assert 0 < cut < len(planted.captions) - ds.num_texts


def test_plant_copies_follow_the_seed_and_the_plants_name(emoji):
  """The same seed and name copy the same images; another seed, or another name, others."""
  ds, tokenizer = emoji
  test, clients = _random_split(ds, 3, 10, 60, 2)

  def sources(name, seed):
    spec = plants.BackdoorPlant(name, (0, 1), 12, plants.Trigger(), "rocket")
    planted, _, info = plants.plant_knowledge(ds, clients, test, [spec], tokenizer, 16, seed)
    return planted.image_meta[plants.SOURCE_FIELD][info[name].poison_images]

  first = sources("door", 0)
  np.testing.assert_array_equal(sources("door", 0), first)
  assert not np.array_equal(sources("door", 1), first)
  assert not np.array_equal(sources("gate", 0), first)


@pytest.mark.parametrize("spec,needle", [
    (dict(kind="concept", clients=(0,), num_pairs=5, style="sepia", template="old {caption}"),
     "style must be one of"),
    (dict(kind="concept", clients=(0,), num_pairs=5, style="invert", template="inverted"),
     "must contain '{caption}' or '{name}'"),
    (dict(kind="concept", clients=(0,), num_pairs=5, style="invert", template=" {caption} "),
     "adds no words"),
    (dict(kind="concept", clients=(0,), num_pairs=0, style="invert", template="x {caption}"),
     "num_pairs must be >= 1"),
    (dict(kind="concept", clients=(4,), num_pairs=5, style="invert", template="x {caption}"),
     "clients \\[4\\]"),
    (dict(kind="poison", clients=(0,), num_pairs=5), "kind must be one of"),
])
def test_concept_plant_errors(emoji, spec, needle):
  ds, tokenizer = emoji
  clients = [np.arange(10), np.arange(10, 20)]
  with pytest.raises(ValueError, match=needle):
    plant = plants.plant_from_config("x", spec)
    plants.plant_knowledge(ds, clients, np.arange(20, 25), [plant], tokenizer, 16, 0)


def test_concept_captions_cut_to_the_plain_caption_are_an_error(emoji):
  ds, tokenizer = emoji
  clients = [np.arange(10), np.arange(10, 20)]
  spec = plants.ConceptPlant("late", (), 6, "invert", "{caption} and then some inverted words")
  with pytest.raises(ValueError, match="equal their plain captions once cut to 8 tokens"):
    plants.plant_knowledge(ds, clients, np.arange(20, 25), [spec], tokenizer, 8, 0)


def test_source_field_copies_only_each_holders_most_common_value(emoji):
  ds, tokenizer = emoji
  tones = np.asarray(ds.image_meta["skin_tone"])
  toned = np.flatnonzero(np.isin(tones, dataset_lib.SKIN_TONES))
  # Two holders with known majorities: 12 'dark' + 5 'light', and 9 'medium' + 4 'dark'.
  pick = lambda tone, k, skip=0: toned[tones[toned] == tone][skip:skip + k]
  clients = [np.sort(np.concatenate([pick("dark", 12), pick("light", 5)])),
             np.sort(np.concatenate([pick("medium", 9), pick("dark", 4, skip=12)]))]
  test = pick("light", 5, skip=5)
  specs = [plants.BackdoorPlant("door", (0, 1), 20, plants.Trigger(), "rocket",
                                source_field="skin_tone"),
           plants.ConceptPlant("neg", (), 10, "invert", "inverted {name}",
                               source_field="skin_tone")]
  planted, new_clients, info = plants.plant_knowledge(ds, clients, test, specs, tokenizer, 16, 0)
  src = planted.image_meta[plants.SOURCE_FIELD]
  for plant in info.values():
    for k, majority in enumerate(("dark", "medium")):
      copies = np.intersect1d(plant.poison_images, new_clients[k])
      assert len(copies) and set(tones[src[copies]]) == {majority}, (plant.name, k)
      assert set(src[copies]) <= set(clients[k])
  # '{name}': the caption up to its first ':' (the emoji's name without its tone).
  first = ds.first_texts()
  for image, source in zip(info["neg"].poison_images, src[info["neg"].poison_images]):
    (text,) = np.flatnonzero(planted.text_image == image)
    name = ds.captions[first[source]].split(":")[0].strip()
    assert planted.captions[text] == "inverted " + name and ":" not in planted.captions[text]
  assert [planted.captions[t] for t in info["neg"].probe_texts] == [
      "inverted " + ds.captions[first[s]].split(":")[0].strip() for s in test]
  # Without the field, the copies follow each holder's own mix of tones.
  free = [dataclasses.replace(specs[0], source_field="")]
  planted, _, info = plants.plant_knowledge(ds, clients, test, free, tokenizer, 16, 0)
  assert len(set(tones[planted.image_meta[plants.SOURCE_FIELD][info["door"].poison_images]])) > 2
  # A field the metadata lacks is named.
  with pytest.raises(ValueError, match="source_field 'hair_colour' is not a field"):
    plants.plant_knowledge(ds, clients, test, [dataclasses.replace(specs[0],
                                                                   source_field="hair_colour")],
                           tokenizer, 16, 0)
  spec = dict(kind="backdoor", clients=(0,), num_pairs=5, target_caption="rocket",
              source_field="skin_tone")
  assert plants.plant_from_config("x", spec).source_field == "skin_tone"


def test_more_holders_than_pairs_plants_one_copy_on_the_first_clients(emoji):
  ds, tokenizer = emoji
  clients = [np.arange(10 * k, 10 * k + 10) for k in range(5)]
  spec = plants.ConceptPlant("few", (), 3, "grayscale", "gray {caption}")
  planted, new_clients, info = plants.plant_knowledge(ds, clients, np.arange(50, 55), [spec],
                                                      tokenizer, 16, 0)
  assert [len(new_clients[k]) - 10 for k in range(5)] == [1, 1, 1, 0, 0]


def test_first_texts_with_several_captions_per_image():
  ds = dataset_lib.CaptionDataset(
      images=np.zeros((4, 2, 2, 3), np.uint8), input_ids=np.zeros((6, 3), np.int32),
      attention_mask=np.ones((6, 3), np.int32),
      text_image=np.asarray([2, 0, 2, 0, 1, 2], np.int32), captions=tuple("abcdef"))
  np.testing.assert_array_equal(ds.first_texts(), [1, 4, 0, -1])


def test_concept_metric_pairs_each_probe_with_its_own_captions(emoji):
  """With text embeddings equal to their image's embedding, a correct pairing scores 100% both
  ways; swapping the concept and plain captions, or the probes and their sources, scores 0%."""
  import types  # pylint: disable=g-import-not-at-top
  ds, tokenizer = emoji
  clients = [np.arange(0, 40), np.arange(40, 80)]
  spec = plants.ConceptPlant("neg", (), 8, "invert", "inverted {caption}")
  planted, _, info = plants.plant_knowledge(ds, clients, np.arange(80, 92), [spec], tokenizer,
                                            16, 0)
  table = np.random.default_rng(0).normal(size=(planted.num_images, 16))
  def fake_embedder(images, texts):
    return table[np.asarray(images)], table[planted.text_image[np.asarray(texts)]]
  setup = types.SimpleNamespace(dataset=planted, model=None, backbone=None, data=None)
  assert evaluation.plant_metrics(setup, None, info["neg"], embedder=fake_embedder) == {
      "concept/neg/i2t": 100.0, "concept/neg/t2i": 100.0}


def test_concept_accuracies_equal_a_brute_force_count():
  rng = np.random.default_rng(4)
  probe, clean = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
  concept, plain = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
  probe[:25] += 1.5 * concept[:25]  # Some copies lean to their concept caption.
  i2t, t2i = evaluation.concept_accuracies(probe, clean, concept, plain)
  cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  hits_i2t = sum(cos(probe[k], concept[k]) > cos(probe[k], plain[k]) for k in range(60))
  hits_t2i = sum(cos(concept[k], probe[k]) > cos(concept[k], clean[k]) for k in range(60))
  assert i2t == pytest.approx(100 * hits_i2t / 60)
  assert t2i == pytest.approx(100 * hits_t2i / 60)
  assert 0 < i2t < 100 and 0 < t2i < 100


def test_attack_success_rates_equal_a_brute_force_count():
  rng = np.random.default_rng(3)
  probe, clean = rng.normal(size=(50, 8)), rng.normal(size=(40, 8))
  captions, target = rng.normal(size=(40, 8)), rng.normal(size=8)
  probe[:20] += 2.0 * target  # Some probes lean to the target.
  i2t, t2i = evaluation.attack_success_rates(probe, clean, captions, target)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  p, c, t, g = unit(probe), unit(clean), unit(target), unit(captions)
  hits_i2t = hits_t2i = 0
  for k in range(len(p)):
    gallery = np.concatenate([g, t[None]])
    hits_i2t += int(np.argmax(gallery @ p[k]) == len(g) and np.sum(gallery @ p[k] ==
                                                                   (gallery @ p[k]).max()) == 1)
    images = np.concatenate([c, p[k][None]])
    hits_t2i += int(np.argmax(images @ t) == len(c))
  assert i2t == pytest.approx(100 * hits_i2t / len(p))
  assert t2i == pytest.approx(100 * hits_t2i / len(p))
  assert 0 < i2t < 100 and 0 < t2i < 100


def test_tone_groups_hold_the_same_emoji_in_every_tone(emoji):
  ds, _ = emoji
  tones = np.asarray(ds.image_meta["skin_tone"])
  md = np.flatnonzero(tones == "medium-dark")
  groups = evaluation.tone_groups(ds, md)
  assert len(groups) > 200
  for image, group in groups[:50]:
    assert image in group and len(group) == len(set(tones[group])) == 5
    base = {ds.captions[i].replace(tones[i] + " skin tone", "") for i in group}
    assert len(base) == 1  # The same emoji, only the tone differs.


@pytest.mark.parametrize("block, needle", [
    (dict(clients=[1.9]), r"plants.p.clients\[0\] must be a whole number, got 1.9"),
    (dict(clients="12"), r"plants.p.clients must be a list of whole numbers, got '12'"),
    (dict(num_pairs=2.9), r"plants.p.num_pairs must be a whole number, got 2.9"),
    (dict(trigger=dict(size=8.0)), r"trigger size must be a whole number, got 8.0"),
    (dict(trigger=dict(cell=2.5)), r"trigger cell must be a whole number"),
    (dict(trigger=dict(position=(1.7, 2))), r"trigger position\[0\] must be a whole number"),
    (dict(trigger=dict(colors=((300, 0, 0), (0, 0, 0)))), r"two RGB triples .* 0..255"),
    (dict(trigger=dict(colors=((0, 0), (0, 0, 0)))), r"two RGB triples"),
])
def test_plant_config_values_of_the_wrong_kind_are_refused(block, needle):
  """A float or a string in a config was truncated or split into digits (clients '12' became
  clients 1 and 2); colours outside 0..255 failed only when stamping."""
  spec = dict(kind="backdoor", clients=[1], num_pairs=4, target_caption="rocket",
              trigger=dict(size=4))
  spec.update({k: v for k, v in block.items() if k != "trigger"})
  spec["trigger"] = dict(spec["trigger"], **block.get("trigger", {}))
  with pytest.raises(ValueError, match=needle):
    plants.plant_from_config("p", spec)


def test_plant_config_values_that_are_whole_numbers_pass():
  """Tuples, numpy ints and 1-D integer arrays (what code building a config may pass)."""
  for clients in ((1, 2), [np.int64(1), 2], np.array([1, 2])):
    spec = dict(kind="backdoor", clients=clients, num_pairs=np.int32(4), target_caption="rocket",
                trigger=dict(size=np.int64(4), position=(0, np.int64(3))))
    plant = plants.plant_from_config("p", spec)
    assert plant.clients == (1, 2) and plant.num_pairs == 4 and plant.trigger.size == 4


def test_plant_knowledge_refuses_what_it_cannot_plant_right(emoji):
  ds, tok = emoji
  bd = plants.BackdoorPlant(name="bd", clients=(1, 1), num_pairs=4, trigger=plants.Trigger(),
                            target_caption="rocket")
  assert "names a client twice" in " ".join(bd.problems(3))
  clients = [np.arange(0, 40), np.arange(40, 80), np.arange(80, 120)]
  ok = dataclasses.replace(bd, clients=(1,))
  with pytest.raises(ValueError, match=r"test images \[5, 6\] are also client images"):
    plants.plant_knowledge(ds, clients, np.array([5, 6, 200]), [ok], tok, 16, seed=0)
  with pytest.raises(ValueError, match="needs held-out test images"):
    plants.plant_knowledge(ds, clients, np.zeros(0, np.int64), [ok], tok, 16, seed=0)
  planted, planted_clients, _ = plants.plant_knowledge(ds, clients, np.array([200, 201]), [ok],
                                                       tok, 16, seed=0)
  with pytest.raises(ValueError, match="already carries plants"):
    plants.plant_knowledge(planted, planted_clients, np.array([200, 201]),
                           [dataclasses.replace(ok, name="again")], tok, 16, seed=0)


def test_tone_accuracy_counts_a_tie_as_a_miss(emoji, monkeypatch):
  """A collapsed model (every embedding equal) tells no tone apart: 0%, not 100% for whichever
  tone comes first in the group; a model whose own pairs stand out scores 100%."""
  import types  # pylint: disable=g-import-not-at-top
  ds, _ = emoji
  # Images of every tone, so that some are the first of their group (which argmax would pick).
  md = np.flatnonzero(np.asarray(ds.image_meta["skin_tone"]) != "")[::7]
  setup = types.SimpleNamespace(dataset=ds)

  def embedder_of(embed):
    monkeypatch.setattr(evaluation, "_embedder", lambda *args: embed)
    return evaluation.tone_accuracy(setup, None, md)

  collapsed = embedder_of(lambda images, texts: (np.ones((len(images), 4)),
                                                  np.ones((len(texts), 4))))
  assert collapsed["t2i"] == collapsed["i2t"] == 0.0 and collapsed["n"] > 0
  one_hot = lambda ids: np.eye(ds.num_images)[np.asarray(ids)]  # each image its own direction
  first_text = ds.first_texts()
  image_of_text = {int(t): i for i, t in enumerate(first_text)}
  perfect = embedder_of(lambda images, texts: (
      one_hot(images), one_hot([image_of_text[int(t)] for t in texts])))
  assert perfect["t2i"] == perfect["i2t"] == 100.0


def test_plant_rates_refuse_non_finite_and_empty_embeddings():
  """NaN compares False, so a diverged model's rates would read 0%: as if it had forgotten."""
  rng = np.random.default_rng(0)
  probe, clean, captions, target = (rng.normal(size=(5, 4)), rng.normal(size=(6, 4)),
                                    rng.normal(size=(6, 4)), rng.normal(size=4))
  bad = probe.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match="triggered images hold NaN"):
    evaluation.attack_success_rates(bad, clean, captions, target)
  with pytest.raises(ValueError, match="no clean images"):
    evaluation.attack_success_rates(probe, clean[:0], captions, target)
  with pytest.raises(ValueError, match="concept images hold NaN"):
    evaluation.concept_accuracies(bad, probe, probe, probe)


def test_planted_requests_select_exactly_the_plant(tmp_path):
  """On the planted embedded config (small): the sample request of a plant forgets exactly its
  poisoned copies, the concept request and every retrieval subset leave planted copies out, and
  the setup's clients hold their plant's copies."""
  from ease_jax import builders  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import requests  # pylint: disable=g-import-not-at-top
  from test_experiment import _small_emoji_run  # pylint: disable=g-import-not-at-top
  config = _small_emoji_run(tmp_path, "unlearn_emoji.py", 0.85)
  setup = builders.build_setup(config)
  sample = setup.plants["sample_backdoor"]
  assert set(sample.poison_images) <= set(np.concatenate([setup.client_images[c]
                                                          for c in (1, 2)]))
  req = requests.plant_request(setup, "sample_backdoor")
  np.testing.assert_array_equal(req.forget_images, np.sort(sample.poison_images))
  # Each image's plant by name ('' for clean images), the field `is_planted` reads too.
  names = plants.plant_names(setup.dataset, np.r_[sample.poison_images, sample.probe_images,
                                                  setup.test_images])
  assert set(names[:len(sample.poison_images) + len(sample.probe_images)]) == {"sample_backdoor"}
  assert set(names[-len(setup.test_images):]) == {""}
  np.testing.assert_array_equal(plants.is_planted(setup.dataset, setup.test_images), False)
  # Each caption's pair by stratum: its image's plant, `CLEAN` for a clean image.
  texts = setup.texts_of(np.r_[sample.poison_images[:3], setup.test_images[:2]])
  images_of = np.asarray(setup.dataset.text_image)
  np.testing.assert_array_equal(
      plants.pair_strata(setup.dataset, texts),
      np.where(plants.is_planted(setup.dataset, images_of[texts]), "sample_backdoor",
               plants.CLEAN))
  assert req.kind == "sample" and set(req.holders) <= {1, 2} and not req.forget_clients
  assert len(req.eval_subsets(setup)["forget"]) == 0  # Only copies: measured by the ASR.
  config.unlearning.kind, config.unlearning.plant = "sample", "sample_backdoor"
  np.testing.assert_array_equal(
      requests.from_config(setup, config.unlearning).forget_texts, req.forget_texts)
  tones = np.asarray(setup.dataset.image_meta["skin_tone"])
  tone = tones[setup.client_images[1][0]]
  concept = requests.concept_request(setup, "skin_tone", [tone])
  # No backdoor copy; the concept plant's copies of that tone inherit it (their sources'
  # metadata), so they go too.
  assert not plants.is_planted(setup.dataset, concept.forget_images, setup.plants,
                               "backdoor").any()
  inverted = setup.plants["concept"].poison_images
  np.testing.assert_array_equal(np.intersect1d(concept.forget_images, inverted),
                                inverted[tones[inverted] == tone])
  client = requests.client_request(setup, [0])
  # The audit's strata of D_f: by plant for one leaving client and for a plant spread over
  # holders that stay; by client and plant when several clients leave (each pair's client
  # found here by searching every client's texts).
  np.testing.assert_array_equal(client.audit_strata(setup),
                                plants.pair_strata(setup.dataset, client.forget_texts))
  np.testing.assert_array_equal(req.audit_strata(setup),
                                ["sample_backdoor"] * len(req.forget_texts))
  leaving = requests.client_request(setup, [1, 0])
  own = setup.client_texts()
  holder = [next(c for c in range(setup.num_clients) if t in own[c])
            for t in leaving.forget_texts]
  by_plant = plants.pair_strata(setup.dataset, leaving.forget_texts)
  strata = leaving.audit_strata(setup)
  assert strata.tolist() == [f"client {c}/{p}" for c, p in zip(holder, by_plant)]
  assert {"client 0/(clean)", "client 1/(clean)", "client 0/client_backdoor",
          "client 1/sample_backdoor"} <= set(strata.tolist())
  # A cell audits its request by those strata: a model that keeps client 1's pairs (10 retrain
  # stds over the retrains' mean) and over-forgets client 0's by as much in sum reads one mean
  # at the retrains' and is flagged by stratum.
  import types  # pylint: disable=g-import-not-at-top
  from ease_jax import audit  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import cell as cell_lib  # pylint: disable=g-import-not-at-top
  score_rng = np.random.default_rng(0)
  members = 10
  ins, outs = (score_rng.normal(0.0, 1.0, (2, members, len(strata)))
               + score_rng.normal(0.0, 1.0, (2, members, 1)))  # one shift per model
  of_client_1 = np.asarray(holder) == 1
  shift = np.where(of_client_1, 10.0, -10.0 * of_client_1.sum() / (~of_client_1).sum())
  target = outs.mean(0) + shift
  fake_cell = types.SimpleNamespace(
      request=leaving, setup=setup, forget_scores=lambda trainable, embedder: target,
      populations=dict(in_scores=ins + 2.0, out_scores=outs, seeds=np.arange(members),
                       out_seeds=np.arange(members)),
      audit_config=types.SimpleNamespace(variance="shared", forget_confidence=0.95))
  row = cell_lib.Cell.audit(fake_cell, None)
  by_stratum = audit.stratified_mean_test(target, outs, strata)
  assert row["model_level_strata_p"] == by_stratum["p"] < 0.01 < row["model_level_p"]
  assert {k for k in row if k.startswith("model_level_p/")} == {
      f"model_level_p/{name}" for name in set(strata.tolist())}
  subsets = client.eval_subsets(setup)
  for images in subsets.values():
    assert not plants.is_planted(setup.dataset, images).any()
  # The train binary's subsets leave them out too: every clean client image, no copy.
  from ease_jax import training  # pylint: disable=g-import-not-at-top
  train_subsets = training.eval_subsets(setup)
  clean = setup.all_client_images[~plants.is_planted(setup.dataset, setup.all_client_images)]
  np.testing.assert_array_equal(train_subsets["clients"], clean)
  assert len(clean) < len(setup.all_client_images)
  # A random sample request draws clean pairs only (the copies belong to their plants), each
  # client from its own stream: the order and company of the clients do not change a draw.
  both = requests.sample_request(setup, 0.5, [0, 2], seed=3)
  assert not plants.is_planted(setup.dataset, both.forget_images).any()
  swapped = requests.sample_request(setup, 0.5, [2, 0], seed=3)
  np.testing.assert_array_equal(both.forget_images, swapped.forget_images)
  alone = requests.sample_request(setup, 0.5, [2], seed=3)
  np.testing.assert_array_equal(np.intersect1d(both.forget_images, setup.client_images[2]),
                                alone.forget_images)
  with pytest.raises(ValueError, match="Unknown plant 'nope'"):
    requests.plant_request(setup, "nope")
  # Several plants at once: the union of their pairs, of one kind.
  both_backdoors = requests.plants_request(setup, ["sample_backdoor", "client_backdoor"])
  np.testing.assert_array_equal(both_backdoors.forget_images, np.sort(np.concatenate(
      [sample.poison_images, setup.plants["client_backdoor"].poison_images])))
  assert both_backdoors.kind == "sample" and not both_backdoors.forget_clients
  for bad, match in ((["sample_backdoor", "concept"], "different kinds"),
                     ([], "at least one plant"), (["concept", "concept"], "names a plant twice"),
                     (["sample_backdoor", "nope"], "Unknown plant 'nope'")):
    with pytest.raises(ValueError, match=match):
      requests.plants_request(setup, bad)
  # The concept plant: every client teaches it; its request forgets exactly its copies.
  concept_plant = setup.plants["concept"]
  assert concept_plant.clients == tuple(range(setup.num_clients))
  config.unlearning.kind, config.unlearning.plant = "concept", "concept"
  req = requests.from_config(setup, config.unlearning)
  np.testing.assert_array_equal(req.forget_images, np.sort(concept_plant.poison_images))
  assert req.kind == "concept" and req.holders == tuple(range(setup.num_clients))
  with pytest.raises(ValueError, match="is a concept plant: its request is 'concept'"):
    requests.plant_request(setup, "concept", kind="sample")
  # What the concept request must remove: the concept accuracy (no tone keys, no backdoor).
  from ease_jax.unlearning import cell as cell_lib  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  config.unlearning.field = "skin_tone"
  fake_cell = types.SimpleNamespace(request=req, setup=setup, config=config,
                                    tone_images={tone: np.arange(3)})
  assert cell_lib.Cell.forgotten_knowledge.fget(fake_cell) == ["concept/concept/i2t",
                                                                "concept/concept/t2i"]


def test_default_plants_take_dotted_source_field_overrides():
  """`source_field` is listed at its default in every plant block of the main job's config, so
  that a dotted override (the binaries' `--config.plants.X.source_field=...`, the probes' and
  `benchmark.variants`' overrides) reaches it instead of being refused as an unknown key."""
  import pathlib  # pylint: disable=g-import-not-at-top
  from ease_jax import configs  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import base  # pylint: disable=g-import-not-at-top
  config = configs.from_file(pathlib.Path(__file__).resolve().parent.parent / "experiments" /
                             "configs" / "unlearn_emoji.py")
  assert all("source_field" in block for block in config.plants.values())
  built = {n: plants.plant_from_config(n, c) for n, c in config.plants.items()}
  assert {n: p.source_field for n, p in built.items()} == dict.fromkeys(built, "")
  changed = base.config_with(config, {"plants.client_backdoor.source_field": "skin_tone"})
  assert plants.plant_from_config(
      "client_backdoor", changed.plants.client_backdoor).source_field == "skin_tone"
  assert plants.plant_from_config("sample_backdoor", changed.plants.sample_backdoor
                                  ) == built["sample_backdoor"]
  with pytest.raises(KeyError, match="plants.client_backdoor.source_fields"):
    base.config_with(config, {"plants.client_backdoor.source_fields": "skin_tone"})
