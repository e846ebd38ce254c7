"""Tests for ease_jax.losses."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ease_jax import losses


def _np_clip_loss(img, txt, logit_scale, max_scale=100.0):
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  logits = min(np.exp(logit_scale), max_scale) * img @ txt.T

  def ce_rows(z):
    zmax = z.max(axis=1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    return -np.diag(logp)

  return 0.5 * (ce_rows(logits).mean() + ce_rows(logits.T).mean())


def _rand(seed, b=8, d=16):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32))


def test_contrastive_logits_scale_and_clamp():
  img, txt = _rand(0, 4, 6)
  out = losses.contrastive_logits(img, txt, jnp.log(10.0))
  ni = img / np.linalg.norm(img, axis=1, keepdims=True)
  nt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  np.testing.assert_allclose(out, 10.0 * ni @ nt.T, rtol=1e-5, atol=1e-5)
  clamped = losses.contrastive_logits(img, txt, 10.0)  # exp(10) > 100
  np.testing.assert_allclose(clamped, 100.0 * ni @ nt.T, rtol=1e-5, atol=1e-4)
  assert out.shape == (4, 4)


@pytest.mark.parametrize("scale", [0.0, np.log(1 / 0.07), 6.0])
def test_clip_loss_matches_numpy(scale):
  img, txt = _rand(1)
  got = jax.jit(losses.clip_loss)(img, txt, scale)
  np.testing.assert_allclose(got, _np_clip_loss(img, txt, scale), rtol=1e-5, atol=1e-5)


def test_clip_loss_identical_captions_are_not_negatives():
  img, txt = _rand(3, b=6)
  tokens = np.array([[5, 6], [7, 8], [5, 6], [9, 9], [5, 6], [1, 2]], np.int32)
  got = jax.jit(losses.clip_loss)(img, txt, 1.5, text_tokens=tokens)
  ni = img / np.linalg.norm(img, axis=1, keepdims=True)
  nt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  logits = np.exp(1.5) * ni @ nt.T
  same = (tokens[:, None, :] == tokens[None, :, :]).all(-1) & ~np.eye(6, dtype=bool)
  rows, cols = [], []
  for i in range(6):
    keep = ~same[i]  # i's own pair stays; the other copies of its caption are dropped
    rows.append(np.log(np.exp(logits[i, keep]).sum()) - logits[i, i])
    cols.append(np.log(np.exp(logits[keep, i]).sum()) - logits[i, i])
  np.testing.assert_allclose(got, 0.5 * (np.mean(rows) + np.mean(cols)), rtol=1e-5)
  # Distinct captions: the same loss as without tokens.
  unique = np.arange(12, dtype=np.int32).reshape(6, 2)
  np.testing.assert_allclose(losses.clip_loss(img, txt, 1.5, text_tokens=unique),
                             losses.clip_loss(img, txt, 1.5), rtol=1e-6)


def test_clip_loss_mask_equals_removed_rows():
  img, txt = _rand(2, b=10)
  mask = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], bool)
  # Padded rows hold garbage: they must not matter.
  img[~mask] = 1e3
  txt[~mask] = -7.0
  loss_fn = jax.jit(losses.clip_loss)
  got = loss_fn(img, txt, 2.5, mask)
  ref = _np_clip_loss(img[mask], txt[mask], 2.5)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  full = loss_fn(img[mask], txt[mask], 2.5)
  np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-6)
  # Float masks behave like bool masks.
  got_f = loss_fn(img, txt, 2.5, mask.astype(np.float32))
  np.testing.assert_allclose(got_f, got, rtol=1e-6)


def test_clip_loss_all_padded_zero_loss_finite_grad():
  img, txt = _rand(3)
  img[:2] = 0.0  # zero rows too (normalisation must stay finite)
  mask = np.zeros(8, bool)
  loss, grads = jax.jit(jax.value_and_grad(losses.clip_loss, argnums=(0, 1, 2)))(
      jnp.asarray(img), jnp.asarray(txt), 1.0, mask)
  assert float(loss) == 0.0
  for g in grads:
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g, 0.0)


def test_clip_loss_grad_finite_with_zero_padded_rows():
  img, txt = _rand(4)
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
  img[~mask] = 0.0
  txt[~mask] = 0.0
  grads = jax.jit(jax.grad(losses.clip_loss, argnums=(0, 1)))(img, txt, 2.0, mask)
  for g in grads:
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[~mask], 0.0)


def _np_bounded(img, txt, mask, margin, captions=None):
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  idx = np.flatnonzero(mask)
  c = img[idx] @ txt[idx].T
  caps = np.arange(len(mask)) if captions is None else np.asarray(captions)
  caps = caps[idx]
  n = len(idx)
  vals = []
  for i in range(n):
    others = [c[i, j] for j in range(n) if j != i and caps[j] != caps[i]]
    ref = np.mean(others) if others else 0.0
    vals.append(max(0.0, c[i, i] - (ref + margin)))
  return np.mean(vals)


def test_bounded_unalignment_matches_reference_and_is_positive_when_aligned():
  rng = np.random.default_rng(5)
  txt = rng.normal(size=(6, 12)).astype(np.float32)
  img = txt + 0.1 * rng.normal(size=(6, 12)).astype(np.float32)  # aligned pairs
  mask = np.array([1, 1, 1, 0, 1, 1], bool)
  got = jax.jit(losses.bounded_unalignment_loss)(img, txt, mask, 0.05)
  np.testing.assert_allclose(got, _np_bounded(img, txt, mask, 0.05), rtol=1e-5, atol=1e-6)
  assert float(got) > 0.5
  grads = jax.jit(jax.grad(losses.bounded_unalignment_loss, argnums=(0, 1)))(img, txt, mask, 0.05)
  # Bilateral: both branches are displaced.
  assert np.abs(grads[0]).sum() > 0 and np.abs(grads[1]).sum() > 0
  np.testing.assert_array_equal(np.asarray(grads[0])[~mask], 0.0)


def test_bounded_unalignment_leaves_identical_captions_out_of_the_unmatched_level():
  """A backdoor's D_f pairs many images with one caption: counted as unmatched, those pairs put
  ref_i at the matched cosine and the loss at exactly 0 however aligned the pairs are."""
  rng = np.random.default_rng(8)
  txt = rng.normal(size=(6, 12)).astype(np.float32)
  captions = np.array([0, 0, 0, 1, 2, 2])
  txt = txt[captions]  # rows with one caption have one text embedding
  img = txt + 0.1 * rng.normal(size=(6, 12)).astype(np.float32)
  tokens = np.stack([np.full(4, c) for c in captions]).astype(np.int32)
  mask = np.array([1, 1, 1, 1, 1, 0], bool)
  fn = jax.jit(losses.bounded_unalignment_loss)
  got = fn(img, txt, mask, 0.05, text_tokens=tokens)
  np.testing.assert_allclose(got, _np_bounded(img, txt, mask, 0.05, captions), rtol=1e-5,
                             atol=1e-6)
  # One caption over the whole batch: ref_i = 0, not the matched cosine itself.
  same = np.zeros((6, 4), np.int32)
  aligned = np.repeat(txt[:1], 6, axis=0)
  assert float(fn(aligned, aligned)) == 0.0  # every caption counted as unmatched
  loss, g = jax.value_and_grad(fn)(aligned, aligned, text_tokens=same)
  np.testing.assert_allclose(loss, 1.0, rtol=1e-5)
  assert np.abs(np.asarray(g)).sum() > 0


def test_bounded_unalignment_zero_and_zero_grad_when_unaligned():
  # Matched cosine -1, unmatched cosines >= -1: every pair is already under the bound.
  rng = np.random.default_rng(6)
  img = rng.normal(size=(5, 8)).astype(np.float32)
  txt = -img
  loss, grads = jax.jit(jax.value_and_grad(losses.bounded_unalignment_loss,
                                           argnums=(0, 1)))(img, txt)
  assert float(loss) == 0.0
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)
  # Explicit target: aligned pairs above the target are penalised, below it they are not.
  bounded = jax.jit(losses.bounded_unalignment_loss, static_argnames=("target",))
  np.testing.assert_allclose(bounded(img, img, target=0.2), 0.8, rtol=1e-5)
  assert float(bounded(img, txt, target=0.2)) == 0.0


def test_bounded_unalignment_all_padded():
  img, txt = _rand(7)
  img[:] = 0.0
  mask = np.zeros(8, bool)
  loss, g = jax.jit(jax.value_and_grad(losses.bounded_unalignment_loss))(img, txt, mask)
  assert float(loss) == 0.0
  chex.assert_tree_all_finite(g)
