"""GSD: Gradient Subspace Decomposition (EASE's unique-subspace anchor).

Per adapted module, the forget side's stacked updates `[m, d]` and each retained client's stacked
updates `[k, m, d]` are turned into orthonormal bases (energy-truncated thin SVD), the retained
bases are merged into a retain support U_R, and the principal angles / cosine-sine decomposition
between the forget basis U_f and U_R give the forget-exclusive ("unique") subspace U_u: the
components of U_f orthogonal to U_R along principal directions whose angle exceeds a threshold.

Conventions:
  * Fixed (padded) shapes everywhere: a basis is `U [d, r]` with a mask `valid [r]`; invalid
    columns are exactly zero. Everything is jittable and vmappable (over clients, modules).
  * Inputs are wrapped in `stop_gradient` (the subspace is a constant for the optimiser); the
    projectors pass gradients through the projected vector only.
  * Matmuls use `Precision.HIGHEST` (TF32 on GPUs would wreck float32 orthonormality) and the
    math runs in at least float32. No `full_matrices=True` SVD of a tall matrix is ever formed.
  * Principal angles below pi/4 come from their sines (singular values of the residual
    (I - U_R U_R^T) U_f, via a QR of that `[d, p]` matrix), those above from the cosines
    (Knyazev & Argentati 2002), so float32 bases give angles accurate relative to themselves
    down to ~1e-5 rad (arccos alone resolves only ~3e-4 rad near 0).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST

# Relative tolerance on singular values (sigma_i <= rtol * sigma_max counts as zero). The Gram
# route squares the condition number, so it only resolves about half of float32's digits.
DEFAULT_RTOL = {"gram": 1e-3, "qr": 1e-5, "svd": 1e-5}
# sin(theta) at or below this is "shared". Sines are accurate to ~1e-7 absolute (or better) with
# float32 bases, but the residual's direction only to ~1e-7 / sin, so such a direction has no Q.
DEFAULT_SIN_TOL = 1e-4


# At every θ*, a principal angle this close under θ* counts as θ* (float32 rounding).
ANGLE_TOLERANCE_RAD = 1e-6


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HIGHEST)


def _as_float(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mask_cols(u: jax.Array, valid: jax.Array) -> jax.Array:
  """Zeroes the columns of `u [..., d, r]` where `valid [..., r]` is False."""
  return jnp.where(valid[..., None, :], u, jnp.zeros((), u.dtype))


def _fit_cols(x: jax.Array, n: int) -> jax.Array:
  """Truncates or zero-pads the last axis of `x` to length `n`."""
  k = x.shape[-1]
  if k >= n:
    return x[..., :n]
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - k)])


def _energy_mask(sigma: jax.Array, energy: float | jax.Array, max_rank: int,
                 rtol: float, total: jax.Array | None = None) -> jax.Array:
  """Columns kept by energy truncation, rank cap and zero tolerance.

  Args:
    sigma: `[k]` singular values in descending order.
    energy: fraction eta in (0, 1]; keeps the smallest r with sum_{i<=r} s_i^2 >= eta sum s_i^2.
    max_rank: cap on r.
    rtol: singular values <= rtol * sigma_max are treated as zero.
    total: sum of all squared singular values when `sigma` holds only the leading ones.

  Returns:
    `[k]` bool, a prefix mask.
  """
  sq = jnp.square(sigma)
  total = jnp.sum(sq) if total is None else total
  before = jnp.cumsum(sq) - sq  # energy strictly before column i
  keep = before < energy * total
  keep &= sigma > rtol * sigma[0]
  keep &= jnp.arange(sigma.shape[0]) < max_rank
  # Prefix, even where re-measured singular values at rounding level are not quite sorted.
  return jnp.cumprod(keep.astype(jnp.int32)) > 0


def _cholesky_orthonormalize(u: jax.Array, valid: jax.Array) -> jax.Array:
  """Re-orthonormalises the valid columns of a nearly orthonormal `u [d, k]` (CholeskyQR).

  Keeps the span of every leading set of valid columns (the factor is triangular) and leaves
  invalid columns at zero: their rows/cols of the Gram matrix are replaced by the identity, which
  decouples them in the Cholesky factor. Requires the valid columns to be well conditioned
  (callers guarantee a Gram matrix close to the identity).
  """
  k = u.shape[1]
  pair = valid[:, None] & valid[None, :]
  gram = jnp.where(pair, _mm(u.T, u), jnp.eye(k, dtype=u.dtype))
  chol = jnp.linalg.cholesky(gram)
  # u_new = u chol^{-T}. Invert the small [k, k] factor, then one tall matmul: a triangular solve
  # with the wide [k, d] right-hand side is ~100x slower on XLA CPU under vmap, and the factor is
  # well conditioned here (Gram close to the identity), so the explicit inverse loses nothing.
  chol_inv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(k, dtype=u.dtype), lower=True)
  u_new = _mm(u, chol_inv.T)
  return _mask_cols(u_new, valid)


@functools.partial(jax.jit, static_argnames=("max_rank", "method", "rtol"))
def orthonormal_basis(g: jax.Array,
                      energy: float | jax.Array,
                      max_rank: int,
                      method: str = "gram",
                      rtol: float | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Energy-truncated thin orthonormal basis of span(g).

  Rank r is the smallest with sum_{i<=r} s_i^2 >= energy * sum_i s_i^2, capped at `max_rank`;
  directions with s_i <= rtol * s_max are dropped too. Zero columns of `g` (padding for missing
  history) only add zero singular values, so they do not change the result.

  Methods:
    "gram": eigh of the small `[m, m]` Gram matrix, U = G V S^-1, singular values re-measured as
      the column norms of G V (accurate to eps * s_max, unlike sqrt of the eigenvalues), then a
      CholeskyQR pass restores float32 orthonormality. Only matmuls on the tall matrix.
    "qr": reduced QR of G, then SVD of the small R.
    "svd": `jnp.linalg.svd(full_matrices=False)`.

  Args:
    g: `[d, m]` matrix whose columns span the subspace (e.g. stacked flattened updates).
    energy: energy fraction eta in (0, 1].
    max_rank: static number of output columns (and rank cap).
    method: "gram", "qr" or "svd" (static).
    rtol: relative zero tolerance on singular values; defaults to `DEFAULT_RTOL[method]`.

  Returns:
    `(u [d, max_rank], valid [max_rank] bool, sigma [max_rank])`: orthonormal valid columns in
    order of decreasing singular value (invalid columns zero, valid is a prefix) and all singular
    values (zero-padded beyond min(d, m)), including the truncated ones, for diagnostics.
  """
  if method not in DEFAULT_RTOL:
    raise ValueError(f"unknown method {method!r}; expected one of {sorted(DEFAULT_RTOL)}")
  rtol = DEFAULT_RTOL[method] if rtol is None else rtol
  g = jax.lax.stop_gradient(_as_float(g))
  d, m = g.shape
  k = min(d, m)
  # Scale to max |g| = 1 so the Gram matrix of tiny gradients neither underflows nor overflows.
  # (max, -min rather than max |g|: XLA CPU reduces the former ~7x faster on tall matrices.)
  scale = jnp.maximum(jnp.max(g), -jnp.min(g))
  scale = jnp.where(scale > 0, scale, jnp.ones((), g.dtype))
  gs = g * (1.0 / scale)

  if method == "gram":
    gram = _mm(gs.T, gs)
    _, v = jnp.linalg.eigh(gram)
    # Eigenvalues come ascending: reverse the small V (a static flip, no gather on the tall
    # matrix) and keep only the columns that can be returned before the one tall matmul.
    top = min(k, max_rank)
    w = _mm(gs, v[:, ::-1][:, :top])  # [d, top], columns G v_i = s_i u_i
    sigma = jnp.sqrt(jnp.sum(jnp.square(w), axis=0))
    # Total energy sum_i s_i^2 = ||G||_F^2 = trace of the Gram matrix, including dropped columns.
    keep = _energy_mask(sigma, energy, max_rank, rtol, total=jnp.trace(gram))
    u = w / jnp.where(keep, sigma, 1.0)[None, :]
    u = _fit_cols(_mask_cols(u, keep), max_rank)
    keep = _fit_cols(keep, max_rank)
    u = _cholesky_orthonormalize(u, keep)
  else:
    if method == "qr":
      q, r = jnp.linalg.qr(gs, mode="reduced")  # q [d, k], r [k, m]
      ur, sigma, _ = jnp.linalg.svd(r, full_matrices=False)  # ur [k, k]
      u = _mm(q, ur)
    else:
      u, sigma, _ = jnp.linalg.svd(gs, full_matrices=False)  # u [d, k]
    keep = _energy_mask(sigma, energy, max_rank, rtol)
    u = _fit_cols(_mask_cols(u, keep), max_rank)
    keep = _fit_cols(keep, max_rank)
  return u, keep, _fit_cols(sigma * scale, max_rank)


