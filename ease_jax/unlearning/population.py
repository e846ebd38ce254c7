"""Populations of models for the per-example audit, each trained as one batched computation.

A population is N runs of the same federation (same split, partition and plants) that differ in
LoRA init, client sampling and local shuffles: member i runs with `seeds.init = seeds.sampling =
seeds.data = seed_i`. The `in` population trains on everything (with D_f), an `out` population is
the retrain reference of one request (without D_f). The N runs are one `vmap` over the seed axis
of the FedAvg algorithm (`federated.vmapped`), in chunks of `audit.chunk` runs to bound memory,
each chunk's members split over the local devices (`sharding.split_leading_axis`; on a CPU the
binaries make one device per core, `runtime.one_cpu_device_per_core`, and each device then runs
its operations single-threaded, `runtime.split_cpu_compiler_options`); each chunk is resumable
from its workdir like every run. Member i equals the single run with seed i up to float rounding
(tests/test_population.py, a tiny config); on the embedded default's 12 rounds such rounding
differences grow into a different trajectory, as between two machines (BENCHMARKS.md,
"Population").

Population seeds start at `audit.first_seed`, away from the evaluation seeds, so the audited
models (the trained model, the unlearned ones, the retrain reference of the cell) are never part
of the fits they are judged by.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ease_jax import audit
from ease_jax import builders
from ease_jax import checkpointing
from ease_jax import federated
from ease_jax import jsonio
from ease_jax import mia
from ease_jax import runtime
from ease_jax import sharding
from ease_jax import validation
from ease_jax.data import dataset as dataset_lib
from ease_jax.federated import driver
from ease_jax.unlearning import base
from ease_jax.unlearning import common
from ease_jax.unlearning import requests
from ease_jax.unlearning import retrain as retrain_lib

PyTree = Any
SCORES = ("cosine", "loss")

DEFAULTS: dict[str, Any] = dict(
    # N models per population (0 = no per-example audit; >= 4: each retrained model is held
    # out in turn with >= 3 left to fit LiRA, and forget quality calibrates each comparison
    # member on >= 3 pairs of the others).
    population=0,
    first_seed=100,      # member i runs with seed first_seed + i
    chunk=0,             # members per batched computation (0 = all N at once)
    score="cosine",      # per-example score: 'cosine' (logit-scaled matched cosine) | 'loss'
    # Standardise each model's scores by its own scores on held-out non-member pairs (difficulty
    # calibration, Watson et al. 2022). Off by default: on the embedded default it made two
    # retrain seeds *more* distinguishable by forget quality (BENCHMARKS.md, "Audit").
    calibrate=False,
    variance="shared",   # Gaussian fits: 'shared' (one pooled std, LiRA's fixed variance,
                         # robust with few models) | 'per_example' (each example's own)
    tones=("medium-dark",),  # skin tones whose tone accuracy every row reports
    # Forget quality's calibration: the effective size at this upper confidence bound of the
    # retrain pairs' median KS statistic (bootstrap over the members), 0 = at its point
    # estimate, which moves with the population's draw (`audit.forget_quality`).
    forget_confidence=audit.FORGET_CONFIDENCE,
)
# A row's key of one stratum's own model-level p: this + the stratum's name (`audit_row`).
STRATUM_PREFIX = "model_level_p/"
RULES = {
    "audit.population": lambda v: (None if isinstance(v, int) and (v == 0 or v >= 4)
                                   else f"must be 0 (no audit) or >= 4, got {v!r}"),
    "audit.first_seed": validation.integer(0),
    "audit.chunk": validation.integer(0),
    "audit.score": validation.one_of(*SCORES),
    "audit.variance": validation.one_of(*audit.VARIANCES),
    "audit.calibrate": validation.boolean,
    "audit.forget_confidence": lambda v: (
        None if validation.real(0.0, 0.0)(v) is None
        or validation.real(0.5, 1.0, hi_open=True)(v) is None
        else f"must be 0 (the point estimate) or in [0.5, 1), got {v!r}"),
    # A misspelt tone would silently report no tone row.
    "audit.tones": lambda v: (None if isinstance(v, (tuple, list)) and not v else
                              validation.subset_of(*dataset_lib.SKIN_TONES)(v)),
}


MEMBER_SEEDS = ("init", "sampling", "data")
_MEMBER_SEED_KEYS = frozenset(f"seeds.{s}" for s in MEMBER_SEEDS)


def member_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """The config of the run with `seed` for LoRA init, client sampling and shuffles."""
  return base.config_with(config, {f"seeds.{k}": int(seed) for k in MEMBER_SEEDS})


def federation_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a population's runs share: the run fingerprint without the seeds its members set."""
  return {k: v for k, v in builders.run_fingerprint(config).items()
          if k not in _MEMBER_SEED_KEYS}


