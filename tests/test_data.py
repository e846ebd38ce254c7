"""Tests for the embedded emoji dataset, tokenizer, normalisation and Karpathy loader."""
import gzip
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from ease_jax.data import dataset as ds_lib
from ease_jax.data import karpathy
from ease_jax.data import tokenizer as tok_lib

# Unicode's emoji-test.txt, Version 15.0, the file the embedded assets were built from
# (tests/fixtures/README.md).
EMOJI_TEST = pathlib.Path(__file__).parent / "fixtures" / "emoji-test-15.0.txt.gz"


@pytest.fixture(scope="module")
def fast_tok():
  return tok_lib.load_tokenizer(ds_lib.embedded_tokenizer_dir())


@pytest.fixture(scope="module")
def slow_tok():
  return tok_lib.load_tokenizer(ds_lib.embedded_tokenizer_dir(), fast=False)


@pytest.fixture(scope="module")
def emoji(fast_tok):
  return ds_lib.load_emoji(tokenizer=fast_tok)


def test_emoji_shapes_and_dtypes(emoji):
  assert emoji.num_images >= 3000
  assert emoji.images.shape == (emoji.num_images, 32, 32, 3)
  assert emoji.images.dtype == np.uint8
  assert emoji.input_ids.shape == (emoji.num_texts, ds_lib.EMOJI_CONTEXT_LENGTH)
  assert emoji.input_ids.dtype == np.int32 and emoji.attention_mask.dtype == np.int32
  np.testing.assert_array_equal(emoji.text_image, np.arange(emoji.num_images))
  assert len(emoji.captions) == emoji.num_texts == emoji.num_images
  for key in ("group", "subgroup", "codepoints"):
    assert emoji.image_meta[key].shape == (emoji.num_images,)
    assert emoji.image_meta[key].dtype.kind == "U"
  assert len(np.unique(emoji.image_meta["group"])) >= 9


@pytest.mark.parametrize("caption,tone", [
    ("waving hand", "none"),
    ("waving hand: medium skin tone", "medium"),
    ("thumbs up: medium-dark skin tone", "medium-dark"),
    ("ok hand: light skin tone", "light"),
    ("kiss: woman, man, medium-light skin tone", "medium-light"),
    ("people holding hands: light skin tone, dark skin tone", "mixed"),
])
def test_skin_tone_of(caption, tone):
  assert ds_lib.skin_tone_of(caption) == tone


def test_emoji_skin_tone_field(emoji):
  tones = emoji.image_meta["skin_tone"]
  counts = {t: int((tones == t).sum()) for t in np.unique(tones)}
  # emoji-test.txt (Unicode 15.0): 1,870 emoji without a modifier and 1,785 toned variants: 305
  # per tone (two-person emoji with one tone twice included) and 260 with two different tones.
  assert counts["none"] == 1870
  assert sum(counts.values()) - counts["none"] == 1785
  assert set(counts) == set(ds_lib.SKIN_TONES) | {"none", "mixed"}
  single = [counts[t] for t in ds_lib.SKIN_TONES]
  assert max(single) - min(single) == 0
  for i in np.flatnonzero(tones == "none")[:50]:
    assert "skin tone" not in emoji.captions[i]


def test_emoji_images_not_blank(emoji):
  flat = emoji.images.reshape(emoji.num_images, -1)
  assert (flat.min(axis=1) < 200).all(), "every emoji should have some ink"
  assert (flat.max(axis=1) == 255).mean() > 0.9, "backgrounds are white"
  assert flat.std(axis=1).min() > 5


@pytest.mark.parametrize("codepoints,caption,group", [
    ("1F600", "grinning face", "Smileys & Emotion"),
    ("1F603", "grinning face with big eyes", "Smileys & Emotion"),
    ("1F44B 1F3FD", "waving hand: medium skin tone", "People & Body"),
    ("1F436", "dog face", "Animals & Nature"),
])
def test_emoji_known_captions(emoji, codepoints, caption, group):
  where = np.flatnonzero(emoji.image_meta["codepoints"] == codepoints)
  assert where.size == 1
  i = int(where[0])
  assert emoji.captions[i] == caption
  assert emoji.image_meta["group"][i] == group