@functools.partial(jax.jit, static_argnames=("max_rank", "method", "rtol"))
def union_basis(bases: jax.Array,
                valid: jax.Array,
                energy: float | jax.Array,
                max_rank: int,
                method: str = "gram",
                rtol: float | None = None) -> tuple[jax.Array, jax.Array]:
  """Orthonormal, energy-truncated basis of the union of several bases.

  Args:
    bases: `[n, d, r]` bases (e.g. one per retained client).
    valid: `[n, r]` column masks.
    energy: energy fraction for the union (directions shared by many bases carry more energy).
    max_rank: static number of output columns.
    method: see `orthonormal_basis`.
    rtol: see `orthonormal_basis`.

  Returns:
    `(u [d, max_rank], valid [max_rank])`.
  """
  n, d, r = bases.shape
  cols = _mask_cols(_as_float(bases), valid)
  g = jnp.transpose(cols, (1, 0, 2)).reshape(d, n * r)
  u, keep, _ = orthonormal_basis(g, energy, max_rank, method, rtol)
  return u, keep


class PrincipalAngles(NamedTuple):
  """Principal angles between span(U_f) and span(U_r): U_f^T U_r = Y diag(cos) Z^T.

  Attributes:
    cos: `[p]` cosines, descending (angles ascending); 0 for invalid entries.
    y: `[p, p]` orthogonal; valid columns are principal directions in U_f coordinates (from the
      SVD of U_f^T U_r, so directions whose cosines agree to float rounding, e.g. all angles below
      ~2e-4 rad in float32, come in an arbitrary rotation; `CSDecomposition.y` resolves them).
    z: `[q, p]` principal directions in U_r coordinates (zero where cos ~ 0 or invalid).
    valid: `[p]` prefix mask, one entry per valid forget column.
    sin: `[p]` sines, ascending: singular values of the residual (I - U_r U_r^T) U_f for the
      angles below pi/4 (accurate relative to the sine itself), sqrt(1 - cos^2) for the others;
      1 for invalid entries.
  """
  cos: jax.Array
  y: jax.Array
  z: jax.Array
  valid: jax.Array
  sin: jax.Array

  @property
  def angles(self) -> jax.Array:
    """`[p]` angles arctan2(sin, cos) in radians, ascending; pi/2 for invalid entries."""
    return _angles(self.sin, self.cos, self.valid)