def stacked_inits(setup: builders.FederatedSetup,
                  configs: list[ml_collections.ConfigDict]) -> PyTree:
  """`[N, ...]` the LoRA inits of N member configs, stacked on a leading seed axis."""
  return jax.tree.map(lambda *x: jnp.stack(x),
                      *[builders.init_trainable(setup, c) for c in configs])


@dataclasses.dataclass
class Population:
  seeds: tuple[int, ...]
  trainables: PyTree          # stacked `[N, ...]`
  wall_time_s: float          # training time summed over the chunks (this process)
  devices: int = 1            # devices each chunk's members were split over

  def member(self, i: int) -> PyTree:
    return jax.tree.map(lambda x: x[i], self.trainables)

  def scores(self, score: Callable[[PyTree], np.ndarray], skip: Sequence[int] = ()
             ) -> tuple[np.ndarray, np.ndarray]:
    """`([k, n] scores, [k] seeds)`: `score` (e.g. `forget_scorer`'s) of every member whose
    seed is not in `skip` (`[0, 0]` scores when none is left)."""
    skip = set(skip)
    keep = [i for i, seed in enumerate(self.seeds) if seed not in skip]
    rows = [score(self.member(i)) for i in keep]
    return (np.stack(rows) if rows else np.zeros((0, 0)),
            np.asarray([self.seeds[i] for i in keep], np.int64))


