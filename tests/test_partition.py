"""Tests for data splits and federated partitions."""
import numpy as np
import pytest

from ease_jax.data import partition as part


def _labels(n=600, num_labels=6, seed=0):
  # Unequal label sizes, like emoji groups.
  rng = np.random.default_rng(seed)
  p = np.arange(1, num_labels + 1, dtype=float)
  return rng.choice(num_labels, size=n, p=p / p.sum())


def _check_partition(parts, indices, num_clients):
  assert len(parts) == num_clients
  for p in parts:
    assert p.dtype == np.int64
    assert np.all(np.diff(p) > 0), "sorted, no duplicates"
  cat = np.concatenate(parts)
  assert cat.size == np.unique(cat).size, "disjoint"
  np.testing.assert_array_equal(np.sort(cat), np.sort(np.asarray(indices)))


def _mean_label_entropy(parts, labels):
  ents = []
  for p in parts:
    _, counts = np.unique(labels[p], return_counts=True)
    q = counts / counts.sum()
    ents.append(-(q * np.log(q)).sum())
  return float(np.mean(ents))


def test_split_public_test_clients():
  s = part.split_public_test_clients(1000, 0.2, 0.1, seed=0)
  assert (s.public.size, s.test.size, s.clients.size) == (200, 100, 700)
  _check_partition([s.public, s.test, s.clients], np.arange(1000), 3)
  again = part.split_public_test_clients(1000, 0.2, 0.1, seed=0)
  for a, b in zip(s, again):
    np.testing.assert_array_equal(a, b)
  other = part.split_public_test_clients(1000, 0.2, 0.1, seed=1)
  assert not np.array_equal(s.public, other.public)
  # No images, with or without (empty) labels: three empty splits, not a crash.
  for labels in (None, []):
    empty = part.split_public_test_clients(0, 0.2, 0.1, seed=0, labels=labels)
    assert all(x.size == 0 and x.dtype == np.int64 for x in empty)


def test_split_fixed_public():
  labels = _labels(900)
  mask = np.zeros(900, bool)
  mask[::3] = True
  s = part.split_fixed_public(mask, 0.2, seed=5, labels=labels)
  _check_partition(list(s), np.arange(900), 3)
  np.testing.assert_array_equal(s.public, np.flatnonzero(mask))
  assert s.test.size == 120 and not mask[s.test].any() and not mask[s.clients].any()
  rest = labels[~mask]
  for u in np.unique(rest):
    assert abs((labels[s.test] == u).sum() - 0.2 * (rest == u).sum()) <= 1
  again = part.split_fixed_public(mask, 0.2, seed=5, labels=labels)
  np.testing.assert_array_equal(s.test, again.test)
  with pytest.raises(ValueError, match="labels"):
    part.split_fixed_public(mask, 0.2, seed=5, labels=labels[:10])


def test_split_stratified():
  labels = _labels(900)
  s = part.split_public_test_clients(900, 0.3, 0.2, seed=3, labels=labels)
  _check_partition(list(s), np.arange(900), 3)
  assert (s.public.size, s.test.size) == (270, 180)
  for u in np.unique(labels):
    n = (labels == u).sum()
    assert abs((labels[s.public] == u).sum() - 0.3 * n) <= 1
    assert abs((labels[s.test] == u).sum() - 0.2 * n) <= 1
  with pytest.raises(ValueError, match="labels"):
    part.split_public_test_clients(900, 0.3, 0.2, seed=3, labels=labels[:10])
  with pytest.raises(ValueError, match="> 1"):
    part.split_public_test_clients(900, 0.7, 0.5, seed=3)
  with pytest.raises(ValueError, match="public_fraction"):
    part.split_public_test_clients(900, -0.1, 0.5, seed=3)


def test_split_stratified_on_small_groups_keeps_the_test_share():
  """Many one-image labels: public and test both round up on the same groups, and public takes
  them; test used to drop its share there (100 labels of one image, 40% / 10%: test was empty)."""
  s = part.split_public_test_clients(100, 0.4, 0.1, seed=0, labels=np.arange(100))
  _check_partition(list(s), np.arange(100), 3)
  assert (s.public.size, s.test.size, s.clients.size) == (40, 10, 50)
  s = part.split_public_test_clients(3, 0.5, 0.5, seed=0, labels=np.array(["a", "b", "c"]))
  assert (s.public.size, s.test.size, s.clients.size) == (2, 1, 0)


@pytest.mark.parametrize("scheme", ["split", "by_label", "dirichlet"])
def test_nan_labels_are_one_group_not_dropped(scheme):
  """`labels == nan` is never true: grouping by value silently lost every NaN-labelled image."""
  labels = np.array([0, 0, 1, 1, np.nan, np.nan, 2, 2, np.nan, 1])
  idx = np.arange(labels.size)
  if scheme == "split":
    parts = list(part.split_public_test_clients(labels.size, 0.2, 0.2, seed=0, labels=labels))
    _check_partition(parts, idx, 3)
  else:
    parts = part.partition(idx, scheme, 4, seed=0, labels=labels,
                           **({"alpha": 1.0} if scheme == "dirichlet" else {}))
    _check_partition(parts, idx, 4)
  if scheme == "by_label":  # the NaN images are one label: on one client together
    assert sum(np.isin([4, 5, 8], p).any() for p in parts) == 1