def _angles(sin: jax.Array, cos: jax.Array, valid: jax.Array) -> jax.Array:
  # sin ascending and cos descending, so arctan2 is ascending too. Below pi/4 the sine fixes the
  # angle (the cosine is 1 to rounding there), above it the cosine: Knyazev & Argentati's choice.
  return jnp.where(valid, jnp.arctan2(sin, cos), math.pi / 2)


class _Principal(NamedTuple):
  cos: jax.Array
  sin: jax.Array
  y: jax.Array
  z: jax.Array
  q: jax.Array | None
  valid: jax.Array


def _principal(u_f: jax.Array, valid_f: jax.Array, u_r: jax.Array, valid_r: jax.Array,
               vectors: bool) -> _Principal:
  """Cosines, sines and (with `vectors`) the CS principal vectors; see `cs_decomposition`.

  1. Cosines: SVD of the small `[p, q]` matrix U_f^T U_r = Y_c diag(cos) Z_c^T. Invalid forget
     columns must not mix with valid null directions in Y_c, so the SVD is taken of
     [U_f^T U_r, 2 diag(~valid_f)]: invalid rows get singular value 2 (> any cosine, decoupled
     from the valid rows) and are then rolled to the end.
  2. Residual R = (I - U_r U_r^T) U_f Y_c, U_r projected out twice ("twice is enough") so that it
     is accurate to rounding relative to ||U_f Y_c|| = 1 and R^T U_r stays at rounding level.
  3. Householder QR of R, R = Q_r T, with the valid columns in reverse order (largest angle
     first: a static column pivoting, as the angles ascend). The angles above pi/4 keep the
     cosine SVD's vectors; their sine is sqrt(1 - cos^2) and their Q column is their Q_r column
     (their residual columns have norms >= 0.7 and are orthogonal up to rounding). The angles
     below pi/4 (cos^2 > 1/2, a prefix) take sines and vectors from the SVD of T's block on
     their rows and columns, T_s = U diag(sin) V^T (the other columns are masked out with the
     same augmentation, [T_s; 2 diag(~small)]): Q = Q_r U there, Y = Y_c G and Z = Z_c G with
     G = blockdiag(V, I). T_s is their residual with the large angles' directions removed
     (exactly orthogonal to them in exact arithmetic; in float32 this drops the leak of those
     directions through the cosine SVD's rounding), so Q is orthonormal up to rounding.
  """
  u_f = _mask_cols(jax.lax.stop_gradient(_as_float(u_f)), valid_f)
  u_r = _mask_cols(jax.lax.stop_gradient(_as_float(u_r)), valid_r)
  p, q = u_f.shape[1], u_r.shape[1]
  dtype = u_f.dtype

  # 1. Cosines.
  m = _mm(u_f.T, u_r)  # [p, q]
  invalid = ~valid_f
  aug = jnp.concatenate([m, jnp.diag(2.0 * invalid.astype(dtype))], axis=1)
  y, s, vt = jnp.linalg.svd(aug, full_matrices=False)  # y [p, p], s [p], vt [p, q + p]
  n_inv = jnp.sum(invalid)
  perm = (jnp.arange(p) + n_inv) % p
  y, s, vt = y[:, perm], s[perm], vt[perm]
  valid = jnp.arange(p) < p - n_inv
  cos = jnp.where(valid, jnp.clip(s, 0.0, 1.0), 0.0)
  # Exact block structure: valid directions live on valid rows, the rest on invalid rows.
  y = jnp.where(valid_f[:, None] == valid[None, :], y, 0.0)
  # For s > 0 the right singular vector is [M^T y / s; 0]; for s ~ 0 it is arbitrary (and
  # irrelevant, as it is multiplied by cos ~ 0).
  z = jnp.where((valid & (cos > 1e-6))[None, :], vt[:, :q].T, 0.0)

  # 2. Residual of the principal vectors, its columns in the order of the QR below: the valid
  # ones reversed (largest angle first: a static column pivoting, as the angles ascend), the
  # invalid ones last. Reversing a prefix is its own inverse.
  idx = jnp.arange(p)
  n_valid = p - n_inv
  rev = jnp.where(idx < n_valid, n_valid - 1 - idx, idx)
  x = _mm(u_f, y[:, rev])  # [d, p]
  res = x - _mm(u_r, _mm(u_r.T, x))
  res = res - _mm(u_r, _mm(u_r.T, res))

  # 3. res = Q_r T; the sines below pi/4 from the SVD of T's block on their rows and columns.
  small = valid & (jnp.square(cos) > 0.5)  # a prefix of `valid`
  large = valid & ~small
  small_p = small[rev]
  if vectors:
    q_r, t = jnp.linalg.qr(res, mode="reduced")  # q_r [d, k], t [k, p], k = min(d, p)
  else:
    t = jnp.linalg.qr(res, mode="r")
  k = t.shape[0]
  t_s = jnp.where(small_p[:k, None] & small_p[None, :], t, 0.0)
  t_aug = jnp.concatenate([t_s, jnp.diag(2.0 * (~small_p).astype(dtype))], axis=0)
  if vectors:
    ut, s, vt = jnp.linalg.svd(t_aug, full_matrices=False)  # ut [k + p, p], vt [p, p]
  else:
    s = jnp.linalg.svd(t_aug, compute_uv=False)
  # Descending [2, ..., 2, small sines]: reversed, the small sines come first and ascending, in
  # the positions of the `small` prefix. Clipped at sin(pi/4) so that the ascending order
  # survives rounding at the switch to sqrt(1 - cos^2) (both are accurate there).
  s = s[::-1]
  large_sin = jnp.sqrt(jnp.maximum(1.0 - jnp.square(cos), 0.0))
  sin = jnp.where(small, jnp.minimum(s, math.sqrt(0.5)), jnp.where(valid, large_sin, 1.0))
  if not vectors:
    return _Principal(cos=cos, sin=sin, y=y, z=z, q=None, valid=valid)

  # Right singular vectors, columns ascending, rows back in the original column order.
  v = vt[::-1].T[rev]
  g = jnp.where(small[None, :], jnp.where(small[:, None], v, 0.0), jnp.eye(p, dtype=dtype))
  y = _mm(y, g)
  z = _mm(z, g)
  # Q = Q_r W: the small angles' left singular vectors, the large angles' Q_r columns (with the
  # sign of T's diagonal, so that res = Q diag(sin) there up to rounding).
  sign = jnp.where(jnp.diagonal(t) < 0, -1.0, 1.0).astype(dtype)  # [k]
  w_large = (jnp.eye(k, p, dtype=dtype) * _fit_cols(sign, p)[None, :])[:, rev]
  w = jnp.where(small[None, :], ut[:k, ::-1], jnp.where(large[None, :], w_large, 0.0))
  qm = _mm(q_r, w)
  return _Principal(cos=cos, sin=sin, y=y, z=z, q=qm, valid=valid)