def test_emoji_captions_match_emoji_test_file(emoji):
  """Every image is one fully-qualified emoji of Unicode's file, in the file's order, captioned
  with its CLDR name and labelled with its group (parsed here, not by the build script)."""
  names, groups, group = {}, {}, None
  for line in gzip.decompress(EMOJI_TEST.read_bytes()).decode("utf-8").splitlines():
    if line.startswith("# group:"):
      group = line.split(":", 1)[1].strip()
    if "; fully-qualified" in line:
      cps, comment = line.split(";")[0].strip(), line.split("#", 1)[1]
      key = " ".join(cps.split())
      names[key], groups[key] = comment.strip().split(" ", 2)[2], group
  assert [str(c) for c in emoji.image_meta["codepoints"]] == list(names)
  assert list(emoji.captions) == list(names.values())
  assert [str(g) for g in emoji.image_meta["group"]] == list(groups.values())


def test_load_emoji_missing_and_corrupt(tmp_path):
  with pytest.raises(FileNotFoundError, match="emoji32.npz"):
    ds_lib.load_emoji(assets_dir=tmp_path)
  (tmp_path / "emoji32.npz").write_bytes(b"not a zip at all")
  with pytest.raises(ValueError, match="emoji32.npz"):
    ds_lib.load_emoji(assets_dir=tmp_path)
  np.savez_compressed(tmp_path / "emoji32.npz", images=np.zeros((1, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="captions"):
    ds_lib.load_emoji(assets_dir=tmp_path)
  # Images of another dtype are refused, not cast (floats in [0, 1] would all become 0 or 1).
  good = {f: np.asarray(["x"]) for f in ds_lib._EMOJI_FIELDS[1:]}  # pylint: disable=protected-access
  for images in (np.full((1, 32, 32, 3), 0.5, np.float32), np.zeros((1, 32, 32), np.uint8)):
    np.savez_compressed(tmp_path / "emoji32.npz", images=images, **good)
    with pytest.raises(ValueError, match=r"'images' must be uint8 \[n, size, size, 3\]"):
      ds_lib.load_emoji(assets_dir=tmp_path)


def test_tokenizer_slow_equals_fast_and_round_trip(emoji, fast_tok, slow_tok):
  caps = list(emoji.captions)
  fast_ids = fast_tok(caps)["input_ids"]
  slow_ids = slow_tok(caps[::7])["input_ids"]  # The slow tokenizer is pure Python: sample it.
  assert slow_ids == fast_ids[::7]
  for cap, ids in zip(caps[::11], fast_ids[::11]):
    decoded = fast_tok.decode(ids, skip_special_tokens=True)
    assert "".join(decoded.split()) == "".join(cap.lower().split())
  assert max(len(i) for i in fast_ids) <= ds_lib.EMOJI_CONTEXT_LENGTH
  assert len(fast_tok) == 1024


def test_tokenize_padding_and_eos(fast_tok):
  eos = tok_lib.eos_token_id(fast_tok)
  caps = ["grinning face", "kiss: woman, man, medium-light skin tone, medium-dark skin tone"]
  ids, mask = tok_lib.tokenize(fast_tok, caps, max_length=8)
  assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == np.int32
  assert ids[0, 0] == fast_tok.bos_token_id
  n0 = int(mask[0].sum())
  assert ids[0, n0 - 1] == eos and (mask[0, n0:] == 0).all()
  # Truncated: the last kept token is EOS and it is the first EOS in the row.
  assert mask[1].all() and ids[1, -1] == eos
  assert np.flatnonzero(ids[1] == eos)[0] == 7
  full, _ = tok_lib.tokenize(fast_tok, caps[1:], max_length=32)
  np.testing.assert_array_equal(ids[1, :7], full[0, :7])
  with pytest.raises(ValueError, match="max_length"):
    tok_lib.tokenize(fast_tok, caps, max_length=1)


def test_train_clip_bpe_small(tmp_path):
  caps = ["a red apple", "a green apple", "café piñata", "two dogs", "red dogs"] * 3
  tok_lib.train_clip_bpe(caps, tmp_path, vocab_size=530)
  assert (tmp_path / "merges.txt").read_text().startswith("#version")
  fast = tok_lib.load_tokenizer(tmp_path)
  slow = tok_lib.load_tokenizer(tmp_path, fast=False)
  assert fast(caps)["input_ids"] == slow(caps)["input_ids"]
  assert len(fast) <= 530
  with pytest.raises(ValueError, match="vocab_size"):
    tok_lib.train_clip_bpe(caps, tmp_path, vocab_size=100)
  with pytest.raises(FileNotFoundError):
    tok_lib.load_tokenizer(tmp_path / "nope")
  # A folder with only `tokenizer.json` (as some checkpoints ship) loads the same fast tokenizer;
  # the slow one needs vocab.json and merges.txt, and says so.
  fast.save_pretrained(tmp_path / "only_json")
  for name in ("vocab.json", "merges.txt"):
    (tmp_path / "only_json" / name).unlink(missing_ok=True)
  assert tok_lib.load_tokenizer(tmp_path / "only_json")(caps)["input_ids"] == fast(caps)[
      "input_ids"]
  with pytest.raises(FileNotFoundError, match="vocab.json"):
    tok_lib.load_tokenizer(tmp_path / "only_json", fast=False)


def _tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
  return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_build_emoji_never_leaves_the_assets_half_built(tmp_path, monkeypatch):
  """The build's default output is the package's own assets: a missing licence (checked before
  rendering) or a failure after it (here the tokenizer) leaves the files there as they were; a
  complete build of another size is what `load_emoji(image_size=...)` reads."""
  from PIL import ImageFont
  from ease_jax.data import build_emoji as be

  names = ["grinning face", "beaming face", "waving hand", "thumbs up", "red heart"]
  lines = ["# group: Smileys", "# subgroup: face"] + [
      f"{0x1F600 + i:X} ; fully-qualified # {chr(0x1F600 + i)} E1.0 {n}"
      for i, n in enumerate(names)]
  emoji_test = tmp_path / "emoji-test.txt"
  emoji_test.write_text("\n".join(lines) + "\n", encoding="utf-8")
  font = tmp_path / "font.ttf"
  font.write_bytes(b"a font")
  licence = tmp_path / "copyright"
  licence.write_text("licence text")
  monkeypatch.setattr(ImageFont, "truetype", lambda *a, **k: None)
  monkeypatch.setattr(be, "render_emoji",
                      lambda f, e, size: np.full((size, size, 3), ord(e) % 251, np.uint8))
  monkeypatch.setattr(be, "UNICODE_LICENSE", str(licence))
  out = tmp_path / "assets"
  (out / "emoji_tokenizer").mkdir(parents=True)
  (out / "emoji32.npz").write_bytes(b"the shipped data")
  (out / "emoji_tokenizer" / "vocab.json").write_text("{}")
  shipped = _tree_bytes(out)
  build = lambda: be.build(out, str(emoji_test), str(font), size=16, vocab_size=530)

  monkeypatch.setattr(be, "FONT_LICENSE", str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="licence file for the Noto Color Emoji font"):
    build()
  assert _tree_bytes(out) == shipped
  monkeypatch.setattr(be, "FONT_LICENSE", str(licence))

  def broken_bpe(*args, **kwargs):
    raise RuntimeError("tokenizer training failed")
  with monkeypatch.context() as m:
    m.setattr(tok_lib, "train_clip_bpe", broken_bpe)
    with pytest.raises(RuntimeError, match="tokenizer training failed"):
      build()
  assert _tree_bytes(out) == shipped and not list(out.glob(".build-*"))

  stats = build()
  assert stats["rendered"] == 5 and stats["skipped"] == 0
  assert (out / "emoji32.npz").read_bytes() == b"the shipped data"  # another size: kept
  ds = ds_lib.load_emoji(assets_dir=out, image_size=16)
  assert ds.images.shape == (5, 16, 16, 3) and list(ds.captions) == names
  assert not list(out.glob(".build-*"))
  with pytest.raises(FileNotFoundError, match=r"emoji8\.npz .*--size=8"):
    ds_lib.load_emoji(assets_dir=out, image_size=8)


def test_normalize_images_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)
  ref = (x.astype(np.float64) / 255.0 - np.array(ds_lib.CLIP_MEAN)) / np.array(ds_lib.CLIP_STD)
  out = jax.jit(ds_lib.normalize_images)(x)
  assert out.dtype == np.float32 and out.shape == x.shape
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_subset_images(emoji):
  sub = emoji.subset_images([5, 2, 9])
  assert sub.num_images == 3 and sub.num_texts == 3
  assert sub.captions == (emoji.captions[2], emoji.captions[5], emoji.captions[9])
  np.testing.assert_array_equal(sub.images[sub.text_image[0]], emoji.images[2])
  np.testing.assert_array_equal(sub.image_meta["codepoints"],
                                emoji.image_meta["codepoints"][[5, 2, 9]])
  with pytest.raises(ValueError, match="indices"):
    emoji.subset_images([emoji.num_images])
  mask = np.zeros(emoji.num_images, bool)
  mask[[2, 5]] = True
  with pytest.raises(ValueError, match="boolean mask"):  # would be read as images 0 and 1
    emoji.subset_images(mask)


def test_caption_dataset_validation():
  good = dict(images=np.zeros((2, 4, 4, 3), np.uint8), input_ids=np.zeros((3, 5), np.int32),
              attention_mask=np.ones((3, 5), np.int32), text_image=np.array([0, 0, 1], np.int32),
              captions=("a", "b", "c"), image_meta={}, name="t")
  ds_lib.CaptionDataset(**good)
  for field, bad, msg in [
      ("images", np.zeros((2, 4, 4, 3), np.float32), "uint8"),
      ("images", np.zeros((2, 4, 4), np.uint8), "images"),
      ("input_ids", np.zeros((3, 5), np.int64), "input_ids"),
      ("attention_mask", np.ones((3, 4), np.int32), "attention_mask"),
      ("text_image", np.array([0, 0, 2], np.int32), "text_image"),
      ("captions", ("a", "b"), "captions"),
      ("image_meta", {"group": np.array(["x"])}, "group"),
  ]:
    with pytest.raises(ValueError, match=msg):
      ds_lib.CaptionDataset(**dict(good, **{field: bad}))


# ----------------------------------------------------------------------------- Karpathy format.

def _write_fixture(root: pathlib.Path) -> pathlib.Path:
  """Four images (2 train, 1 val, 1 test) with 2-3 sentences each, COCO-style filepaths."""
  entries = []
  specs = [("a.png", "train", (40, 30), (255, 0, 0), ["A red box.", "Something red."]),
           ("b.jpg", "train", (30, 50), (0, 255, 0), ["A green box.", "Green.", "A leaf?"]),
           ("c.png", "val", (20, 20), (0, 0, 255), ["A blue box.", "Blue!"]),
           ("d.png", "test", (64, 48), (255, 255, 0), ["Yellow.", "A yellow box."])]
  for i, (name, split, size, color, sents) in enumerate(specs):
    (root / "imgs").mkdir(exist_ok=True)
    Image.new("RGB", size, color).save(root / "imgs" / name)
    entries.append({"filename": name, "filepath": "imgs", "split": split, "imgid": i,
                    "sentences": [{"raw": s, "tokens": s.lower().split()} for s in sents]})
  path = root / "dataset_tiny.json"
  path.write_text(json.dumps({"images": entries, "dataset": "tiny"}))
  return path


def test_karpathy_loads_splits(tmp_path, fast_tok):
  path = _write_fixture(tmp_path)
  train = karpathy.load_karpathy(path, tmp_path, "train", fast_tok, max_length=16, image_size=24)
  assert train.name == "tiny"
  assert train.num_images == 2 and train.num_texts == 5
  assert train.images.shape == (2, 24, 24, 3) and train.images.dtype == np.uint8
  np.testing.assert_array_equal(train.text_image, [0, 0, 1, 1, 1])
  assert train.captions == ("A red box.", "Something red.", "A green box.", "Green.", "A leaf?")
  assert train.images[0, 12, 12].tolist() == [255, 0, 0]
  assert abs(int(train.images[1, 12, 12, 1]) - 255) <= 2  # JPEG.
  assert list(train.image_meta["filename"]) == ["a.png", "b.jpg"]
  assert set(train.image_meta["split"]) == {"train"}
  both = karpathy.load_karpathy(path, tmp_path, ["val", "test"], fast_tok, 16, image_size=8)
  assert both.num_images == 2 and both.num_texts == 4
  assert list(both.image_meta["split"]) == ["val", "test"]
  one = karpathy.load_karpathy(path, tmp_path, "train", fast_tok, 16, 8, max_images=1)
  assert one.num_images == 1 and one.num_texts == 2


def test_karpathy_split_keeps_the_files_test_images_as_the_test_split(tmp_path, fast_tok):
  """`data.split='karpathy'`: the published test split stays the test split (a random split
  would mix it into the clients' training data); public is drawn from the other images."""
  import ml_collections
  from ease_jax import builders

  path = _write_fixture(tmp_path)
  ds = karpathy.load_karpathy(path, tmp_path, ("train", "val", "test"), fast_tok, 16, 8)
  cfg = ml_collections.ConfigDict(dict(split="karpathy", public_fraction=0.0, label="",
                                       splits=("train", "val", "test")))
  s = builders.split_dataset(ds, cfg, seed=0)
  split = np.asarray(ds.image_meta["split"])
  np.testing.assert_array_equal(s.test, np.flatnonzero(split == "test"))
  np.testing.assert_array_equal(s.clients, np.flatnonzero(split != "test"))
  assert s.public.size == 0
  cfg.public_fraction = 0.5
  s = builders.split_dataset(ds, cfg, seed=0)
  np.testing.assert_array_equal(s.test, np.flatnonzero(split == "test"))
  assert s.public.size == 2 and not set(s.public) & set(s.clients) and s.clients.size == 1
  no_test = karpathy.load_karpathy(path, tmp_path, ("train", "val"), fast_tok, 16, 8)
  with pytest.raises(ValueError, match="needs 'test' images and others"):
    builders.split_dataset(no_test, cfg, seed=0)


def test_karpathy_uses_image_processor_geometry(tmp_path, fast_tok):
  from transformers import CLIPImageProcessor

  path = _write_fixture(tmp_path)
  proc = CLIPImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 12})
  ds = karpathy.load_karpathy(path, tmp_path, "test", fast_tok, 16, image_size=99,
                              image_processor=proc)
  assert ds.images.shape == (1, 16, 12, 3)


