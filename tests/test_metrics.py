"""Tests for ease_jax.metrics against brute-force numpy references."""
import numpy as np
import pytest

from ease_jax import metrics
from ease_jax.data import dataset as dataset_lib


def _ranking(scores, relevant, equivalent):
  """Candidates in ranked order for one query, the module's convention built as a list: the
  relevant items and every candidate of other content, by score, other content first in ties."""
  keep = [c for c in range(len(scores)) if c in relevant or c not in equivalent]
  return sorted(keep, key=lambda c: (-scores[c], c in relevant))


def _np_reference(img, txt, text_image, ks=(1, 5, 10), text_content=None, image_content=None):
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  s = img.astype(np.float64) @ txt.T.astype(np.float64)
  n_img, n_txt = s.shape
  tc = np.arange(n_txt) if text_content is None else np.asarray(text_content)
  ic = np.arange(n_img) if image_content is None else np.asarray(image_content)
  i2t_hits = {k: [] for k in ks}
  i2t_rprec = []
  for i in range(n_img):
    rel = {j for j in range(n_txt) if text_image[j] == i}
    if not rel:
      continue
    same = {j for j in range(n_txt) if tc[j] in {tc[r] for r in rel}}
    order = _ranking(s[i], rel, same)
    first = min(order.index(j) for j in rel)
    for k in ks:
      i2t_hits[k].append(first < k)
    r = len(rel)
    i2t_rprec.append(len(set(order[:r]) & rel) / r)
  t2i_hits = {k: [] for k in ks}
  for j in range(n_txt):
    # Relevant: every image carrying a caption of this text, and every pixel twin of one.
    captioned = {int(text_image[o]) for o in range(n_txt) if tc[o] == tc[j]}
    rel = {i for i in range(n_img) if ic[i] in {ic[c] for c in captioned}}
    order = _ranking(s[:, j], rel, rel)
    pos = min(order.index(i) for i in rel)
    for k in ks:
      t2i_hits[k].append(pos < k)
  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = 100 * np.mean(i2t_hits[k])
    out[f"t2i_r{k}"] = 100 * np.mean(t2i_hits[k])
  out["i2t_rprec"] = 100 * np.mean(i2t_rprec)
  out["t2i_rprec"] = out["t2i_r1"]
  out["mean_r1"] = 0.5 * (out["i2t_r1"] + out["t2i_r1"])
  return out


_KEYS = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_rprec", "t2i_rprec",
         "mean_r1"}


def test_similarity_is_cosine():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
  ref = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
      b / np.linalg.norm(b, axis=1, keepdims=True)).T
  np.testing.assert_allclose(metrics.similarity(a, b), ref, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [7, 16, 64])
def test_matches_bruteforce_multi_caption(chunk_size):
  rng = np.random.default_rng(1)
  n_img, caps, dim = 30, 5, 8
  img = rng.normal(size=(n_img, dim)).astype(np.float32)
  text_image = np.repeat(np.arange(n_img), caps)
  # Noisy captions: retrieval is informative but far from perfect.
  txt = (img[text_image] + 1.5 * rng.normal(size=(n_img * caps, dim))).astype(np.float32)
  got = metrics.retrieval_metrics(img, txt, text_image, chunk_size=chunk_size)
  ref = _np_reference(img, txt, text_image)
  assert set(got) == _KEYS
  for k in _KEYS:
    assert isinstance(got[k], float)
    np.testing.assert_allclose(got[k], ref[k], atol=1e-6, err_msg=k)
  assert 0 < got["i2t_r1"] < 100 and 0 < got["i2t_rprec"] < 100


def test_uneven_captions_and_images_without_captions():
  rng = np.random.default_rng(2)
  n_img, dim = 23, 6
  img = rng.normal(size=(n_img, dim)).astype(np.float32)
  # Images 3 and 17 have no caption; others 1-4 captions; shuffled order.
  counts = rng.integers(1, 5, size=n_img)
  counts[[3, 17]] = 0
  text_image = rng.permutation(np.repeat(np.arange(n_img), counts))
  txt = (img[text_image] + rng.normal(size=(len(text_image), dim))).astype(np.float32)
  got = metrics.retrieval_metrics(img, txt, text_image, chunk_size=5)
  ref = _np_reference(img, txt, text_image)
  for k in _KEYS:
    np.testing.assert_allclose(got[k], ref[k], atol=1e-6, err_msg=k)