def train(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
          plan_of: Callable[[ml_collections.ConfigDict], federated.RoundPlan],
          workdir: str | pathlib.Path, identity: dict[str, Any], desc: str,
          algorithms: dict[Any, Any] | None = None) -> Population:
  """The population of `audit.population` runs of `plan_of(member_config)`, cached in `workdir`.

  `identity` (e.g. the request's fingerprint) guards the cache like the retrain reference's.
  `algorithms`, when given, is where the batched algorithm is kept between calls on the same
  federation and config (keyed by its compiler options), so that a later call, e.g. one that
  grows `audit.population` by a chunk, runs the programs already compiled instead of tracing and
  compiling them again.
  """
  a = common.block(config, "audit", DEFAULTS)
  seeds = tuple(a.first_seed + i for i in range(a.population))
  if len(seeds) < 3:
    # The library's floor (LiRA's leave-one-out: one held out, two to fit); the binaries' rule
    # asks >= 4 (RULES) so that each fit and calibration has >= 3 models.
    raise ValueError(f"audit.population must be >= 3 for the per-example audit (>= 4 in the "
                     f"binaries), got {a.population}.")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ident_path = workdir / "population.json"
  if ident_path.exists():
    saved = jsonio.read_json(ident_path)
    saved.pop("seeds", None)
    # The seeds are not part of the check: each chunk's checkpoints carry their members' seeds
    # (`population_seeds`) and a chunk folder is named by its first and last seed, so with a
    # fixed `audit.chunk` a larger `audit.population` reuses the finished chunks and trains only
    # the new ones. With `audit.chunk=0` (one chunk of every member) the one folder's name
    # changes with the size, and every member is trained again.
    if saved != jsonio.to_jsonable(dict(identity)):
      raise ValueError(f"{workdir} holds a population for {saved}, not {dict(identity)}; use a "
                       "new workdir.")
  jsonio.write_json_atomic(ident_path, dict(identity, seeds=list(seeds)))
  # No update history (the audit needs the models only).
  config = base.config_with(config, {"fed.history_size": 0})
  chunk = a.chunk or len(seeds)
  trainables, wall, devices = [], 0.0, 1
  algorithms = {} if algorithms is None else algorithms
  for start in range(0, len(seeds), chunk):
    group = seeds[start:start + chunk]
    configs = [member_config(config, s) for s in group]
    plans = federated.StackedPlan(tuple(plan_of(c) for c in configs))
    # Split over several CPU devices, each device's operations run single-threaded.
    split = sharding.split_count(len(group))
    options = runtime.split_cpu_compiler_options(jax.default_backend(), split)
    if options not in algorithms:  # One algorithm (one compilation) for every chunk alike.
      algorithms[options] = federated.vmapped(
          builders.fedavg_algorithm(setup, config, plans.plans[0], compiler_options=options),
          plans.axes)
    algorithm = algorithms[options]
    # Members split over the local devices: each runs its block at once (a no-op on one). The
    # whole state is split, not just the start points: a leaf that `init` creates (the round
    # counter) would otherwise enter the first round unplaced and come out of it placed, and the
    # server step would compile a second time in round 2.
    start_state = sharding.split_leading_axis(algorithm.init(stacked_inits(setup, configs)))
    devices = max(devices, split)
    fingerprint = dict(federation_fingerprint(config), population_seeds=list(group))
    res = driver.run(algorithm, plans, start_state, config.fed.rounds,
                     workdir / f"members_{group[0]}_{group[-1]}",
                     driver.RunOptions(checkpoint_every=config.get("checkpoint_every", 1),
                                       fingerprint=fingerprint,
                                       desc=f"{desc} population ({len(group)} runs)"))
    # Gathered on the host, then one device: what follows (concatenation, member slicing, the
    # scores) then runs no cross-device collective (see `driver._all_finite_on_host`).
    trainables.append(jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), res.trainable))
    wall += common.round_timing(res.metrics)["wall_time_s"]
  stacked = jax.tree.map(lambda *x: jnp.concatenate(x), *trainables)
  return Population(seeds, stacked, wall, devices)


def cache_tag(identity: dict[str, Any]) -> str:
  """A population folder's name suffix: the hash of what defines it. Folder names leave out the
  fingerprint keys added later (the data files' digest), so caches written before them are still
  found; the members' checkpoints carry the whole fingerprint, so a cache of other data is
  refused when it is restored."""
  return checkpointing.fingerprint_hash(
      {k: v for k, v in identity.items() if k not in checkpointing.ADDED_LATER})[:10]


