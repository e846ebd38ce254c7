"""Named random streams.

A run's randomness comes from the config's seeds (`seeds.split`, `.partition`, `.init`,
`.sampling`, `.data`, `.unlearning`); everything that draws from a seed draws from a named stream
of it, `np.random.default_rng([seed, Stream.X, ...extra])` (or `jax_key`), so two draws never
share a stream by accident and a reader can find every draw. The values are the ones the
streams were numbered with before they had names, so earlier results reproduce exactly.
"""
from __future__ import annotations

import enum

import jax
import numpy as np


class Stream(enum.IntEnum):
  """Streams of `seeds.unlearning` (requests and methods), unless noted."""
  SAMPLE_REQUEST = 1          # which pairs a sample request forgets
  GSD_FORGET_GRADIENTS = 2    # EASE: minibatches of the forget-side gradient stacks (+ holder)
  GSD_RETAIN_GRADIENTS = 3    # EASE: minibatches of a holder's retain-side gradients (+ client)
  BKE_FORGET = 4              # EASE's excision batches on D_f (+ holder)
  BKE_RETAIN = 5              # ... and on the retain data
  FEDRECOVERY_NOISE = 7       # FedRecovery's Gaussian noise (a jax key)
  UTILITY_SAMPLE = 11         # the public pairs of the ascent methods' divergence guard
  MVI_CALIBRATION = 13        # MVI's public pairs for the shared subspace
  MIA_NONMEMBERS = 17         # the held-out non-members matched to D_f
  ASCENT_FORGET = 20          # gradient ascent / PGA batches, + the ascent round (20..)
  CCU_FORGET = 40
  CCU_RETAIN = 41
  MVI_FORGET = 50
  MVI_RETAIN = 51
  # Offsets of the round index in the `seeds.data` stream of local shuffles (not seeds).
  FEDERASER_CALIBRATION = 1000  # FedEraser's calibration rounds: fed.rounds + 1000 + r
  # PGA's "random models" (fresh LoRA inits) use jax keys PGA_RANDOM_MODELS + i, on purpose
  # independent of the run's seeds: the same reference distance for every seed.
  PGA_RANDOM_MODELS = 10_000


def numpy_rng(seed: int, stream: Stream | int, *extra: int) -> np.random.Generator:
  """The numpy generator of `stream` (plus extra integers, e.g. a client id) of `seed`."""
  return np.random.default_rng([int(seed), int(stream), *(int(e) for e in extra)])


def stream_seed(seed: int, stream: Stream | int, *extra: int) -> tuple[int, ...]:
  """The integer sequence seeding `numpy_rng(seed, stream, *extra)` (for seed-taking helpers)."""
  return (int(seed), int(stream), *(int(e) for e in extra))


def jax_key(seed: int, stream: Stream | int) -> jax.Array:
  """The jax key of `stream` of `seed`."""
  return jax.random.fold_in(jax.random.key(int(seed)), int(stream))