@jax.jit
def principal_angles(u_f: jax.Array, valid_f: jax.Array, u_r: jax.Array,
                     valid_r: jax.Array) -> PrincipalAngles:
  """Principal angles: cosines from the SVD of U_f^T U_r, sines from the residual's.

  Small angles (below pi/4) come from the sines, the singular values of the twice-projected
  residual (I - U_r U_r^T) U_f, large ones from the cosines (Knyazev & Argentati 2002), so that
  float32 inputs give angles accurate relative to themselves down to ~1e-5 rad (arccos of the
  cosines alone resolves only ~3e-4 rad near 0). See `cs_decomposition` for the principal
  vectors of the small angles.

  Args:
    u_f: `[d, p]` forget basis (orthonormal valid columns).
    valid_f: `[p]` mask.
    u_r: `[d, q]` retain basis.
    valid_r: `[q]` mask.

  Returns:
    `PrincipalAngles`; `cos[i]`, `sin[i]` for i < #valid_f, angles ascending.
  """
  pr = _principal(u_f, valid_f, u_r, valid_r, vectors=False)
  return PrincipalAngles(cos=pr.cos, y=pr.y, z=pr.z, valid=pr.valid, sin=pr.sin)


class CSDecomposition(NamedTuple):
  """Cosine-sine decomposition U_f Y = U_r Z diag(cos) + Q diag(sin), Q^T U_r = 0.

  Attributes:
    cos: `[p]` cosines of the principal angles (descending); 0 for invalid entries.
    sin: `[p]` sines (ascending), see `PrincipalAngles.sin`; 1 for invalid entries.
    y: `[p, p]` orthogonal; principal directions in U_f coordinates. Below pi/4 they are the
      residual's right singular vectors (resolved by the sines), above it the cosine SVD's.
    z: `[q, p]` principal directions in U_r coordinates (zero where cos ~ 0 or invalid).
    q: `[d, p]` orthonormal columns orthogonal to U_r (the residual's left singular vectors
      below pi/4); zero where `q_valid` is False.
    valid: `[p]` valid principal directions (prefix).
    q_valid: `[p]` valid and sin > sin_tol (a direction with a component outside U_r).
  """
  cos: jax.Array
  sin: jax.Array
  y: jax.Array
  z: jax.Array
  q: jax.Array
  valid: jax.Array
  q_valid: jax.Array

  @property
  def angles(self) -> jax.Array:
    """`[p]` angles arctan2(sin, cos), ascending; pi/2 for invalid entries."""
    return _angles(self.sin, self.cos, self.valid)