def test_perfect_embeddings_give_100():
  n = 13
  img = np.eye(16, dtype=np.float32)[:n]
  text_image = np.repeat(np.arange(n), 3)
  txt = img[text_image] * 2.0  # scale does not matter for cosine
  got = metrics.retrieval_metrics(img, txt, text_image, chunk_size=4)
  for k in _KEYS:
    assert got[k] == 100.0, k


def test_hand_made_example():
  # 3 images on the axes, one caption each; 2D unit directions.
  img = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  txt = np.array([
      [1.0, 0.1, 0.0],   # caption of image 0: closest to image 0 -> rank 0.
      [0.9, 0.5, 0.0],   # caption of image 1: closest to image 0 -> rank 1.
      [0.0, 0.2, 1.0],   # caption of image 2: rank 0.
      [0.0, 1.0, 0.0],   # second caption of image 1: rank 0.
  ], np.float32)
  text_image = np.array([0, 1, 2, 1])
  got = metrics.retrieval_metrics(img, txt, text_image, ks=(1, 2), chunk_size=2)
  # t2i ranks: [0, 1, 0, 0].
  assert got["t2i_r1"] == pytest.approx(75.0)
  assert got["t2i_r2"] == pytest.approx(100.0)
  assert got["t2i_rprec"] == pytest.approx(75.0)
  # i2t: image 0 row scores (cos): caption0 ~0.995, caption1 ~0.874 -> caption 0 first: hit.
  # image 1: captions 3 (1.0), 1 (0.486), 2 (0.196), 0 (0.0995) -> best rank 0; R=2, top-2 =
  # {3, 1} -> R-precision 1. image 2: caption 2 first.
  assert got["i2t_r1"] == pytest.approx(100.0)
  assert got["i2t_rprec"] == pytest.approx(100.0)
  assert got["mean_r1"] == pytest.approx(87.5)


def test_a_degenerate_model_does_not_score_100():
  """Every embedding equal, or all zero: every query ties with every candidate, and ties with
  other content count against it (the old favourable convention gave 100%)."""
  n = 6
  text_image = np.arange(n)
  for img in (np.ones((n, 4), np.float32), np.zeros((n, 4), np.float32)):
    got = metrics.retrieval_metrics(img, img.copy(), text_image, ks=(1, 6))
    assert got["i2t_r1"] == got["t2i_r1"] == got["i2t_rprec"] == 0.0
    assert got["i2t_r6"] == got["t2i_r6"] == 100.0
  ref = _np_reference(np.ones((n, 4)), np.ones((n, 4)), text_image, ks=(1, 6))
  assert ref["i2t_r1"] == ref["t2i_r1"] == 0.0 and ref["i2t_r6"] == 100.0


def test_identical_content_is_not_a_competitor():
  """One caption text on several images (a backdoor target on many copies) and two
  pixel-identical images: retrieving the same content is right, declared by content ids; without
  them the exact ties count against the query."""
  img = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)  # 0, 1 identical
  txt = np.array([[0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0.2, 0]], np.float32)
  text_image = np.array([3, 0, 2, 1])  # captions 0, 1: the same text on images 3 and 0
  tc, ic = dataset_lib.content_ids(txt), dataset_lib.content_ids(img)
  np.testing.assert_array_equal(tc, [0, 0, 1, 2])
  np.testing.assert_array_equal(ic, [0, 0, 1, 2])
  got = metrics.retrieval_ranks(img, txt, text_image, text_content=tc, image_content=ic)
  # Image 3's caption ties with image 0's identical one: a hit. Caption 3 (of image 1) ties
  # with image 0, its pixel twin: a hit. Caption 1 (on image 0) is the text of caption 0, on
  # image 3, which it retrieves first: as right as its own image (and image 0's twin, 1).
  np.testing.assert_array_equal(got["i2t_rank"], [2, 0, 0, 0])
  np.testing.assert_array_equal(got["t2i_rank"], [0, 0, 0, 0])
  strict = metrics.retrieval_ranks(img, txt, text_image)
  np.testing.assert_array_equal(strict["i2t_rank"], [3, 0, 0, 1])
  np.testing.assert_array_equal(strict["t2i_rank"], [0, 3, 0, 1])
  for kw in (dict(text_content=tc, image_content=ic), {}):
    ref = _np_reference(img, txt, text_image, ks=(1, 2), **kw)
    got = metrics.retrieval_metrics(img, txt, text_image, ks=(1, 2), **kw)
    for k in ref:
      assert got[k] == pytest.approx(ref[k]), (kw, k)


