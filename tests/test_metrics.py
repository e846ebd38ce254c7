"""Tests for ease_jax.metrics against brute-force numpy references."""
import numpy as np
import pytest

from ease_jax import metrics


def _np_reference(img, txt, text_image, ks=(1, 5, 10)):
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  s = img.astype(np.float64) @ txt.T.astype(np.float64)
  n_img, n_txt = s.shape
  i2t_hits = {k: [] for k in ks}
  i2t_rprec = []
  for i in range(n_img):
    rel = [j for j in range(n_txt) if text_image[j] == i]
    if not rel:
      continue
    order = np.argsort(-s[i], kind="stable")
    first = min(int(np.flatnonzero(order == j)[0]) for j in rel)
    for k in ks:
      i2t_hits[k].append(first < k)
    r = len(rel)
    i2t_rprec.append(len(set(order[:r].tolist()) & set(rel)) / r)
  t2i_hits = {k: [] for k in ks}
  for j in range(n_txt):
    order = np.argsort(-s[:, j], kind="stable")
    pos = int(np.flatnonzero(order == text_image[j])[0])
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


def test_ties_count_favourably():
  img = np.array([[1, 0], [1, 0]], np.float32)  # identical images
  txt = np.array([[1, 0], [1, 0]], np.float32)
  got = metrics.retrieval_metrics(img, txt, np.array([0, 1]), ks=(1,))
  assert got["t2i_r1"] == 100.0 and got["i2t_r1"] == 100.0


def test_retrieval_ranks_shapes():
  rng = np.random.default_rng(3)
  img = rng.normal(size=(5, 4)).astype(np.float32)
  txt = rng.normal(size=(9, 4)).astype(np.float32)
  ti = np.array([0, 0, 1, 2, 2, 2, 4, 4, 1])
  r = metrics.retrieval_ranks(img, txt, ti, chunk_size=4)
  assert r["i2t_rank"].shape == (5,) and r["t2i_rank"].shape == (9,)
  np.testing.assert_array_equal(r["i2t_valid"], [True, True, True, False, True])