@pytest.mark.parametrize("size,shortest_edge,crop", [
    ((640, 480), 36, (32, 32)),    # 4:3, COCO's shape: the long side 48.0 -> truncated
    ((427, 640), 36, (32, 32)),    # portrait, 53.96 -> 53 (rounding gave 54)
    ((500, 333), 36, (32, 28)),
    ((30, 20), 19, (24, 24)),      # the crop larger than the image: padded as transformers pads
])
def test_preprocess_image_equals_clip_image_processor(size, shortest_edge, crop):
  from transformers import CLIPImageProcessor

  rng = np.random.default_rng(sum(size))
  image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
  proc = CLIPImageProcessor(size={"shortest_edge": shortest_edge},
                            crop_size={"height": crop[0], "width": crop[1]},
                            do_rescale=False, do_normalize=False)
  want = proc(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  got = karpathy.preprocess_image(image, shortest_edge, *crop)
  assert got.shape == want.shape
  np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_image_processor_settings_we_do_not_implement_are_refused(tmp_path, fast_tok):
  from transformers import CLIPImageProcessor

  path = _write_fixture(tmp_path)
  for proc, needle in ((CLIPImageProcessor(size={"height": 8, "width": 8}), "size="),
                       (CLIPImageProcessor(do_center_crop=False), "do_center_crop"),
                       (CLIPImageProcessor(resample=2), r"resample=2 \(only bicubic")):
    with pytest.raises(ValueError, match=needle):
      karpathy.load_karpathy(path, tmp_path, "test", fast_tok, 16, image_size=8,
                             image_processor=proc)


def test_karpathy_16_bit_grey_and_oversized_images(tmp_path, fast_tok, monkeypatch):
  """A 16-bit grey PNG keeps its grey level (Pillow's RGB conversion would clip it to white);
  an image over Pillow's decompression-bomb limit is an error naming the file."""
  path = _write_fixture(tmp_path)
  Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(tmp_path / "imgs" / "d.png")
  assert Image.open(tmp_path / "imgs" / "d.png").mode.startswith("I")
  test = karpathy.load_karpathy(path, tmp_path, "test", fast_tok, 16, image_size=8)
  assert set(test.images.ravel().tolist()) == {round(40000 / 257)}
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # d.png has 400: over twice the limit
  with pytest.raises(ValueError, match=r"cannot read image .*d\.png"):
    karpathy.load_karpathy(path, tmp_path, "test", fast_tok, 16, image_size=8)


def test_karpathy_bad_inputs(tmp_path, fast_tok):
  load = lambda p, split="train": karpathy.load_karpathy(p, tmp_path, split, fast_tok, 16, 8)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    load(tmp_path / "missing.json")
  path = _write_fixture(tmp_path)
  with pytest.raises(ValueError, match="valid splits"):
    load(path, "training")
  data = json.loads(path.read_text())

  def write(mutate):
    d = json.loads(json.dumps(data))
    mutate(d)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    return bad

  with pytest.raises(ValueError, match="'images'"):
    load(write(lambda d: d.pop("images")))
  with pytest.raises(ValueError, match=r"images\[1\].*'filename'"):
    load(write(lambda d: d["images"][1].pop("filename")))
  with pytest.raises(ValueError, match=r"images\[2\].*'sentences'"):
    load(write(lambda d: d["images"][2].pop("sentences")))
  with pytest.raises(ValueError, match=r"images\[0\].*sentences\[1\].*'raw'"):
    load(write(lambda d: d["images"][0]["sentences"][1].pop("raw")))
  with pytest.raises(ValueError, match=r"images\[1\] \(b.jpg\) has no sentences"):
    load(write(lambda d: d["images"][1].update(sentences=[])))
  with pytest.raises(ValueError, match=r"images\[0\] \(a\.png\) sentences\[0\] is empty"):
    load(write(lambda d: d["images"][0]["sentences"][0].update(raw="  ")))
  with pytest.raises(ValueError, match=r"images\[0\].*'filepath' that is not a string: None"):
    load(write(lambda d: d["images"][0].update(filepath=None)))
  with pytest.raises(ValueError, match=r"no images in split\(s\) \['restval'\]; the file holds "
                     r"\['test', 'train', 'val'\]"):
    load(path, "restval")
  # The same image listed twice (here in train and test): trained on and tested on.
  with pytest.raises(ValueError, match=r"images\[0\] and images\[3\] are the same image "
                     r"'imgs/a\.png' \(splits 'train' and 'test'\)"):
    load(write(lambda d: d["images"][3].update(filename="a.png")))
  with pytest.raises(ValueError, match="absolute path"):
    load(write(lambda d: d["images"][0].update(filepath="/etc")))
  with pytest.raises(ValueError, match=r"images\[2\] names a path out of the image root"):
    load(write(lambda d: d["images"][2].update(filepath="imgs/../../elsewhere")))
  with pytest.raises(ValueError, match="max_images must be >= 1"):
    karpathy.load_karpathy(path, tmp_path, "train", fast_tok, 16, 8, max_images=0)
  (tmp_path / "imgs" / "b.jpg").unlink()
  with pytest.raises(FileNotFoundError, match="b.jpg"):
    load(path)
  (tmp_path / "imgs" / "b.jpg").write_bytes(b"\x89PNG garbage")
  with pytest.raises(ValueError, match="b.jpg"):
    load(path)