def test_random_content_groups_match_the_reference():
  """Multi-caption images with repeated caption texts and repeated images, against the list
  built by brute force."""
  rng = np.random.default_rng(4)
  base_img = rng.normal(size=(8, 6)).astype(np.float32)
  img = base_img[rng.integers(0, 8, size=20)]           # repeated images
  base_txt = rng.normal(size=(10, 6)).astype(np.float32)
  text_image = rng.permutation(np.repeat(np.arange(20), rng.integers(0, 4, size=20)))
  txt = base_txt[rng.integers(0, 10, size=len(text_image))]  # repeated texts
  kw = dict(text_content=dataset_lib.content_ids(txt), image_content=dataset_lib.content_ids(img))
  got = metrics.retrieval_metrics(img, txt, text_image, ks=(1, 3), chunk_size=3, **kw)
  ref = _np_reference(img, txt, text_image, ks=(1, 3), **kw)
  for k in ref:
    assert got[k] == pytest.approx(ref[k]), k


def test_retrieval_refuses_bad_input():
  img = np.eye(3, dtype=np.float32)
  bad = img.copy()
  bad[1, 0] = np.nan
  with pytest.raises(ValueError, match=r"1 of 3 image embeddings hold NaN or inf \(first: row 1"):
    metrics.retrieval_metrics(bad, img, np.arange(3))
  with pytest.raises(ValueError, match="1 of 3 text embeddings hold NaN or inf"):
    metrics.retrieval_metrics(img, np.where(np.isnan(bad), np.inf, bad), np.arange(3))
  with pytest.raises(ValueError, match="integer image indices"):
    metrics.retrieval_metrics(img, img, np.array([0.0, 1.9, 2.0]))
  with pytest.raises(ValueError, match="text_content must be 3 non-negative integer"):
    metrics.retrieval_metrics(img, img, np.arange(3), text_content=np.zeros(2, int))


def test_retrieval_ranks_shapes():
  rng = np.random.default_rng(3)
  img = rng.normal(size=(5, 4)).astype(np.float32)
  txt = rng.normal(size=(9, 4)).astype(np.float32)
  ti = np.array([0, 0, 1, 2, 2, 2, 4, 4, 1])
  r = metrics.retrieval_ranks(img, txt, ti, chunk_size=4)
  assert r["i2t_rank"].shape == (5,) and r["t2i_rank"].shape == (9,)
  np.testing.assert_array_equal(r["i2t_valid"], [True, True, True, False, True])


def test_an_empty_gallery_is_a_clear_error():
  emb = np.ones((3, 4), np.float32)
  with pytest.raises(ValueError, match="at least one image and one caption, got 3 images and 0"):
    metrics.retrieval_metrics(emb, emb[:0], np.zeros(0, np.int32))
  with pytest.raises(ValueError, match="got 0 images and 3 captions"):
    metrics.retrieval_metrics(emb[:0], emb, np.zeros(3, np.int32))


def test_a_caption_shared_by_several_images_retrieves_any_of_them():
  """i2t and t2i treat one caption text on several images alike: in i2t the text on another
  image is as right as the query's own, and in t2i so is another image with that caption."""
  img = np.array([[1, .1, 0], [1, .2, 0], [1, .3, 0]], np.float32)
  txt = np.ones((3, 1), np.float32) * np.array([[1, 0, 0]], np.float32)
  content = np.zeros(3, np.int32)
  got = metrics.retrieval_metrics(img, txt, np.arange(3), ks=(1,), text_content=content)
  assert got["i2t_r1"] == got["t2i_r1"] == 100.0
  # Without the content ids the three captions are different texts that tie: no hit but one.
  strict = metrics.retrieval_metrics(img, txt, np.arange(3), ks=(1,))
  assert strict["t2i_r1"] == pytest.approx(100 / 3)
