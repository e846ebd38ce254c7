"""Data splits and federated partitions over image indices (pure numpy, seeded).

All functions work on image indices, so every caption of an image goes wherever its image goes.
`labels` arguments are per-image labels indexed by image index (`labels[i]` is image `i`'s label,
e.g. `dataset.image_meta["group"]`), so the same array serves every subset of indices.
Every partition is a list of sorted int64 arrays that are disjoint and whose union is the input.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# `data.split` kinds (`builders.split_dataset`): 'random' fractions, the emoji data's fixed
# 'skin_tone' public split, a Karpathy caption file's own 'karpathy' test split.
SPLIT_KINDS = ("random", "skin_tone", "karpathy")

SCHEMES = ("iid", "by_label", "dirichlet")


class Splits(NamedTuple):
  """Disjoint sorted int64 image indices covering the dataset."""
  public: np.ndarray   # central pretraining of the backbone
  test: np.ndarray     # held out
  clients: np.ndarray  # to be partitioned among clients


def _as_indices(indices: Sequence[int] | np.ndarray) -> np.ndarray:
  idx = np.asarray(indices, dtype=np.int64).reshape(-1)
  if np.unique(idx).size != idx.size:
    raise ValueError("indices contain duplicates")
  return idx


def _labels_for(indices: np.ndarray, labels: Sequence | np.ndarray | None) -> np.ndarray:
  if labels is None:
    raise ValueError("this partition scheme needs labels= (per-image labels indexed by image)")
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if indices.size and (indices.min() < 0 or indices.max() >= labels.size):
    raise ValueError(f"labels has {labels.size} entries but indices reach {indices.max()}; labels "
                     "must be indexed by image index")
  return labels[indices]


def label_groups(labels: np.ndarray) -> list[np.ndarray]:
  """Positions of each distinct label, in sorted label order. A NaN label is one group of its
  own: `labels == nan` is never true, so comparing values would silently drop those items."""
  _, inverse = np.unique(labels, return_inverse=True)
  inverse = np.asarray(inverse).reshape(-1)
  return [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1 if inverse.size else 0)]


def _check_num_clients(num_clients: int, num_items: int) -> None:
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  if num_clients > num_items:
    raise ValueError(f"num_clients={num_clients} is larger than the data allows: only {num_items} "
                     "images to partition (each client needs at least one)")


def _largest_remainder(sizes: np.ndarray, fraction: float,
                       capacity: np.ndarray | None = None) -> np.ndarray:
  """Per-group counts `~ fraction * sizes`, at most `capacity` (default `sizes`), that sum to
  `round(fraction * sizes.sum())` where the capacity allows: the rounding's extra items go to
  the largest remainders among the groups with room, then to any group with room (a group that
  an earlier split filled passes its share on instead of dropping it)."""
  capacity = sizes if capacity is None else np.asarray(capacity, np.int64)
  exact = sizes * fraction
  counts = np.minimum(np.floor(exact).astype(np.int64), capacity)
  short = int(round(float(sizes.sum()) * fraction)) - int(counts.sum())
  for g in np.argsort(-(exact - np.floor(exact)), kind="stable"):
    if short <= 0:
      break
    if counts[g] < capacity[g]:
      counts[g] += 1
      short -= 1
  while short > 0 and np.any(counts < capacity):
    g = int(np.argmax(capacity - counts))
    counts[g] += 1
    short -= 1
  return counts


def split_public_test_clients(num_images: int, public_fraction: float, test_fraction: float,
                              seed: int, labels: Sequence | np.ndarray | None = None) -> Splits:
  """Randomly splits `range(num_images)` into public / test / client images.

  Args:
    num_images: dataset size.
    public_fraction: share for central backbone pretraining, in [0, 1].
    test_fraction: held-out share, in [0, 1]; `public_fraction + test_fraction <= 1`.
    seed: RNG seed.
    labels: optional `[num_images]` labels; if given the split is stratified so each split has a
      proportional share of each label (largest-remainder rounding, so split sizes still match the
      fractions overall).

  Returns:
    `Splits(public, test, clients)`: disjoint sorted int64 arrays covering all images.
  """
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}")
  for name, f in (("public_fraction", public_fraction), ("test_fraction", test_fraction)):
    if not 0.0 <= f <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {f}")
  if public_fraction + test_fraction > 1.0 + 1e-9:
    raise ValueError(f"public_fraction + test_fraction = {public_fraction + test_fraction} > 1")
  rng = np.random.default_rng(seed)
  if labels is None:
    groups = [np.arange(num_images, dtype=np.int64)]
  else:
    labels = np.asarray(labels)
    if labels.shape != (num_images,):
      raise ValueError(f"labels must have shape ({num_images},), got {labels.shape}")
    groups = label_groups(labels)
  sizes = np.asarray([g.size for g in groups], np.int64)
  n_public = _largest_remainder(sizes, public_fraction)
  n_test = _largest_remainder(sizes, test_fraction, capacity=sizes - n_public)
  public, test, clients = [], [], []
  for g, p, t in zip(groups, n_public, n_test):
    g = rng.permutation(g)
    public.append(g[:p])
    test.append(g[p:p + t])
    clients.append(g[p + t:])
  # `np.concatenate` needs one part at least: no labels means no groups.
  cat = lambda parts: np.sort(np.concatenate(parts or [np.zeros(0, np.int64)])).astype(np.int64)
  return Splits(cat(public), cat(test), cat(clients))


def split_fixed_public(public_mask: Sequence[bool] | np.ndarray, test_fraction: float, seed: int,
                       labels: Sequence | np.ndarray | None = None) -> Splits:
  """Public = the images where `public_mask [num_images]` is True; the others are split at random
  into test (`test_fraction` of them) and client images, stratified by `labels` if given.

  Used when the pretraining corpus is a fixed kind of image rather than a random share (e.g. the
  emoji without a skin-tone modifier, with the toned variants left to the clients).
  """
  public_mask = np.asarray(public_mask, bool)
  if public_mask.ndim != 1:
    raise ValueError(f"public_mask must be 1-D, got shape {public_mask.shape}")
  rest = np.flatnonzero(~public_mask)
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != public_mask.shape:
      raise ValueError(f"labels must have shape {public_mask.shape}, got {labels.shape}")
    labels = labels[rest]
  inner = split_public_test_clients(rest.size, 0.0, test_fraction, seed, labels)
  return Splits(np.flatnonzero(public_mask).astype(np.int64), rest[inner.test].astype(np.int64),
                rest[inner.clients].astype(np.int64))


def partition_iid(indices: Sequence[int] | np.ndarray, num_clients: int,
                  seed: int) -> list[np.ndarray]:
  """Uniformly random partition into `num_clients` near-equal parts (sizes differ by <= 1)."""
  idx = _as_indices(indices)
  _check_num_clients(num_clients, idx.size)
  rng = np.random.default_rng(seed)
  return [np.sort(p) for p in np.array_split(rng.permutation(idx), num_clients)]


def partition_by_label(indices: Sequence[int] | np.ndarray, labels: Sequence | np.ndarray,
                       num_clients: int, seed: int) -> list[np.ndarray]:
  """Natural non-IID partition: each label's images go to a single client.

  * `num_clients == num_labels`: each client holds exactly one label.
  * `num_clients < num_labels`: whole labels are assigned greedily, largest first, to the currently
    smallest client (balances sizes; every client gets at least one label).
  * `num_clients > num_labels`: the largest label chunk is repeatedly halved (random halves) until
    there are `num_clients` chunks, so every client still holds a single label but big labels are
    shared by several clients.

  The seed breaks ties between equal-size labels, shuffles the halving and permutes client order.
  """
  idx = _as_indices(indices)
  _check_num_clients(num_clients, idx.size)
  lab = _labels_for(idx, labels)
  rng = np.random.default_rng(seed)
  chunks = [rng.permutation(idx[g]) for g in label_groups(lab)]
  # Random order, then a stable sort by size: ties are broken by the seed.
  order = rng.permutation(len(chunks))
  chunks = [chunks[i] for i in order]
  chunks.sort(key=lambda c: -c.size)
  if num_clients >= len(chunks):
    while len(chunks) < num_clients:
      big = chunks.pop(0)
      half = (big.size + 1) // 2
      chunks += [big[:half], big[half:]]
      chunks.sort(key=lambda c: -c.size)  # Stable: keeps earlier chunks first among equals.
    parts = chunks
  else:
    loads = np.zeros(num_clients, np.int64)
    members: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in chunks:
      k = int(np.argmin(loads))
      members[k].append(c)
      loads[k] += c.size
    parts = [np.concatenate(m) for m in members]
  perm = rng.permutation(num_clients)
  return [np.sort(parts[i]).astype(np.int64) for i in perm]


def partition_dirichlet(indices: Sequence[int] | np.ndarray, labels: Sequence | np.ndarray,
                        num_clients: int, alpha: float, seed: int, min_size: int = 1,
                        max_tries: int = 1000) -> list[np.ndarray]:
  """Dirichlet label-skew partition (Hsu et al. 2019; NIID-Bench).

  For each label, client proportions `p ~ Dir(alpha * 1_K)` are drawn and that label's (shuffled)
  images are cut accordingly. Small `alpha` gives clients few labels; large `alpha` approaches IID.
  The whole draw is repeated (same RNG stream) until every client has at least `min_size` images.

  Raises:
    ValueError: `alpha <= 0`, `num_clients > len(indices)`, `num_clients * min_size > len(indices)`,
      or no draw within `max_tries` satisfies `min_size`.
  """
  idx = _as_indices(indices)
  _check_num_clients(num_clients, idx.size)
  if alpha is None or not alpha > 0:
    raise ValueError(f"alpha must be > 0 for the dirichlet scheme, got {alpha}")
  if min_size < 0 or num_clients * min_size > idx.size:
    raise ValueError(f"cannot give {num_clients} clients at least min_size={min_size} images each "
                     f"from {idx.size} images")
  lab = _labels_for(idx, labels)
  rng = np.random.default_rng(seed)
  by_label = [idx[g] for g in label_groups(lab)]
  for _ in range(max_tries):
    members: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for items in by_label:
      items = rng.permutation(items)
      p = rng.dirichlet(np.full(num_clients, float(alpha)))
      cuts = (np.cumsum(p)[:-1] * items.size).astype(np.int64)
      for k, part in enumerate(np.split(items, cuts)):
        members[k].append(part)
    parts = [np.sort(np.concatenate(m)).astype(np.int64) for m in members]
    if min(p.size for p in parts) >= min_size:
      return parts
  raise ValueError(f"dirichlet partition: no draw in {max_tries} tries gave every one of "
                   f"{num_clients} clients >= {min_size} images (alpha={alpha}, "
                   f"{idx.size} images); raise alpha, lower min_size or use fewer clients")


def partition(indices: Sequence[int] | np.ndarray, scheme: str, num_clients: int, seed: int,
              labels: Sequence | np.ndarray | None = None, alpha: float | None = None,
              min_size: int = 1) -> list[np.ndarray]:
  """Dispatches to `partition_iid`, `partition_by_label` or `partition_dirichlet`.

  Args:
    indices: image indices to distribute.
    scheme: one of `SCHEMES`: "iid", "by_label", "dirichlet".
    num_clients: number of clients `K` (<= number of images).
    seed: RNG seed.
    labels: per-image labels indexed by image index (needed by "by_label" and "dirichlet").
    alpha: Dirichlet concentration (needed by "dirichlet").
    min_size: minimum images per client for "dirichlet".

  Returns:
    `K` sorted, disjoint int64 arrays whose union is `indices`.
  """
  if scheme == "iid":
    return partition_iid(indices, num_clients, seed)
  if scheme == "by_label":
    return partition_by_label(indices, labels, num_clients, seed)
  if scheme == "dirichlet":
    if alpha is None:
      raise ValueError("scheme 'dirichlet' needs alpha=")
    return partition_dirichlet(indices, labels, num_clients, alpha, seed, min_size=min_size)
  raise ValueError(f"unknown partition scheme {scheme!r}; valid schemes are {list(SCHEMES)}")
