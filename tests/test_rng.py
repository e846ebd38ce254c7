"""Random streams: every named stream is disjoint from every other and from the training draws,
judged by the generators' output (numpy pads a seed list with zeros, so `[s, r]` and `[s, r, 0]`
are one generator)."""
import pathlib

import numpy as np
import pytest

from ease_jax import configs
from ease_jax import rng as rng_lib
from ease_jax import validation
from ease_jax.federated import schedules
from ease_jax.unlearning.methods import gradient_ascent as ga

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _signature(generator: np.random.Generator) -> tuple[int, ...]:
  return tuple(generator.integers(0, 2**63, size=3).tolist())


def test_numpy_pads_seed_lists_with_zeros():
  """The behaviour the stream layout guards against."""
  assert _signature(np.random.default_rng([5, 3])) == _signature(np.random.default_rng([5, 3, 0]))
  assert _signature(np.random.default_rng(5)) == _signature(np.random.default_rng([5, 0]))


def test_named_streams_and_training_draws_never_share_a_generator():
  draws: dict[tuple[int, ...], str] = {}

  def add(name: str, generator: np.random.Generator) -> None:
    sig = _signature(generator)
    assert sig not in draws, f"{name} is the same generator as {draws[sig]}"
    draws[sig] = name

  rounds = list(range(0, 40)) + list(range(1000, 1040))  # training and FedEraser's calibration
  for seed in (0, 1, 100):
    # The one collision the training draws keep (rng module docstring): client 0's shuffle in
    # round 0 is the split's and partition's generator.
    split = np.random.default_rng(seed)
    assert _signature(np.random.default_rng([seed, 0, 0])) == _signature(
        np.random.default_rng(seed))
    add(f"split/partition and shuffle r0 c0 {seed}", split)
    for r in rounds:
      for client in range(10):  # a client's local shuffle, as `build_client_schedules` seeds it
        if (r, client) != (0, 0):
          add(f"shuffle {seed} r{r} c{client}", np.random.default_rng([seed, r, client]))
      add(f"sampling {seed} r{r}",
          rng_lib.numpy_rng(seed, r, domain=rng_lib.Domain.CLIENT_SAMPLING))
    for stream in rng_lib.Stream:
      if stream >= rng_lib.Stream.FEDERASER_CALIBRATION:
        continue  # offsets of round indices and jax keys, not numpy streams
      add(f"{stream.name} {seed}", rng_lib.numpy_rng(seed, stream))
      for extra in range(10):
        add(f"{stream.name} {seed} +{extra}", rng_lib.numpy_rng(seed, stream, extra))
        add(f"{stream.name} {seed} +{extra},0", rng_lib.numpy_rng(seed, stream, extra, 0))
    # The ascent methods' rounds, as far as their max_rounds may go (holder h as the extra).
    for r in range(1, ga.MAX_ROUNDS):
      for h in range(10):
        add(f"ascent round {r} {seed} +{h}",
            rng_lib.numpy_rng(seed, rng_lib.Stream.ASCENT_FORGET + r, h))


def test_ascent_rounds_are_capped_before_the_next_stream():
  """Ascent round r draws from ASCENT_FORGET + r: round 20 would draw CCU's batches."""
  assert rng_lib.Stream.ASCENT_FORGET + ga.MAX_ROUNDS == rng_lib.Stream.CCU_FORGET
  config = configs.from_file(ROOT / "experiments" / "configs" / "unlearn_emoji.py")
  for block in ("gradient_ascent", "pga"):
    config[block].max_rounds = ga.MAX_ROUNDS
    validation.validate(config)
    config[block].max_rounds = ga.MAX_ROUNDS + 1
    with pytest.raises(validation.ConfigError, match=rf"{block}.max_rounds.*must be <= 20"):
      validation.validate(config)
    config[block].max_rounds = 5


def test_stream_seed_seeds_numpy_rng_and_sampling_uses_its_stream():
  seq = rng_lib.stream_seed(3, rng_lib.Stream.BKE_FORGET, 2)
  assert _signature(np.random.default_rng(list(seq))) == _signature(
      rng_lib.numpy_rng(3, rng_lib.Stream.BKE_FORGET, 2))
  expected = np.sort(rng_lib.numpy_rng(7, 4, domain=rng_lib.Domain.CLIENT_SAMPLING).choice(
      10, 3, replace=False))
  np.testing.assert_array_equal(schedules.sample_clients(10, 3, seed=7, round_index=4), expected)
