"""One experiment cell: setup → request → trained model → retrain → methods → evaluated rows.

`Cell(config, train_root, request_root)` validates the request against the setup *before* any
training, then trains (or restores) the federated model (cached in `train_root/train`, shared by
the requests of a seed) and the retrain reference (`request_root/retrain`).
`cell.reference_outcomes(...)` and `cell.run_method(name, method)` give `Outcome`s (a model with
its timing and diagnostics); `cell.row(outcome)` evaluates one: Recall@K and R-precision on the
forget / retain / test images and the membership-inference AUC on D_f. The unlearn binary
(`pipeline`) runs one cell, the benchmark (`benchmark`) loops over cells; `with_gaps` is the one
definition of the gaps to retrain and the speed-up.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Mapping

import ml_collections
import numpy as np

from ease_jax import builders
from ease_jax import evaluation
from ease_jax import federated
from ease_jax import jsonio
from ease_jax import mia
from ease_jax.data import plants as plants_lib
from ease_jax.unlearning import base
from ease_jax.unlearning import common
from ease_jax.unlearning import population as population_lib
from ease_jax.unlearning import requests
from ease_jax.unlearning import retrain as retrain_lib

PyTree = Any
SPLITS = ("forget", "retain", "test")
# Row keys whose difference to the retrain row is reported as `<key>_gap`: retrieval, the MIA,
# and every planted-knowledge metric (`asr/<plant>/<dir>`, `concept/<plant>/<dir>`,
# `tone/<tone>/<dir>`).
GAP_KEYS = tuple(f"{s}/{k}" for s in SPLITS for k in ("i2t_r1", "t2i_r1", "mean_r1")) + (
    "mia_auc",)
KNOWLEDGE_PREFIXES = ("asr/", "concept/", "tone/")
DIRECTIONS = ("i2t", "t2i")
REFERENCES = ("retrain", "backbone", "original")


@dataclasses.dataclass
class Outcome:
  """A model to evaluate: a method's result, a reference, or a method's continued model."""
  method: str
  trainable: PyTree
  wall_time_s: float | None = None
  compile_time_s: float = 0.0
  diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
  curves: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  parent: str | None = None


class Cell:
  """One (config, request) cell; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, train_root: str | pathlib.Path,
               request_root: str | pathlib.Path, setup: builders.FederatedSetup | None = None,
               mia_score: str | None = "cosine",
               population_root: str | pathlib.Path | None = None):
    self.config = config
    self.setup = setup = setup or builders.build_setup(config)
    self.request = requests.from_config(setup, config.unlearning, seed=config.seeds.unlearning)
    self.subsets = self.request.eval_subsets(setup)
    self.trained, self.train_timing = retrain_lib.train(setup, config, train_root)
    self.reference, self.retrain_timing = retrain_lib.retrain(setup, config, self.request,
                                                              request_root)
    self.ctx = base.UnlearningContext(setup=setup, config=config, request=self.request,
                                      trained=self.trained.trainable,
                                      history=self.trained.history, eval_subsets=self.subsets,
                                      workdir=pathlib.Path(request_root))
    # From the test split's audit half: the methods calibrate on the other.
    self.nonmember_texts = common.mia_nonmembers(setup, config, self.request.forget_images)
    # Compiled here, not inside the first method's timed work (EASE's target, the ascent
    # methods' stop level, MVI's basis embed pairs): in a resumed benchmark whose evaluated rows
    # are cached, the first method run would otherwise pay the compilation.
    common.warm_up_embedding(setup, self.trained.trainable)
    self.mia_score = mia_score
    self.audit_config = common.block(config, "audit", population_lib.DEFAULTS)
    tones = np.asarray(setup.dataset.image_meta.get("skin_tone", np.full(
        setup.dataset.num_images, "none")))
    clients = plants_lib.clean_images(setup.dataset, setup.all_client_images)
    self.tone_images = {t: clients[tones[clients] == t] for t in self.audit_config.tones
                        if np.any(tones[clients] == t)}
    # `forget_scores(trainable, embedder=None) -> [n]`: the audit's per-example scores on D_f,
    # as the populations' members are scored.
    self.forget_scores = population_lib.forget_scorer(setup, config, self.request.forget_texts,
                                                      self.nonmember_texts)
    self.populations = None
    if self.audit_config.population:
      self.populations = self._train_populations(
          pathlib.Path(population_root or pathlib.Path(train_root) / "population"))

  def _train_populations(self, root: pathlib.Path) -> dict[str, Any]:
    """The `in` and `out` populations (cached under `root`) and every member's scores on D_f
    (`population.scored_pair`)."""
    return population_lib.scored_pair(self.setup, self.config, self.request, root,
                                      self.nonmember_texts)

  def embedder(self, trainable: PyTree, shared: federated.Embedder | None = None
               ) -> federated.Embedder:
    """One model's `Embedder`, shared by the metrics of its row: `shared` when given (refused if
    it belongs to another trainable tree), else a fresh one at the eval batch size."""
    return federated.embedder_for(self.setup.model, self.setup.backbone, trainable,
                                  self.setup.data, shared, self.config.eval.get("batch_size", 256))

  @property
  def forgotten_knowledge(self) -> list[str]:
    """Row keys of what the request should remove: the attack success rates (or concept
    accuracies) of every plant it forgets whole, and the tone accuracy of a forgotten skin
    tone."""
    forget = set(np.asarray(self.request.forget_images).tolist())
    keys = [f"{plant.metric}/{name}/{d}" for name, plant in self.setup.plants.items()
            if set(plant.poison_images.tolist()) <= forget for d in DIRECTIONS]
    unlearning = self.config.unlearning
    if (self.request.kind == "concept" and not unlearning.get("plant")
        and unlearning.get("field") == "skin_tone"):
      keys += [f"tone/{t}/{d}" for t in unlearning.concepts if t in self.tone_images
               for d in DIRECTIONS]
    return keys

  @property
  def retrain_time_s(self) -> float:
    return self.retrain_timing["steady_time_s"]

  def reference_outcomes(self, names: tuple[str, ...] = REFERENCES) -> list[Outcome]:
    """`retrain` (the reference, with its steady time), `backbone` (the pretrained model alone:
    fresh adapters, B = 0, i.e. what FedAvg started from), `original` (the trained model)."""
    make = dict(
        retrain=lambda: Outcome("retrain", self.reference.trainable, self.retrain_time_s,
                                diagnostics=dict(self.retrain_timing)),
        backbone=lambda: Outcome("backbone", builders.init_trainable(self.setup, self.config)),
        original=lambda: Outcome("original", self.trained.trainable))
    return [make[n]() for n in names]

  def run_method(self, name: str, method: base.Method) -> list[Outcome]:
    """The method's unlearned model, then each continued model (`name+tag`) with the time of
    the unlearning plus its continued rounds."""
    res = method(self.ctx)
    out = [Outcome(name, res.trainable, res.wall_time_s, res.compile_time_s, res.diagnostics,
                   res.curves)]
    extra = common.round_timing([r for r in res.curves if "round_time_s" in r])["steady_time_s"]
    for tag, tree in res.continued.items():
      out.append(Outcome(f"{name}+{tag}", tree, res.wall_time_s + extra, res.compile_time_s,
                         dict(continued_time_s=extra), parent=name))
    return out

  def evaluate(self, trainable: PyTree, embedder: federated.Embedder | None = None
               ) -> dict[str, float]:
    """Retrieval metrics on the forget / retain / test images, (with a `mia_score`) the MIA AUC
    on D_f, and what the model knows of every plant and tone."""
    setup = self.setup
    embedder = self.embedder(trainable, embedder)
    row = evaluation.evaluate_splits(setup, trainable, self.subsets, embedder=embedder)
    if self.mia_score is not None:
      attack = mia.membership_auc(setup.model, setup.backbone, trainable, setup.data,
                                  self.request.forget_texts, self.nonmember_texts,
                                  self.mia_score, embedder)
      row.update({f"mia_{k}": v for k, v in attack.items()})
    for plant in setup.plants.values():
      row.update(evaluation.plant_metrics(setup, trainable, plant, embedder=embedder))
    for tone, images in self.tone_images.items():
      row.update({f"tone/{tone}/{k}": v for k, v in
                  evaluation.tone_accuracy(setup, trainable, images, embedder=embedder).items()})
    return row

  def score_samples(self, outcomes: list[Outcome]) -> dict[str, np.ndarray]:
    """Per-example scores on D_f of the populations (pooled) and of the given outcomes."""
    pops = self.populations
    if pops is None:
      return {}
    out = {"retrain population": pops["out_scores"].ravel(),
           "trained population": pops["in_scores"].ravel()}
    for o in outcomes:
      out[o.method] = self.forget_scores(o.trainable)
    return out

  def audit(self, trainable: PyTree, embedder: federated.Embedder | None = None
            ) -> dict[str, float]:
    """Forget quality and the per-example LiRA of a model against the populations (empty
    without them). Population members have seeds from `audit.first_seed` on, so none of the
    audited models (the trained model, the retrain reference, the unlearned ones) is judged by a
    population it belongs to."""
    pops = self.populations
    if pops is None:
      return {}
    return population_lib.audit_row(self.forget_scores(trainable, embedder), pops["in_scores"],
                                    pops["out_scores"], self.audit_config.variance,
                                    in_seeds=pops["seeds"], out_seeds=pops["out_seeds"],
                                    forget_confidence=self.audit_config.forget_confidence,
                                    strata=self.request.audit_strata(self.setup))

  def row(self, outcome: Outcome) -> dict[str, Any]:
    """The evaluated row of an outcome (metrics, times, request, JSON-able diagnostics)."""
    t0 = time.perf_counter()
    row = dict(method=outcome.method, parent=outcome.parent, wall_time_s=outcome.wall_time_s,
               compile_time_s=outcome.compile_time_s, retrain_time_s=self.retrain_time_s,
               request=self.request.description, num_forget=int(len(self.request.forget_texts)),
               num_nonmembers=int(len(self.nonmember_texts)))
    embedder = self.embedder(outcome.trainable)  # each image and caption embedded once
    row.update(self.evaluate(outcome.trainable, embedder))
    row.update(self.audit(outcome.trainable, embedder))
    row["diagnostics"] = jsonio.to_jsonable(outcome.diagnostics)
    row["eval_time_s"] = time.perf_counter() - t0
    return row


def with_gaps(row: Mapping[str, Any], reference: Mapping[str, Any] | None) -> dict[str, Any]:
  """`row` plus `<key>_gap` = row − reference for `GAP_KEYS` and `speedup_vs_retrain` =
  reference time / row time."""
  row = dict(row)
  if reference is None:
    return row
  knowledge = [k for k in row if k.startswith(KNOWLEDGE_PREFIXES) and k.endswith(DIRECTIONS)]
  for k in (*GAP_KEYS, *knowledge):
    if row.get(k) is not None and reference.get(k) is not None:
      row[f"{k}_gap"] = row[k] - reference[k]
  wall = row.get("wall_time_s")
  row["speedup_vs_retrain"] = (reference["wall_time_s"] / wall
                               if wall and reference.get("wall_time_s") else None)
  return row