@functools.partial(jax.jit, static_argnames=("sin_tol",))
def cs_decomposition(u_f: jax.Array,
                     valid_f: jax.Array,
                     u_r: jax.Array,
                     valid_r: jax.Array,
                     sin_tol: float = DEFAULT_SIN_TOL) -> CSDecomposition:
  """Cosine-sine decomposition of U_f relative to U_r, accurate for small angles.

  Q diag(sin) = (I - U_r U_r^T) U_f Y, with U_r projected out twice ("twice is enough") so that
  Q^T U_r stays at rounding level even for small angles. Below pi/4, sin, Q and Y come from the
  SVD of that residual (QR of the `[d, p]` residual, then SVD of the small factor), so the sines
  are accurate relative to themselves and Q is orthonormal; above pi/4, Y and the cosines come
  from the SVD of U_f^T U_r (Knyazev & Argentati 2002). Columns with sin <= sin_tol are zeroed
  and marked (shared directions: with float32 inputs the residual there is mostly rounding, and
  its direction is known only to ~1e-7 / sin; the reconstruction is exact only up to sin_tol).

  Args:
    u_f: `[d, p]` forget basis.
    valid_f: `[p]` mask.
    u_r: `[d, q]` retain basis.
    valid_r: `[q]` mask.
    sin_tol: sines at or below this count as zero.

  Returns:
    `CSDecomposition`.
  """
  pr = _principal(u_f, valid_f, u_r, valid_r, vectors=True)
  q_valid = pr.valid & (pr.sin > sin_tol)
  q = jnp.where(q_valid[None, :], pr.q, 0.0)
  return CSDecomposition(cos=pr.cos, sin=pr.sin, y=pr.y, z=pr.z, q=q, valid=pr.valid,
                         q_valid=q_valid)


