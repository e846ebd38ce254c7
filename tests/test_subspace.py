"""Tests for ease_jax.subspace (GSD)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ease_jax import subspace as S

METHODS = ("gram", "qr", "svd")


def _orth(rng, d, r):
  return np.linalg.qr(rng.normal(size=(d, r)))[0].astype(np.float32)


def _proj_np(u):
  return u @ u.T


def _masked_np(u, valid):
  return np.asarray(u)[:, np.asarray(valid)]


def _spectrum_matrix(rng, d, sigmas):
  """`[d, len(sigmas)]` matrix with the given singular values."""
  m = len(sigmas)
  left = _orth(rng, d, m)
  right = _orth(rng, m, m)
  return (left * np.asarray(sigmas, np.float32)) @ right.T


@pytest.mark.parametrize("method", METHODS)
def test_basis_spans_same_subspace_as_numpy_svd(method):
  rng = np.random.default_rng(0)
  g = rng.normal(size=(64, 10)).astype(np.float32)
  u, valid, sigma = S.orthonormal_basis(g, 1.0, 10, method)
  assert valid.shape == (10,) and bool(valid.all())
  u_np, s_np, _ = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  np.testing.assert_allclose(sigma, s_np, rtol=1e-4)
  np.testing.assert_allclose(_proj_np(np.asarray(u)), _proj_np(u_np), atol=2e-5)
  np.testing.assert_allclose(np.asarray(u).T @ np.asarray(u), np.eye(10), atol=2e-6)


@pytest.mark.parametrize("method", METHODS)
def test_energy_truncation_picks_rank(method):
  rng = np.random.default_rng(1)
  sig = [10.0, 5.0, 2.0, 1.0, 0.5, 0.1]
  g = _spectrum_matrix(rng, 40, sig)
  total = sum(s * s for s in sig)
  cum = np.cumsum(np.square(sig)) / total  # [.7677, .9596, .9903, .9980, .99992, 1]
  for energy, want in [(0.5, 1), (0.76, 1), (0.77, 2), (0.95, 2), (0.96, 3), (0.99, 3),
                       (0.995, 4), (0.9995, 5), (1.0, 6)]:
    assert (cum[want - 1] >= energy) and (want == 1 or cum[want - 2] < energy)
    u, valid, sigma = S.orthonormal_basis(g, energy, 8, method)
    assert int(valid.sum()) == want, (energy, method)
    np.testing.assert_array_equal(valid, np.arange(8) < want)
    np.testing.assert_array_equal(np.asarray(u)[:, want:], 0.0)
    np.testing.assert_allclose(sigma[:6], sig, rtol=1e-4)
  # Rank cap.
  _, valid, _ = S.orthonormal_basis(g, 1.0, 3, method)
  np.testing.assert_array_equal(valid, [True, True, True])


@pytest.mark.parametrize("method", METHODS)
def test_zero_padded_columns_are_harmless(method):
  rng = np.random.default_rng(2)
  g = rng.normal(size=(48, 5)).astype(np.float32)
  g_pad = np.concatenate([g[:, :2], np.zeros((48, 3), np.float32), g[:, 2:],
                          np.zeros((48, 2), np.float32)], axis=1)
  u1, v1, s1 = S.orthonormal_basis(g, 0.95, 8, method)
  u2, v2, s2 = S.orthonormal_basis(g_pad, 0.95, 8, method)
  np.testing.assert_array_equal(v1, v2)
  np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_proj_np(np.asarray(u1)), _proj_np(np.asarray(u2)), atol=1e-5)
  # Rank-deficient history (repeated update) and an all-zero history.
  g_dup = np.concatenate([g[:, :3], g[:, :3]], axis=1)
  _, v, _ = S.orthonormal_basis(g_dup, 1.0, 6, method)
  assert int(v.sum()) == 3
  u0, v0, s0 = S.orthonormal_basis(np.zeros((48, 4), np.float32), 0.9, 4, method)
  assert not bool(v0.any())
  np.testing.assert_array_equal(u0, 0.0)
  chex.assert_tree_all_finite((u0, s0))


def test_tiny_gradients_scale_invariant():
  rng = np.random.default_rng(3)
  g = rng.normal(size=(32, 6)).astype(np.float32)
  u1, v1, _ = S.orthonormal_basis(g, 0.9, 6, "gram")
  u2, v2, s2 = S.orthonormal_basis(g * 1e-20, 0.9, 6, "gram")
  np.testing.assert_array_equal(v1, v2)
  np.testing.assert_allclose(_proj_np(np.asarray(u1)), _proj_np(np.asarray(u2)), atol=1e-5)
  assert float(s2[0]) < 1e-18


def test_union_basis():
  rng = np.random.default_rng(4)
  d = 40
  a, b = _orth(rng, d, 3), _orth(rng, d, 4)
  bases = np.zeros((3, d, 5), np.float32)
  valid = np.zeros((3, 5), bool)
  bases[0, :, :3], valid[0, :3] = a, True
  bases[1, :, :4], valid[1, :4] = b, True
  bases[1, :, 4] = 123.0  # garbage in an invalid column must be ignored
  bases[2] = 0.0  # an absent client
  u, v = S.union_basis(bases, valid, 1.0, 12)
  ref = np.linalg.svd(np.concatenate([a, b], 1), full_matrices=False)[0]
  assert int(v.sum()) == 7
  np.testing.assert_allclose(_proj_np(np.asarray(u)), _proj_np(ref), atol=1e-5)


def _angles_problem(rng, d=60, shared=3, p_extra=3, q_extra=4):
  base = _orth(rng, d, shared + p_extra + q_extra)
  sh = base[:, :shared]
  # Forget: shared + directions tilted toward the retain-only block (angles strictly inside).
  f_extra = base[:, shared:shared + p_extra]
  r_extra = base[:, shared + p_extra:]
  tilt = 0.6 * r_extra[:, :p_extra]
  u_f = np.linalg.qr(np.concatenate([sh, f_extra + tilt], 1))[0].astype(np.float32)
  u_r = np.linalg.qr(np.concatenate([sh, r_extra], 1))[0].astype(np.float32)
  return u_f, u_r


@pytest.mark.parametrize("overlap", [0, 3])
def test_principal_angles_match_scipy(overlap):
  rng = np.random.default_rng(5 + overlap)
  if overlap:
    u_f, u_r = _angles_problem(rng, shared=overlap)
  else:
    u_f, u_r = _orth(rng, 50, 5), _orth(rng, 50, 7)
  p, q = u_f.shape[1], u_r.shape[1]
  pa = S.principal_angles(u_f, np.ones(p, bool), u_r, np.ones(q, bool))
  ref = np.sort(scipy.linalg.subspace_angles(u_f.astype(np.float64), u_r.astype(np.float64)))
  # Sines for the small angles (arccos alone resolves them only to ~sqrt(eps), 5e-4).
  np.testing.assert_allclose(pa.angles, ref, atol=2e-5)
  cs = S.cs_decomposition(u_f, np.ones(p, bool), u_r, np.ones(q, bool))
  np.testing.assert_allclose(cs.angles, ref, atol=2e-5)
  if overlap:
    np.testing.assert_allclose(cs.angles[:overlap], 0.0, atol=1e-5)
  assert np.all(np.diff(np.asarray(pa.angles)) >= -1e-6)


def test_principal_angles_with_padding():
  rng = np.random.default_rng(7)
  u_f, u_r = _angles_problem(rng)
  ref = np.sort(scipy.linalg.subspace_angles(u_f.astype(np.float64), u_r.astype(np.float64)))
  # Pad both bases with invalid (garbage) columns at arbitrary positions.
  d = u_f.shape[0]
  uf_pad = np.full((d, 8), 5.0, np.float32)
  vf = np.zeros(8, bool)
  uf_pad[:, [0, 2, 3, 5, 6, 7]], vf[[0, 2, 3, 5, 6, 7]] = u_f, True
  ur_pad = np.full((d, 10), -3.0, np.float32)
  vr = np.zeros(10, bool)
  ur_pad[:, 1:8], vr[1:8] = u_r, True
  pa = S.principal_angles(uf_pad, vf, ur_pad, vr)
  np.testing.assert_array_equal(pa.valid, np.arange(8) < 6)
  np.testing.assert_allclose(pa.angles[:6], ref, atol=2e-5)
  np.testing.assert_allclose(pa.angles[6:], np.pi / 2)
  np.testing.assert_allclose(pa.cos[6:], 0.0)
  # Y orthogonal, block-structured; U_f^T U_r = Y cos Z^T.
  y = np.asarray(pa.y)
  np.testing.assert_allclose(y.T @ y, np.eye(8), atol=1e-5)
  m = (uf_pad * vf).T @ (ur_pad * vr)
  np.testing.assert_allclose(y @ np.diag(pa.cos) @ np.asarray(pa.z).T, m, atol=1e-5)


def test_cs_decomposition_identities():
  rng = np.random.default_rng(8)
  u_f, u_r = _angles_problem(rng, d=70, shared=2, p_extra=4, q_extra=5)
  p, q = u_f.shape[1], u_r.shape[1]
  vf = np.ones(p + 2, bool)
  vf[-2:] = False
  uf_pad = np.concatenate([u_f, np.zeros((70, 2), np.float32)], 1)
  cs = S.cs_decomposition(uf_pad, vf, u_r, np.ones(q, bool))
  y, z, qm = np.asarray(cs.y), np.asarray(cs.z), np.asarray(cs.q)
  lhs = uf_pad @ y
  rhs = u_r @ z @ np.diag(cs.cos) + qm @ np.diag(cs.sin * cs.q_valid)
  np.testing.assert_allclose(lhs, rhs, atol=1e-5)
  np.testing.assert_allclose(qm.T @ u_r, 0.0, atol=1e-5)
  qv = qm[:, np.asarray(cs.q_valid)]
  assert qv.shape[1] == 4  # the two shared directions have sin ~ 0
  np.testing.assert_allclose(qv.T @ qv, np.eye(4), atol=1e-5)
  np.testing.assert_allclose(np.square(cs.cos[:p]) + np.square(cs.sin[:p]), 1.0, atol=1e-5)


def _project_np(u, valid, x):
  um = _masked_np(u, valid)
  return um @ (um.T @ x)


def test_projectors_symmetric_idempotent():
  rng = np.random.default_rng(9)
  d, r = 30, 6
  u = np.concatenate([_orth(rng, d, 4), np.full((d, 2), 9.0, np.float32)], 1)
  valid = np.array([1, 1, 1, 1, 0, 0], bool)
  proj = S.Projector(jnp.asarray(u), jnp.asarray(valid))
  x, y = rng.normal(size=d).astype(np.float32), rng.normal(size=d).astype(np.float32)
  px = proj.apply(x)
  np.testing.assert_allclose(px, _project_np(u, valid, x), atol=1e-5)
  np.testing.assert_allclose(proj.apply(px), px, atol=1e-5)
  np.testing.assert_allclose(np.dot(px, y), np.dot(x, proj.apply(y)), atol=1e-5)
  np.testing.assert_allclose(proj.complement(x) + px, x, atol=1e-5)
  np.testing.assert_allclose(proj.apply(proj.complement(x)), 0.0, atol=1e-5)
  mat = np.asarray(proj.matrix())
  np.testing.assert_allclose(mat, mat.T, atol=1e-6)
  np.testing.assert_allclose(mat @ mat, mat, atol=1e-5)
  assert int(proj.rank) == 4
  # Batched inputs [n, d] and the vmapped-over-modules helpers.
  xs = rng.normal(size=(3, d)).astype(np.float32)
  np.testing.assert_allclose(proj.apply(xs), np.stack([_project_np(u, valid, v) for v in xs]),
                             atol=1e-5)
  us = np.stack([u, u, u])
  vs = np.stack([valid, valid, np.zeros(r, bool)])
  out = S.batched_project(us, vs, xs)
  np.testing.assert_allclose(out[:2], proj.apply(xs[:2]), atol=1e-6)
  np.testing.assert_allclose(out[2], 0.0)
  np.testing.assert_allclose(S.batched_project_out(us, vs, xs)[2], xs[2])


def test_projection_gradient_flows_through_x_only():
  rng = np.random.default_rng(10)
  u = _orth(rng, 12, 3)
  valid = np.ones(3, bool)
  x = rng.normal(size=12).astype(np.float32)
  gx = jax.grad(lambda v: 0.5 * jnp.sum(S.project(u, valid, v) ** 2))(x)
  np.testing.assert_allclose(gx, _project_np(u, valid, x), atol=1e-5)
  gu = jax.grad(lambda b: jnp.sum(S.project(b, valid, x)))(jnp.asarray(u))
  np.testing.assert_array_equal(gu, 0.0)


def _exclusive_problem(rng, d=80, n_shared=3, n_unique=2, n_retain_only=4):
  base = _orth(rng, d, n_shared + n_unique + n_retain_only)
  shared = base[:, :n_shared]
  unique = base[:, n_shared:n_shared + n_unique]
  retain_only = base[:, n_shared + n_unique:]
  # Mix so that the basis vectors are not aligned with the decomposition.
  u_f = np.linalg.qr(np.concatenate([shared, unique], 1) @ _orth(rng, n_shared + n_unique,
                                                                 n_shared + n_unique))[0]
  u_r = np.linalg.qr(np.concatenate([shared, retain_only], 1))[0]
  return u_f.astype(np.float32), u_r.astype(np.float32), unique


def test_exclusive_basis_spans_unique_directions():
  rng = np.random.default_rng(11)
  u_f, u_r, unique = _exclusive_problem(rng)
  p, q = u_f.shape[1], u_r.shape[1]
  u_u, valid_u, angles = S.exclusive_basis(u_f, np.ones(p, bool), u_r, np.ones(q, bool), 0.3)
  assert int(valid_u.sum()) == 2
  uu = _masked_np(u_u, valid_u)
  np.testing.assert_allclose(uu.T @ uu, np.eye(2), atol=1e-5)
  np.testing.assert_allclose(_proj_np(uu), _proj_np(unique), atol=1e-5)
  np.testing.assert_allclose(angles[:3], 0.0, atol=1e-5)
  np.testing.assert_allclose(angles[3:], np.pi / 2, atol=1e-5)


def test_exclusive_basis_threshold_keeps_tilted_directions_shared():
  rng = np.random.default_rng(12)
  d = 50
  base = _orth(rng, d, 4)
  e0, e1, e2, e3 = base.T
  # Forget directions at 0.2 rad and 1.2 rad from the retain plane span(e0, e2).
  f = np.stack([np.cos(0.2) * e0 + np.sin(0.2) * e1, np.cos(1.2) * e2 + np.sin(1.2) * e3], 1)
  u_r = np.stack([e0, e2], 1)
  u_u, valid_u, angles = S.exclusive_basis(f, np.ones(2, bool), u_r, np.ones(2, bool), 0.5)
  np.testing.assert_allclose(angles, [0.2, 1.2], atol=1e-5)
  np.testing.assert_array_equal(valid_u, [False, True])
  np.testing.assert_allclose(_proj_np(_masked_np(u_u, valid_u)), np.outer(e3, e3), atol=1e-5)


def test_exclusive_basis_without_retain_is_forget_basis():
  rng = np.random.default_rng(13)
  u_f = _orth(rng, 30, 4)
  vf = np.array([1, 1, 1, 0], bool)
  u_u, valid_u, angles = S.exclusive_basis(u_f, vf, np.zeros((30, 5), np.float32),
                                           np.zeros(5, bool), 0.3)
  np.testing.assert_array_equal(valid_u, vf)
  np.testing.assert_allclose(u_u, u_f * vf, atol=0)
  np.testing.assert_allclose(angles, np.pi / 2, atol=1e-6)


def _gsd_inputs(rng, d=64, m=6, k=3):
  """Forget updates in span(shared, unique); retain clients in span(shared, own)."""
  base = _orth(rng, d, 2 + 2 + 2 * k)
  shared, unique = base[:, :2], base[:, 2:4]
  f = rng.normal(size=(m, 4)).astype(np.float32) @ np.concatenate([shared, unique], 1).T
  f[-1] = 0.0  # missing history
  retain = []
  for c in range(k):
    own = base[:, 4 + 2 * c:6 + 2 * c]
    retain.append(rng.normal(size=(m, 4)).astype(np.float32) @ np.concatenate([shared, own],
                                                                               1).T)
  retain = np.stack(retain)
  retain[-1] = 0.0  # an absent client
  return f.astype(np.float32), retain.astype(np.float32), unique


@pytest.mark.parametrize("method", METHODS)
def test_gsd_pipeline(method):
  rng = np.random.default_rng(14)
  f, retain, unique = _gsd_inputs(rng)
  res = S.gsd(f, retain, 1.0, 8, 0.3, method)
  assert int(res.forget_rank) == 4
  assert int(res.retain_rank) == 2 + 2 * 2
  assert int(res.unique_rank) == 2
  np.testing.assert_allclose(_proj_np(_masked_np(res.unique_basis, res.unique_valid)),
                             _proj_np(unique), atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_a_threshold_of_90_degrees_keeps_every_orthogonal_direction(method):
  """θ* = 90° (allowed): directions exactly orthogonal to the retained span come out of float32
  at pi/2 give or take one rounding step; all of them are exclusive, not a random part."""
  rng = np.random.default_rng(14)
  f, retain, unique = _gsd_inputs(rng)
  res = S.gsd(f, retain, 1.0, 8, np.pi / 2, method)
  assert int(res.unique_rank) == 2
  np.testing.assert_allclose(_proj_np(_masked_np(res.unique_basis, res.unique_valid)),
                             _proj_np(unique), atol=1e-4)


def test_gsd_vmapped_over_modules_equals_loop():
  rng = np.random.default_rng(15)
  inputs = [_gsd_inputs(rng) for _ in range(3)]
  fs = np.stack([x[0] for x in inputs])
  rs = np.stack([x[1] for x in inputs])
  fn = jax.jit(jax.vmap(functools.partial(S.gsd, energy=0.99, max_rank=8,
                                          angle_threshold_rad=0.3)))
  batched = fn(fs, rs)
  for i in range(3):
    single = S.gsd(fs[i], rs[i], 0.99, 8, 0.3)
    np.testing.assert_array_equal(batched.unique_valid[i], single.unique_valid)
    np.testing.assert_allclose(batched.angles[i], single.angles, atol=1e-5)
    pb = _proj_np(_masked_np(batched.unique_basis[i], batched.unique_valid[i]))
    ps = _proj_np(_masked_np(single.unique_basis, single.unique_valid))
    np.testing.assert_allclose(pb, ps, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_orthonormal_basis_vmap_over_clients_equals_loop(method):
  rng = np.random.default_rng(16)
  gs = rng.normal(size=(4, 40, 6)).astype(np.float32)
  gs[2, :, 3:] = 0.0
  us, vs, ss = jax.vmap(lambda g: S.orthonormal_basis(g, 0.9, 5, method))(gs)
  for i in range(4):
    u, v, s = S.orthonormal_basis(gs[i], 0.9, 5, method)
    np.testing.assert_array_equal(vs[i], v)
    np.testing.assert_allclose(ss[i], s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_proj_np(np.asarray(us[i])), _proj_np(np.asarray(u)), atol=1e-5)


def test_gsd_eager_equals_jit():
  """The GSD pipeline op by op (`jax.disable_jit` switches off the module's own jits too, which
  chex's without_jit variant would still run compiled) against its compiled run, and inside an
  outer jit with the thresholds traced."""
  rng = np.random.default_rng(17)
  f, retain, _ = _gsd_inputs(rng)
  ref = S.gsd(f, retain, 0.95, 8, 0.3)
  outer = jax.jit(functools.partial(S.gsd, max_rank=8, method="gram"))(
      f, retain, 0.95, angle_threshold_rad=0.3)
  with jax.disable_jit():
    eager = S.gsd(f, retain, 0.95, 8, 0.3)
  for out in (eager, outer):
    np.testing.assert_array_equal(out.unique_valid, ref.unique_valid)
    np.testing.assert_allclose(out.angles, ref.angles, atol=1e-5)
    # Bases are unique only up to rotations inside degenerate angle clusters: compare projectors.
    np.testing.assert_allclose(out.projector.matrix(), ref.projector.matrix(), atol=1e-5)
  assert np.asarray(ref.unique_valid).any() and not np.asarray(ref.unique_valid).all()


def test_cs_eager_equals_jit():
  # chex's without_jit variant still runs the module's inner jits; this runs op by op.
  rng = np.random.default_rng(19)
  u_f, u_r = _angles_problem(rng, d=20, shared=1, p_extra=2, q_extra=2)
  vf, vr = np.ones(u_f.shape[1], bool), np.ones(u_r.shape[1], bool)
  ref = S.cs_decomposition(u_f, vf, u_r, vr)
  with jax.disable_jit():
    out = S.cs_decomposition(u_f, vf, u_r, vr)
  np.testing.assert_allclose(out.cos, ref.cos, atol=1e-6)
  np.testing.assert_allclose(out.sin, ref.sin, atol=1e-6)
  np.testing.assert_array_equal(out.q_valid, ref.q_valid)
  np.testing.assert_allclose(_proj_np(np.asarray(out.q)), _proj_np(np.asarray(ref.q)),
                             atol=1e-5)


# Small principal angles in float32 (issue: arccos of the cosines returned 0 or 0.02-0.06 deg for
# true angles of 0.005 deg; the CS angles were 7-22 % off and unsorted). The reference is scipy's
# float64 `subspace_angles` of the same float32 bases.


def _scipy_angles(a, b):
  """Ascending float64 principal angles of the float32 bases `a`, `b` (min(p, q) of them)."""
  return np.sort(scipy.linalg.subspace_angles(np.asarray(a, np.float64),
                                              np.asarray(b, np.float64)))


def _assert_angles_match(angles, ref, rtol=1e-2, tiny_atol=2e-7):
  """Relative error <= rtol for reference angles >= 1e-5 rad, absolute below."""
  got = np.asarray(angles, np.float64)[:len(ref)]
  big = ref >= 1e-5
  rel = np.abs(got - ref) / np.maximum(ref, 1e-30)
  assert np.all(rel[big] <= rtol), (got, ref, rel)
  np.testing.assert_allclose(got[~big], ref[~big], atol=tiny_atol)


def _assert_sorted(angles):
  a = np.asarray(angles)
  assert np.all(np.diff(a) >= 0), a


def _pair_with_angles(rng, d, thetas, q_extra=0, p_extra=0):
  """float32 orthonormal U_f `[d, n + p_extra]`, U_r `[d, n + q_extra]` with principal angles
  `thetas` (n of them; the p_extra further forget directions are orthogonal to U_r), in random
  bases of both subspaces."""
  n = len(thetas)
  base = np.linalg.qr(rng.normal(size=(d, 2 * n + q_extra + p_extra)))[0]
  u_f = np.concatenate([base[:, :n] * np.cos(thetas) + base[:, n:2 * n] * np.sin(thetas),
                        base[:, 2 * n + q_extra:]], 1)
  u_r = base[:, np.r_[0:n, 2 * n:2 * n + q_extra]]
  u_f = np.linalg.qr(u_f @ np.linalg.qr(rng.normal(size=(u_f.shape[1],) * 2))[0])[0]
  u_r = np.linalg.qr(u_r @ np.linalg.qr(rng.normal(size=(u_r.shape[1],) * 2))[0])[0]
  return u_f.astype(np.float32), u_r.astype(np.float32), base


def _issue_pair(rng, d=500, p=8, noise=1e-4):
  """The issue's case: 8-dimensional subspaces of R^500, B = A + 1e-4 * noise (float32 bases,
  angles 0.0050-0.0064 deg)."""
  a = np.linalg.qr(rng.normal(size=(d, p)).astype(np.float32))[0]
  b = a + noise * rng.normal(size=(d, p)).astype(np.float32) / np.sqrt(d)
  return a, np.linalg.qr(b.astype(np.float32))[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_angles_float32_match_scipy(seed):
  u_f, u_r = _issue_pair(np.random.default_rng(100 + seed))
  ref = _scipy_angles(u_f, u_r)
  assert 8e-5 < ref.min() and ref.max() < 1.2e-4  # 0.005-0.007 deg
  ones = np.ones(8, bool)
  pa = S.principal_angles(u_f, ones, u_r, ones)
  cs = S.cs_decomposition(u_f, ones, u_r, ones)
  for angles in (pa.angles, cs.angles):
    _assert_angles_match(angles, ref)
    _assert_sorted(angles)
  np.testing.assert_allclose(pa.sin, cs.sin, rtol=1e-4)
  np.testing.assert_allclose(np.arcsin(np.asarray(cs.sin, np.float64)), ref, rtol=1e-2)
  # Q diag(sin) = (I - U_r U_r^T) U_f Y with orthonormal Q (sines above sin_tol only).
  qv = np.asarray(cs.q)[:, np.asarray(cs.q_valid)]
  np.testing.assert_allclose(qv.T @ qv, np.eye(qv.shape[1]), atol=1e-5)
  np.testing.assert_allclose(qv.T @ u_r, 0.0, atol=1e-6)


def test_mixed_tiny_and_large_angles():
  rng = np.random.default_rng(110)
  thetas = np.array([1e-5, 3e-5, 1e-4, 1e-3, 0.1, 0.5, 1.0, 1.5])
  u_f, u_r, _ = _pair_with_angles(rng, 500, thetas, q_extra=4)
  ref = _scipy_angles(u_f, u_r)
  np.testing.assert_allclose(ref, thetas, rtol=1e-2)
  vf, vr = np.ones(8, bool), np.ones(12, bool)
  pa = S.principal_angles(u_f, vf, u_r, vr)
  cs = S.cs_decomposition(u_f, vf, u_r, vr, sin_tol=0.0)
  for angles in (pa.angles, cs.angles):
    _assert_angles_match(angles, ref)
    _assert_sorted(angles)
  # The CS identities hold for every column, tiny sines included.
  y, z, qm = np.asarray(cs.y), np.asarray(cs.z), np.asarray(cs.q)
  np.testing.assert_allclose(y.T @ y, np.eye(8), atol=1e-5)
  np.testing.assert_allclose(u_f @ y, u_r @ z @ np.diag(cs.cos) + qm @ np.diag(cs.sin), atol=1e-5)
  np.testing.assert_allclose(qm.T @ qm, np.eye(8), atol=1e-5)
  # float32 dot products over d = 500: rounding alone reaches ~1.3e-6.
  np.testing.assert_allclose(qm.T @ u_r, 0.0, atol=1e-5)
  np.testing.assert_allclose(np.square(cs.cos) + np.square(cs.sin), 1.0, atol=1e-5)


def test_two_shared_directions():
  # Two directions shared up to 2.6e-7 and 7.2e-7 rad (1.5e-5 and 4.1e-5 deg; arccos of the
  # float32 cosines gives 0 or up to 0.034 deg), three at 0.5-1.2 rad and one orthogonal to U_r.
  rng = np.random.default_rng(120)
  thetas = np.array([2.6e-7, 7.2e-7, 0.5, 0.9, 1.2])
  u_f, u_r, base = _pair_with_angles(rng, 500, thetas, q_extra=3, p_extra=1)
  ref = _scipy_angles(u_f, u_r)
  p, q = u_f.shape[1], u_r.shape[1]
  pa = S.principal_angles(u_f, np.ones(p, bool), u_r, np.ones(q, bool))
  cs = S.cs_decomposition(u_f, np.ones(p, bool), u_r, np.ones(q, bool))
  for angles in (pa.angles, cs.angles):
    _assert_angles_match(angles, ref, tiny_atol=2e-7)
    _assert_sorted(angles)
    np.testing.assert_allclose(angles[5], np.pi / 2, atol=1e-6)
  # Shared directions (sin <= sin_tol) have no Q column; the others are orthonormal, outside U_r.
  np.testing.assert_array_equal(cs.q_valid, [False, False, True, True, True, True])
  qm = np.asarray(cs.q)
  np.testing.assert_array_equal(qm[:, :2], 0.0)
  np.testing.assert_allclose(qm.T @ qm, np.diag([0, 0, 1, 1, 1, 1.0]), atol=1e-5)
  # float32 dot products over d = 500: rounding alone reaches ~1.3e-6.
  np.testing.assert_allclose(qm.T @ u_r, 0.0, atol=1e-5)
  # Threshold 0.7 rad: U_u spans the residual directions at 0.9 and 1.2 rad and the one at pi/2.
  u_u, valid_u, angles = S.exclusive_basis(u_f, np.ones(p, bool), u_r, np.ones(q, bool), 0.7)
  np.testing.assert_array_equal(valid_u, [False, False, False, True, True, True])
  np.testing.assert_allclose(angles, cs.angles)
  want = base[:, [8, 9, 13]]  # normals of thetas[3:], then the p_extra direction
  np.testing.assert_allclose(_proj_np(_masked_np(u_u, valid_u)), _proj_np(want), atol=1e-5)


def test_exclusive_basis_threshold_between_small_angles():
  # Directions at 2e-4 and 6e-4 rad (cosines 1 - 2e-8 and 1 - 1.8e-7: one float32 ulp apart)
  # and a threshold of 4e-4 between them: only the accurate angles tell them apart.
  rng = np.random.default_rng(130)
  thetas = np.array([2e-4, 6e-4, 1.0])
  u_f, u_r, base = _pair_with_angles(rng, 300, thetas, q_extra=2)
  ref = _scipy_angles(u_f, u_r)
  u_u, valid_u, angles = S.exclusive_basis(u_f, np.ones(3, bool), u_r, np.ones(5, bool), 4e-4)
  _assert_angles_match(angles, ref)
  np.testing.assert_array_equal(valid_u, [False, True, True])
  uu = _masked_np(u_u, valid_u)
  np.testing.assert_allclose(uu.T @ uu, np.eye(2), atol=1e-5)
  np.testing.assert_allclose(_proj_np(uu), _proj_np(base[:, [4, 5]]), atol=1e-4)


def test_small_angles_with_padding_and_vmap():
  rng = np.random.default_rng(140)
  thetas = np.array([1e-5, 4e-5, 2e-4, 0.3, 1.1])
  pairs = [_pair_with_angles(rng, 200, thetas, q_extra=2)[:2] for _ in range(2)]
  refs = [_scipy_angles(a, b) for a, b in pairs]
  # Garbage in invalid columns at arbitrary positions of both bases.
  cols_f, cols_r = [0, 2, 3, 5, 6], [1, 2, 4, 5, 6, 7, 9]
  vf, vr = np.zeros(8, bool), np.zeros(10, bool)
  vf[cols_f], vr[cols_r] = True, True
  ufs = np.full((2, 200, 8), 3.0, np.float32)
  urs = np.full((2, 200, 10), -2.0, np.float32)
  for i, (a, b) in enumerate(pairs):
    ufs[i][:, cols_f], urs[i][:, cols_r] = a, b
  vfs, vrs = np.stack([vf, vf]), np.stack([vr, vr])
  pa = jax.vmap(S.principal_angles)(ufs, vfs, urs, vrs)
  cs = jax.vmap(S.cs_decomposition)(ufs, vfs, urs, vrs)
  for i in range(2):
    for res in (pa, cs):
      np.testing.assert_array_equal(res.valid[i], np.arange(8) < 5)
      angles = np.asarray(res.angles[i])
      _assert_angles_match(angles[:5], refs[i])
      _assert_sorted(angles)
      np.testing.assert_allclose(angles[5:], np.pi / 2)
      np.testing.assert_allclose(res.cos[i, 5:], 0.0)
      np.testing.assert_allclose(res.sin[i, 5:], 1.0)
    # Same as unbatched on the unpadded bases.
    one = S.cs_decomposition(*[x for pair in zip(pairs[i], [np.ones(5, bool), np.ones(7, bool)])
                               for x in pair])
    np.testing.assert_allclose(cs.angles[i, :5], one.angles, rtol=1e-4, atol=1e-7)
    qm = np.asarray(cs.q[i])
    np.testing.assert_array_equal(qm[:, 5:], 0.0)  # invalid principal directions
    np.testing.assert_array_equal(cs.q_valid[i], [False, False, True, True, True, False, False,
                                                  False])
    y = np.asarray(cs.y[i])
    np.testing.assert_array_equal(y[~vf][:, :5], 0.0)  # block structure
    np.testing.assert_allclose(y.T @ y, np.eye(8), atol=1e-5)
    lhs = (ufs[i] * vf) @ y
    rhs = (urs[i] * vr) @ np.asarray(cs.z[i]) @ np.diag(cs.cos[i]) + qm @ np.diag(
        cs.sin[i] * cs.q_valid[i])
    np.testing.assert_allclose(lhs[:, 2:5], rhs[:, 2:5], atol=1e-6)
