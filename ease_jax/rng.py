"""Named random streams.

A run's randomness comes from the config's seeds (`seeds.split`, `.partition`, `.init`,
`.sampling`, `.data`, `.unlearning`); everything that draws from a seed draws from a named stream
of it, `numpy_rng(seed, Stream.X, *extra)` (or `jax_key`), so a reader can find every draw.

numpy seeds a generator from a list of 32-bit words and pads it with zeros, so `[s, r]` and
`[s, r, 0]` are the same generator: two streams are disjoint only if their lists differ after
dropping trailing zeros. The named streams are `[seed, domain, stream, len(extra), *extra]`, with
a domain word per kind of draw (methods and requests, client sampling) that no round index or
client id reaches, and the length of `extra` in it, so no named stream equals another or a
training draw. The training draws keep the derivations the published figures were made with:
the split and the partition `default_rng(seed)`, a client's local shuffle `[seeds.data, round,
client]` (`schedules`), a plant's copies `[seeds.partition, sum of its name's code points]`
(`plants`; two plants of one federation whose names have one sum are refused). Among them
collisions stay, to keep every trained model as it was: where seeds are
equal, the split, the partition and client 0's shuffle in round 0 draw from one generator
(`[s, 0, 0]` is `[s]`), and where `seeds.partition` equals `seeds.data` (the default; the
population member of that seed) a plant's copies are client 0's shuffle in the round numbered
by its name's sum (748 for 'concept', 1571 and 1574 for the backdoors: beyond the runs here, whose
FedEraser calibration rounds are fed.rounds + 1000 + r). Each draw is still uniform on its own;
only their joint is not independent.
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
  TEST_HALVES = 19            # the test split's calibration and audit halves
  ASCENT_FORGET = 20          # gradient ascent / PGA batches, + the ascent round (20..39; the
  #                             methods' max_rounds is capped so that no round reaches CCU's)
  CCU_FORGET = 40
  CCU_RETAIN = 41
  MVI_FORGET = 50
  MVI_RETAIN = 51
  # Offsets of the round index in the `seeds.data` stream of local shuffles (not seeds).
  FEDERASER_CALIBRATION = 1000  # FedEraser's calibration rounds: fed.rounds + 1000 + r
  # PGA's "random models" (fresh LoRA inits) use jax keys PGA_RANDOM_MODELS + i, on purpose
  # independent of the run's seeds: the same reference distance for every seed.
  PGA_RANDOM_MODELS = 10_000


class Domain(enum.IntEnum):
  """The second word of a named stream's seed list: above any round index or client id, so no
  named stream is a training draw (`[seed, round, client]`)."""
  METHODS = 0x5EED0001        # `Stream`s of `seeds.unlearning`: requests, methods, the audit
  CLIENT_SAMPLING = 0x5EED0002  # which clients take part in a round, of `seeds.sampling`


def stream_seed(seed: int, stream: Stream | int, *extra: int,
                domain: Domain = Domain.METHODS) -> tuple[int, ...]:
  """The integer sequence seeding `numpy_rng(seed, stream, *extra)` (for seed-taking helpers)."""
  return (int(seed), int(domain), int(stream), len(extra), *(int(e) for e in extra))


def numpy_rng(seed: int, stream: Stream | int, *extra: int,
              domain: Domain = Domain.METHODS) -> np.random.Generator:
  """The numpy generator of `stream` (plus extra integers, e.g. a client id) of `seed`."""
  return np.random.default_rng(stream_seed(seed, stream, *extra, domain=domain))


def jax_key(seed: int, stream: Stream | int) -> jax.Array:
  """The jax key of `stream` of `seed`."""
  return jax.random.fold_in(jax.random.key(int(seed)), int(stream))