@pytest.mark.parametrize("scheme,kwargs", [
    ("iid", {}), ("by_label", {}), ("dirichlet", {"alpha": 0.5}),
])
@pytest.mark.parametrize("num_clients", [1, 4, 6, 10])
def test_partition_properties(scheme, kwargs, num_clients):
  labels = _labels()
  indices = np.arange(3, 600, 2)  # A subset, like the client split.
  parts = part.partition(indices, scheme, num_clients, seed=7, labels=labels, **kwargs)
  _check_partition(parts, indices, num_clients)
  assert min(p.size for p in parts) >= 1
  again = part.partition(indices, scheme, num_clients, seed=7, labels=labels, **kwargs)
  for a, b in zip(parts, again):
    np.testing.assert_array_equal(a, b)
  if num_clients > 1:
    other = part.partition(indices, scheme, num_clients, seed=8, labels=labels, **kwargs)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_balanced():
  parts = part.partition_iid(np.arange(103), 10, seed=0)
  assert {p.size for p in parts} == {10, 11}


def test_by_label_one_label_per_client():
  labels = _labels()
  idx = np.arange(labels.size)
  parts = part.partition_by_label(idx, labels, 6, seed=0)
  got = sorted(int(np.unique(labels[p])[0]) for p in parts)
  assert got == list(range(6))
  assert all(np.unique(labels[p]).size == 1 for p in parts)
  # Each label lives on exactly one client.
  for p in parts:
    np.testing.assert_array_equal(p, np.flatnonzero(labels == labels[p[0]]))


def test_by_label_fewer_and_more_clients():
  labels = _labels()
  idx = np.arange(labels.size)
  fewer = part.partition_by_label(idx, labels, 3, seed=0)
  owners = {}
  for k, p in enumerate(fewer):
    for u in np.unique(labels[p]):
      assert u not in owners, "a label is never split when K < num labels"
      owners[u] = k
  assert len(owners) == 6
  more = part.partition_by_label(idx, labels, 9, seed=0)
  _check_partition(more, idx, 9)
  assert all(np.unique(labels[p]).size == 1 for p in more)
  # Largest label (5) is split first.
  assert sum(labels[p[0]] == 5 for p in more) >= 2


def test_dirichlet_alpha_controls_skew():
  labels = _labels(3000, num_labels=10)
  idx = np.arange(labels.size)
  small = [_mean_label_entropy(part.partition_dirichlet(idx, labels, 10, 0.05, seed=s), labels)
           for s in range(3)]
  large = [_mean_label_entropy(part.partition_dirichlet(idx, labels, 10, 100.0, seed=s), labels)
           for s in range(3)]
  overall = _mean_label_entropy([idx], labels)
  assert np.mean(small) < 0.5 * np.mean(large)
  assert np.mean(large) > 0.9 * overall  # Near-IID clients see the global label mix.


def test_dirichlet_min_size_and_errors():
  labels = _labels(200)
  idx = np.arange(200)
  parts = part.partition_dirichlet(idx, labels, 5, 0.3, seed=0, min_size=10)
  assert min(p.size for p in parts) >= 10
  with pytest.raises(ValueError, match="min_size"):
    part.partition_dirichlet(idx, labels, 5, 0.3, seed=0, min_size=50)  # 5 * 50 > 200.
  with pytest.raises(ValueError, match="tries"):
    part.partition_dirichlet(idx, labels, 5, 0.01, seed=0, min_size=39, max_tries=5)
  with pytest.raises(ValueError, match="alpha"):
    part.partition_dirichlet(idx, labels, 5, 0.0, seed=0)
  with pytest.raises(ValueError, match="alpha"):
    part.partition(idx, "dirichlet", 5, seed=0, labels=labels)


def test_partition_errors():
  labels = _labels(20)
  idx = np.arange(20)
  for scheme in part.SCHEMES:
    with pytest.raises(ValueError, match="larger than the data allows"):
      part.partition(idx, scheme, 21, seed=0, labels=labels, alpha=1.0)
  with pytest.raises(ValueError, match=r"unknown partition scheme 'pathological'.*iid"):
    part.partition(idx, "pathological", 2, seed=0)
  with pytest.raises(ValueError, match="labels"):
    part.partition(idx, "by_label", 2, seed=0)
  with pytest.raises(ValueError, match="indexed by image"):
    part.partition(np.arange(30), "by_label", 2, seed=0, labels=labels)
  with pytest.raises(ValueError, match="duplicates"):
    part.partition_iid([1, 1, 2], 2, seed=0)
  with pytest.raises(ValueError, match="num_clients"):
    part.partition_iid(idx, 0, seed=0)