@functools.partial(jax.jit, static_argnames=("sin_tol",))
def exclusive_basis(u_f: jax.Array,
                    valid_f: jax.Array,
                    u_r: jax.Array,
                    valid_r: jax.Array,
                    angle_threshold_rad: float | jax.Array,
                    sin_tol: float = DEFAULT_SIN_TOL) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Forget-exclusive subspace U_u: the CS columns Q whose principal angle >= threshold.

  Shared directions (small angles) are left out, so projecting onto U_u leaves them untouched.
  If U_r has no valid column, U_u = U_f (every forget direction is exclusive).

  Args:
    u_f: `[d, p]` forget basis.
    valid_f: `[p]` mask.
    u_r: `[d, q]` retain basis.
    valid_r: `[q]` mask.
    angle_threshold_rad: minimum principal angle theta* of an exclusive direction.
    sin_tol: see `cs_decomposition`.

  Returns:
    `(u_u [d, p], valid_u [p], angles [p])`: orthonormal exclusive columns (column i comes from
    principal direction i; valid_u need not be a prefix) and the principal angles (ascending,
    pi/2 for invalid entries).
  """
  cs = cs_decomposition(u_f, valid_f, u_r, valid_r, sin_tol)
  angles = cs.angles
  # float32 angles sit up to ~1e-7 rad off: an exactly orthogonal direction can come out just
  # under float32 pi/2, and θ* = 90° would then keep some orthogonal directions and drop others.
  sel = cs.q_valid & (angles >= angle_threshold_rad - ANGLE_TOLERANCE_RAD)
  # Q is orthonormal up to float32 rounding (~1e-6); one CholeskyQR pass of the selected
  # columns brings it to ~1e-7 and zeroes the others.
  u_u = _cholesky_orthonormalize(_mask_cols(cs.q, sel), sel)
  has_retain = jnp.any(valid_r)
  u_f = _mask_cols(jax.lax.stop_gradient(_as_float(u_f)), valid_f)
  u_u = jnp.where(has_retain, u_u, u_f)
  valid_u = jnp.where(has_retain, sel, valid_f)
  return u_u, valid_u, angles


def project(u: jax.Array, valid: jax.Array, x: jax.Array) -> jax.Array:
  """P x = U U^T x over the valid columns, without forming the `[d, d]` projector.

  The basis is a constant (stop_gradient); gradients flow through `x`.

  Args:
    u: `[d, r]` orthonormal basis.
    valid: `[r]` mask.
    x: `[..., d]` vectors.

  Returns:
    `[..., d]` projections, in `x`'s dtype.
  """
  u = _mask_cols(jax.lax.stop_gradient(_as_float(u)), valid)
  xf = _as_float(x)
  return _mm(_mm(xf, u), u.T).astype(jnp.result_type(x))


def project_out(u: jax.Array, valid: jax.Array, x: jax.Array) -> jax.Array:
  """(I - P) x, the component of `x [..., d]` orthogonal to the valid columns of `u [d, r]`."""
  xf = _as_float(x)
  return (xf - project(u, valid, xf)).astype(jnp.result_type(x))


# Batched over a leading modules axis: u [n, d, r], valid [n, r], x [n, d].
batched_project = jax.vmap(project)
batched_project_out = jax.vmap(project_out)


class Projector(NamedTuple):
  """Orthogonal projector onto span of the valid columns of `basis`.

  Attributes:
    basis: `[d, r]` (or `[..., d, r]` with `jax.vmap` around the methods).
    valid: `[r]`.
  """
  basis: jax.Array
  valid: jax.Array

  def apply(self, x: jax.Array) -> jax.Array:
    """P x for `x [..., d]`."""
    return project(self.basis, self.valid, x)

  def complement(self, x: jax.Array) -> jax.Array:
    """(I - P) x for `x [..., d]`."""
    return project_out(self.basis, self.valid, x)

  @property
  def rank(self) -> jax.Array:
    return jnp.sum(self.valid.astype(jnp.int32), axis=-1)

  def matrix(self) -> jax.Array:
    """The dense `[d, d]` projector; for tests and small d only."""
    u = _mask_cols(_as_float(self.basis), self.valid)
    return _mm(u, jnp.swapaxes(u, -1, -2))


class GSDResult(NamedTuple):
  """Output of `gsd` for one module (leading axes added by vmap).

  Attributes:
    unique_basis: `[d, p]` forget-exclusive basis U_u (p = max_rank).
    unique_valid: `[p]` its column mask.
    angles: `[p]` principal angles between U_f and U_R, ascending (pi/2 where invalid).
    forget_rank: int32 rank of U_f.
    retain_rank: int32 rank of U_R.
    unique_rank: int32 rank of U_u.
  """
  unique_basis: jax.Array
  unique_valid: jax.Array
  angles: jax.Array
  forget_rank: jax.Array
  retain_rank: jax.Array
  unique_rank: jax.Array

  @property
  def projector(self) -> Projector:
    return Projector(self.unique_basis, self.unique_valid)


@functools.partial(jax.jit,
                   static_argnames=("max_rank", "method", "retain_max_rank", "rtol", "sin_tol"))
def gsd(forget_updates: jax.Array,
        retain_updates: jax.Array,
        energy: float | jax.Array,
        max_rank: int,
        angle_threshold_rad: float | jax.Array,
        method: str = "gram",
        retain_max_rank: int | None = None,
        retain_energy: float | jax.Array | None = None,
        rtol: float | None = None,
        sin_tol: float = DEFAULT_SIN_TOL) -> GSDResult:
  """The GSD pipeline for one module; vmap it over a leading modules axis.

  Args:
    forget_updates: `[m, d]` forget-side updates/gradients, one flattened update per row (zero
      rows are padding).
    retain_updates: `[k, m, d]` per retained client (all-zero clients are padding).
    energy: energy fraction eta for the per-client bases.
    max_rank: static rank cap (and width) of the forget and per-client bases.
    angle_threshold_rad: theta*, minimum principal angle of an exclusive direction.
    method: "gram", "qr" or "svd" (static).
    retain_max_rank: static width of the union basis U_R; default min(d, k * max_rank) so that no
      retained direction is dropped for lack of room.
    retain_energy: energy fraction for the union; defaults to `energy`.
    rtol: see `orthonormal_basis`.
    sin_tol: see `cs_decomposition`.

  Returns:
    `GSDResult`.
  """
  forget_updates = _as_float(forget_updates)
  retain_updates = _as_float(retain_updates)
  k, _, d = retain_updates.shape
  if retain_max_rank is None:
    retain_max_rank = min(d, k * max_rank)
  if retain_energy is None:
    retain_energy = energy

  u_f, valid_f, _ = orthonormal_basis(forget_updates.T, energy, max_rank, method, rtol)
  client_basis = jax.vmap(
      lambda upd: orthonormal_basis(upd.T, energy, max_rank, method, rtol)[:2])
  bases, valid_b = client_basis(retain_updates)
  u_r, valid_r = union_basis(bases, valid_b, retain_energy, retain_max_rank, method, rtol)
  u_u, valid_u, angles = exclusive_basis(u_f, valid_f, u_r, valid_r, angle_threshold_rad,
                                         sin_tol)

  def rank(v):
    return jnp.sum(v.astype(jnp.int32))

  return GSDResult(unique_basis=u_u, unique_valid=valid_u, angles=angles,
                   forget_rank=rank(valid_f), retain_rank=rank(valid_r),
                   unique_rank=rank(valid_u))