def _federation(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # Members keep no update history (`train`), so EASE's M must not move the cache.
  return federation_fingerprint(base.config_with(config, {"fed.history_size": 0}))


def in_population(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
                  root: str | pathlib.Path) -> Population:
  """The population trained on everything (with every request's D_f), cached under `root` by
  the federation alone, so every request (and every benchmark seed) of a federation shares it."""
  return train(setup, config, lambda c: builders.round_plan(setup, c),
               pathlib.Path(root) / f"in-{cache_tag(_federation(config))}", dict(kind="none"),
               "trained")


def out_population(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
                   request: requests.UnlearningRequest, root: str | pathlib.Path) -> Population:
  """The population retrained without `request`'s D_f, cached under `root` by the federation
  and the request."""
  out_ident = dict(_federation(config),
                   **{f"request.{k}": v for k, v in request.fingerprint().items()})
  return train(setup, config, lambda c: retrain_lib.retrain_plan(setup, c, request),
               pathlib.Path(root) / f"out-{cache_tag(out_ident)}", request.fingerprint(),
               "retrain")


def train_pair(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
               request: requests.UnlearningRequest, root: str | pathlib.Path
               ) -> tuple[Population, Population]:
  """The `in` population (trained with D_f) and the `out` population of `request` (retrained
  without it), cached under `root` (`in_population`, `out_population`)."""
  return in_population(setup, config, root), out_population(setup, config, request, root)


def forget_scorer(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
                  forget_texts: np.ndarray, nonmember_texts: np.ndarray | None = None
                  ) -> Callable[..., np.ndarray]:
  """`score(trainable, embedder=None) -> [n]`: a model's per-example audit scores on the pairs
  of `forget_texts` (`audit.score`), standardised by its own scores on `nonmember_texts` when
  `audit.calibrate` is on. `embedder`, when given, is a shared `Embedder` of that trainable;
  else one at the eval batch size. One definition for the populations' members and the audited
  models, so both are scored alike."""
  a = common.block(config, "audit", DEFAULTS)
  calibration = nonmember_texts if a.calibrate else None
  batch_size = config.eval.get("batch_size", 256)

  def score(trainable: PyTree, embedder: federated.Embedder | None = None) -> np.ndarray:
    embedder = federated.embedder_for(setup.model, setup.backbone, trainable, setup.data,
                                      embedder, batch_size)
    return scores(setup, trainable, forget_texts, a.score, calibration, embedder)

  return score


def scored_pair(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
                request: requests.UnlearningRequest, root: str | pathlib.Path,
                nonmember_texts: np.ndarray | None = None,
                score: Callable[..., np.ndarray] | None = None) -> dict[str, Any]:
  """`train_pair` and every member's per-example scores on D_f (`score`, by default
  `forget_scorer`'s): `in_scores` and `out_scores` `[members, n]`, the members' `seeds` and
  `out_seeds`, and the two training times."""
  in_pop, out_pop = train_pair(setup, config, request, root)
  score = score or forget_scorer(setup, config, request.forget_texts, nonmember_texts)
  return dict(seeds=in_pop.seeds, out_seeds=out_pop.seeds, in_time_s=in_pop.wall_time_s,
              out_time_s=out_pop.wall_time_s, in_scores=in_pop.scores(score)[0],
              out_scores=out_pop.scores(score)[0])


def raw_scores(setup: builders.FederatedSetup, trainable: PyTree, texts: np.ndarray,
               score: str = "cosine", embedder: federated.Embedder | None = None,
               images: np.ndarray | None = None) -> np.ndarray:
  """`[n]` per-example scores of the pairs of `texts` (higher = more member-like): the
  logit-scaled matched cosine, or minus the per-pair InfoNCE loss among `texts`; `embedder`,
  when given, is a shared `Embedder` of (setup's backbone, trainable). `images [n]`, when
  given, pairs text i with image i instead of its own (the cosine only)."""
  embedder = federated.embedder_for(setup.model, setup.backbone, trainable, setup.data, embedder)
  if score == "cosine":
    return audit.matched_logit(federated.matched_cosines(setup.model, setup.backbone, trainable,
                                                         setup.data, texts, embedder, images))
  if images is not None:
    raise ValueError("Only the cosine score takes pairs of other images than the texts' own.")
  return mia.gallery_scores(setup.model, setup.backbone, trainable, setup.data, texts, "loss",
                            embedder)


def scores(setup: builders.FederatedSetup, trainable: PyTree, texts: np.ndarray,
           score: str = "cosine", calibration_texts: np.ndarray | None = None,
           embedder: federated.Embedder | None = None) -> np.ndarray:
  """`raw_scores`, standardised by the model's own scores on `calibration_texts` (held-out
  non-member pairs) when given."""
  embedder = federated.embedder_for(setup.model, setup.backbone, trainable, setup.data, embedder)
  s = raw_scores(setup, trainable, texts, score, embedder)
  if calibration_texts is None:
    return s
  return standardize(s, raw_scores(setup, trainable, calibration_texts, score, embedder))


def standardize(scores_: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """`scores_ [..., n]` standardised by the mean and std of one model's `reference [..., m]`
  scores (its held-out non-member pairs; leading axes: models)."""
  mean = reference.mean(-1, keepdims=True)
  return (scores_ - mean) / np.maximum(reference.std(-1, keepdims=True), 1e-6)


def audit_row(target: np.ndarray, in_scores: np.ndarray, out_scores: np.ndarray,
              variance: str, in_seeds: Sequence[int] | None = None,
              out_seeds: Sequence[int] | None = None,
              forget_confidence: float = audit.FORGET_CONFIDENCE,
              strata: Sequence[str] | None = None) -> dict[str, Any]:
  """A model's audit on D_f: forget quality and the per-example LiRA against the populations
  (`target [n]`, `in_scores`, `out_scores` `[models, n]`; the model is in neither). The members'
  seeds, when given, keep each retrained member's twin (the `in` member with its seed) out of
  the fit that judges it (`audit.lira_folds`); `train_pair`'s populations share their seeds.

  Forget quality is TOFU's KS test between the model's scores and a held-out retrain's, each
  member of the retrain population in turn, at the effective size that the pairs of the other
  members support at `forget_confidence`, and its median over the members
  (`audit.forget_quality`): `forget_quality`. `forget_quality_point` is the same at the
  effective size's point estimate, `forget_quality_iid` the median exact p-value, which takes
  the n scores as independent draws and flags most pairs of retrain seeds; `forget_quality_min`
  the smallest calibrated p (BENCHMARKS.md, "Forget quality against the population" and "Forget
  quality: a calibration that does not move with the draw").

  `model_level_p` (and its `model_level_t`) is `audit.model_mean_test`: the model's mean score
  over D_f against the retrain population's, one draw per model (it raises if every retrain's
  mean is the same: no spread to judge by). `model_level_strata_p` is the same test within each
  of `strata` (`[n]` stratum names: each plant's copies and the clean pairs, per leaving
  client when several leave, `UnlearningRequest.audit_strata`), the smallest p Bonferroni-adjusted (`audit.stratified_mean_test`), and
  `model_level_p/<stratum>` each stratum's own p; without `strata`, D_f is one stratum and
  `model_level_strata_p` equals `model_level_p`.

  `lira_model_effect_share` is the retrain population's `audit.model_effect_share`: where one
  model's scores move together, a single model's TPR at a low FPR scatters far beyond the FPR
  (at the embedded default's sample request's share, 0.36, the synthetic probe
  `benchmarks/probe_lira_bound.py` puts a retrain outside the population over TPR@1% 3% about
  one time in ten, at 10 to 80 members).
  """
  fq = audit.forget_quality(target, out_scores, confidence=forget_confidence)
  row = dict(forget_quality=fq["p"], forget_quality_point=fq["p_point"],
             forget_quality_iid=fq["p_iid"], forget_quality_min=fq["p_min"], forget_ks=fq["ks"],
             forget_ks_n_eff=fq["n_eff"], forget_ks_n_eff_point=fq["n_eff_point"])
  row.update(audit.lira_audit(target, in_scores, out_scores, variance, in_seeds=in_seeds,
                              out_seeds=out_seeds))
  # A property of the retrain population, not of the model: how far one retrain's TPR can
  # stray from the FPR (BENCHMARKS.md, "Why a retrain crosses the bound").
  row["lira_model_effect_share"] = audit.model_effect_share(out_scores)
  # The model-level reading beside the per-example one: the model's mean score against the
  # retrains' means (BENCHMARKS.md, "What flags a trained model is mostly the plant's rule").
  row["model_level_t"], row["model_level_p"] = audit.model_mean_test(target, out_scores)
  # Within each stratum too: a kept backdoor and over-forgotten clean pairs cancel in one mean.
  row["model_level_strata_p"] = row["model_level_p"]
  if strata is not None:
    stratified = audit.stratified_mean_test(target, out_scores, strata)
    row["model_level_strata_p"] = stratified["p"]
    row.update({f"{STRATUM_PREFIX}{name}": p
                for name, (_, p) in stratified["per_stratum"].items()})
  return row
