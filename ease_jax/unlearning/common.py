"""What several unlearning methods share: config blocks, holders' batches, calibration levels,
utility checks, continued FedAvg on the retained clients, timings."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ease_jax import builders
from ease_jax import federated
from ease_jax.federated import driver
from ease_jax import losses
from ease_jax import mia
from ease_jax import rng as rng_lib
from ease_jax import training
from ease_jax import validation
from ease_jax.model import CLIP
from ease_jax.unlearning import base

PyTree = Any
RETAIN_SOURCES = ("local", "public", "none")
CALIBRATION_SPLITS = ("test", "public")


def block(config: ml_collections.ConfigDict, name: str, defaults: Mapping[str, Any]
          ) -> ml_collections.ConfigDict:
  """A method's config block: `defaults` overridden by `config.<name>` (if present).

  A key not in the defaults is a KeyError naming it; a value its validation rules (the
  `<name>.` entries of `methods.RULES`) refuse is a `validation.ConfigError` (a ValueError)
  naming the key. Checked here, when a method reads its block, because not every config passes
  `validation.validate` first (benchmark variant overrides, direct calls).
  """
  # Imported here: the methods import this module.
  from ease_jax.unlearning import methods  # pylint: disable=g-import-not-at-top
  out = dict(defaults)
  given = config.get(name)
  if given is not None:
    unknown = sorted(set(given.keys()) - set(out))
    if unknown:
      raise KeyError(f"Unknown key(s) {unknown} in config.{name}; known: {sorted(out)}.")
    out.update(given.to_dict())
  rules = {k: v for k, v in methods.RULES.items() if k.startswith(f"{name}.")}
  found = validation.problems({name: out}, rules)
  if found:
    raise validation.ConfigError("; ".join(found) + ".")
  return ml_collections.ConfigDict(out)


def round_timing(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Wall time of a federated run from its metrics rows.

  `wall_time_s` sums the per-round times. The first round also compiles, and so does the first
  round after a resume (`driver.ROUND_COMPILES`), so `steady_time_s` replaces each of those by
  the median of the other rounds (the compile-free time, comparable with methods that report
  their compile time separately). When every round compiles (a one-round run) there is no such
  median, and `steady_time_s` is the shortest round, compilation included: an upper bound.
  """
  rows = [r for r in rows if "round_time_s" in r]
  times = [float(r["round_time_s"]) for r in rows]
  if not times:
    return dict(wall_time_s=0.0, steady_time_s=0.0, rounds=0)
  compiles = [i == 0 or bool(r.get(driver.ROUND_COMPILES)) for i, r in enumerate(rows)]
  steady_rounds = [t for t, c in zip(times, compiles) if not c]
  median = float(np.median(steady_rounds)) if steady_rounds else min(times)
  steady = sum(min(t, median) if c else t for t, c in zip(times, compiles))
  return dict(wall_time_s=sum(times), steady_time_s=steady, rounds=len(times),
              round_time_median_s=median)


def retain_pool(ctx: base.UnlearningContext, retain_source: str) -> list[np.ndarray]:
  """Per holder (`request.holders` order), the texts its retain batches draw from:
  'local' its retained pairs, 'public' the public split, 'none' nothing."""
  if retain_source not in RETAIN_SOURCES:
    raise ValueError(f"retain_source must be one of {RETAIN_SOURCES}, got {retain_source!r}.")
  setup, req = ctx.setup, ctx.request
  if retain_source == "local":
    retain_texts = req.retain_client_texts(setup)
    return [np.asarray(retain_texts[h], np.int32) for h in req.holders]
  source = (setup.texts_of(setup.public_images) if retain_source == "public"
            else np.zeros((0,), np.int32))
  return [np.asarray(source, np.int32) for _ in req.holders]


def require_retain(ctx: base.UnlearningContext, retain_source: str, method: str) -> None:
  """Refuses a retain source that leaves some holder without retain data (unless it is 'none').

  An empty source gives all-False retain masks: the method would silently run without its
  retention terms on those holders.
  """
  if retain_source == "none":
    return
  holders = ctx.request.holders
  empty = [int(h) for h, t in zip(holders, retain_pool(ctx, retain_source)) if len(t) == 0]
  if not empty:
    return
  why = ("the setup has no public split" if retain_source == "public" else
         f"holder(s) {empty} keep no pairs once D_f is removed (a client request's leaving "
         "clients keep nothing)")
  raise ValueError(f"{method}: retain_source={retain_source!r} gives holder(s) {empty} no retain "
                   f"data: {why}. Use another retain_source ('public' needs a public split), or "
                   "'none' to run without the retain terms on purpose.")


def holder_schedules(ctx: base.UnlearningContext, steps: int, batch_size: int,
                     retain_source: str, forget_stream: int, retain_stream: int
                     ) -> tuple[dict[str, federated.Batches], np.ndarray]:
  """Per holder of forget data, `steps` forget and retain batches and the FedAvg weights.

  Returns `({"forget": Batches [H, S, B], "retain": Batches [H, S, B]}, weights [H] = |D_f ∩
  D_h|)`. retain_source: 'local' (the holder's retained pairs), 'public' (the public split) or
  'none' (all-False retain masks). The streams (`rng.Stream`) separate methods' draws.
  """
  setup, req = ctx.setup, ctx.request
  seed = ctx.config.seeds.unlearning
  forget_texts = req.forget_client_texts(setup)
  forget, retain = [], []
  for h, source in zip(req.holders, retain_pool(ctx, retain_source)):
    forget.append(federated.cycled_batches(forget_texts[h], steps, batch_size,
                                           rng_lib.stream_seed(seed, forget_stream, h)))
    retain.append(federated.cycled_batches(source, steps, batch_size,
                                           rng_lib.stream_seed(seed, retain_stream, h)))
  stack = lambda rows: federated.Batches(np.stack([r.text_indices for r in rows]),
                                         np.stack([r.mask for r in rows]))
  weights = np.asarray([len(forget_texts[h]) for h in req.holders], np.float32)
  return dict(forget=stack(forget), retain=stack(retain)), weights


def test_halves(setup: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(calibration, audit) halves of the test split, each sorted: the methods calibrate their
  non-member level on the first, the MIA draws its non-members from the second. On one set the
  MIA's negatives would be the very pairs a method was tuned to match (AUC near 0.5 by
  construction)."""
  rng = rng_lib.numpy_rng(seed, rng_lib.Stream.TEST_HALVES)
  shuffled = rng.permutation(np.asarray(setup.test_images))
  half = len(shuffled) // 2
  return np.sort(shuffled[:half]), np.sort(shuffled[half:])


def mia_nonmembers(setup: Any, config: Any, forget_images: np.ndarray) -> np.ndarray:
  """Text ids of the MIA's non-members: test images of the audit half (`test_halves`) matched to
  the forget images' `data.label` mix, min(|forget images|, |audit half|) of them."""
  labels = (np.asarray(setup.dataset.image_meta[config.data.label])
            if config.data.get("label") in setup.dataset.image_meta else None)
  audit_half = test_halves(setup, config.seeds.unlearning)[1]
  return setup.texts_of(mia.matched_nonmembers(forget_images, audit_half, labels,
                                               seed=config.seeds.unlearning))


def warm_up_embedding(setup: Any, trainable: PyTree) -> None:
  """Compiles `federated.embed`'s fixed-size batch for this model and adapter layout (one pair),
  so that no timed method pays it: every later embedding of any size reuses that program."""
  federated.embed(setup.model, setup.backbone, trainable, setup.data,
                  np.asarray(setup.test_images[:1]), setup.texts_of(setup.test_images[:1])[:1])


def nonmember_cosines(ctx: base.UnlearningContext, split: str) -> np.ndarray:
  """Matched-pair cosines of non-member pairs under the trained model: what retraining shows on
  data it never saw. `split`: 'test' (its calibration half, `test_halves`) or 'public'."""
  setup = ctx.setup
  calibration = test_halves(setup, ctx.config.seeds.unlearning)[0]
  images = {"test": calibration, "public": setup.public_images}.get(split)
  if images is None or len(images) == 0:
    raise ValueError(f"calibration_split must be one of {CALIBRATION_SPLITS} (non-empty), got "
                     f"{split!r}.")
  return federated.matched_cosines(setup.model, setup.backbone, ctx.trained, setup.data,
                                   setup.texts_of(images))


def nonmember_level(ctx: base.UnlearningContext, quantile: float, split: str) -> float:
  """The `quantile` of non-member matched cosines (EASE's BKE target, the ascent stop level)."""
  return float(np.quantile(nonmember_cosines(ctx, split), quantile))


def alignment_gap(model: CLIP, backbone: PyTree, trainable: PyTree, data: federated.DeviceData,
                  texts: np.ndarray) -> float:
  """Mean matched − mean unmatched cosine of `texts`' pairs (a cheap utility proxy)."""
  texts = np.asarray(texts, np.int32)
  ie, te = federated.embed(model, backbone, trainable, data, np.asarray(data.text_image)[texts],
                           texts)
  ie = ie / np.linalg.norm(ie, axis=1, keepdims=True)
  te = te / np.linalg.norm(te, axis=1, keepdims=True)
  s = ie @ te.T
  n = len(texts)
  return float(np.trace(s) / n - (s.sum() - np.trace(s)) / max(n * (n - 1), 1))


def utility_texts(ctx: base.UnlearningContext, n: int = 256) -> np.ndarray:
  """A fixed sample of public pairs (retained ones if there is no public split)."""
  pool = ctx.setup.texts_of(ctx.setup.public_images)
  if len(pool) == 0:
    pool = ctx.setup.texts_of(ctx.eval_subsets["retain"])
  rng = rng_lib.numpy_rng(ctx.config.seeds.unlearning, rng_lib.Stream.UTILITY_SAMPLE)
  return np.sort(rng.choice(pool, min(n, len(pool)), replace=False))


def client_counts(setup: builders.FederatedSetup) -> np.ndarray:
  """`[K]` each client's number of training texts (the FedAvg weights as trained)."""
  return np.array([len(t) for t in setup.client_texts()], np.float32)


def kept_counts(ctx: base.UnlearningContext) -> np.ndarray:
  """`[K]` each client's number of retained texts."""
  return np.array([len(t) for t in ctx.retain_client_texts], np.float32)


def retain_plan(ctx: base.UnlearningContext, offset: int = 0) -> federated.RoundPlan:
  """Round inputs of FedAvg continued on the retained clients' retain data, drawing fresh
  samples and shuffles (round index offset by `fed.rounds + offset`)."""
  return builders.round_plan(ctx.setup, ctx.config, ctx.retain_client_texts, ctx.retain_clients,
                             round_offset=ctx.config.fed.rounds + offset)


def continue_fedavg(ctx: base.UnlearningContext, start: PyTree, rounds: int, offset: int = 0,
                    desc: str = "baseline FedAvg"
                    ) -> tuple[PyTree, list[dict[str, Any]], float]:
  """FedAvg on the retained clients' retain data from `start`: (θ, rows, steady seconds)."""
  if rounds <= 0:
    return start, [], 0.0
  res = training.run_fedavg(ctx.setup, ctx.config, None, trainable=start, num_rounds=rounds,
                            plan=retain_plan(ctx, offset),
                            options=training.run_options(ctx.setup, ctx.config, desc=desc,
                                                         progress=False))
  return res.trainable, res.metrics, round_timing(res.metrics)["steady_time_s"]


def embedding_objective(model: CLIP, step_loss: Callable[..., tuple[jax.Array, dict]]
                        ) -> federated.LossFn:
  """A local loss over the current and the original (trained) model's embeddings of one step's
  forget and retain batches (CCU, MVI).

  `step_loss(params, backbone, emb, orig, forget_batch, retain_batch, aux) -> (loss, terms)`,
  with `emb` / `orig` holding `img_f, txt_f, img_r, txt_r` (`[B, D]`) and the batches holding
  `pixels`, `input_ids`, `attention_mask` and `mask` (`[B]` valid rows); context =
  `{"original": the trained LoRA tree, "aux": method constants}` (both constants for the
  optimiser).
  """

  def embed(params, backbone, b):
    ie, te, _ = model(backbone, params, b["pixels"], b["input_ids"], b["attention_mask"])
    return ie, te

  def loss_fn(params, backbone, batch, context):
    fb, rb = batch["forget"], batch["retain"]
    original = jax.lax.stop_gradient(context["original"])
    o_f, o_r = embed(original, backbone, fb), embed(original, backbone, rb)
    e_f, e_r = embed(params, backbone, fb), embed(params, backbone, rb)
    orig = dict(img_f=o_f[0], txt_f=o_f[1], img_r=o_r[0], txt_r=o_r[1])
    emb = dict(img_f=e_f[0], txt_f=e_f[1], img_r=e_r[0], txt_r=e_r[1])
    return step_loss(params, backbone, emb, orig, fb, rb, context["aux"])

  return loss_fn


def clip_term(model: CLIP, params: PyTree, backbone: PyTree, retain_batch: Mapping[str, Any],
              weight: float) -> jax.Array:
  """weight × the CLIP loss of the retain batch (0 without computing it when weight is 0)."""
  if weight == 0:
    return jnp.zeros(())
  rb = retain_batch
  ie, te, ls = model(backbone, params, rb["pixels"], rb["input_ids"], rb["attention_mask"])
  return weight * losses.clip_loss(ie, te, ls, rb["mask"], text_tokens=rb["input_ids"])


def run_embedding_holders(ctx: base.UnlearningContext, name: str, c: ml_collections.ConfigDict,
                          step_loss: Callable, aux: Any, streams: tuple[int, int],
                          prep_s: float) -> base.MethodResult:
  """The holders' `c.steps` local steps of an `embedding_objective`, FedAvg of their updates
  (weights |D_f ∩ D_h|), then `c.rounds` of FedAvg on the retained clients. `name` (the
  method's) labels errors: a `c.retain_source` that leaves a holder without retain data is one."""
  setup = ctx.setup
  require_retain(ctx, c.retain_source, name)
  batches, weights = holder_schedules(ctx, c.steps, c.batch_size, c.retain_source, *streams)
  steps = federated.local_steps(
      embedding_objective(setup.model, step_loss),
      builders.make_optimizer(c.optimizer, c.lr, freeze_lora_a=setup.lora_config.freeze_a,
                              clip_norm=c.get("clip_norm", 0.0)), has_aux=True)
  holders = federated.holders_update(steps)

  @jax.jit
  def run(trainable, backbone, data, batches, weights, context):
    delta, metrics = holders(trainable, backbone, data, batches, weights, context)
    return jax.tree.map(jnp.add, trainable, delta), metrics

  (theta, metrics), compile_s, run_s = base.TimedJit(run)(
      ctx.trained, setup.backbone, setup.data, jax.tree.map(jnp.asarray, batches),
      jnp.asarray(weights), dict(original=ctx.trained, aux=aux))
  final, rows, post_s = continue_fedavg(ctx, theta, c.rounds)
  diag = {f"last_{k[len('step_'):]}": np.asarray(v)[:, -1].tolist()
          for k, v in metrics.items() if k.startswith("step_") and k not in
          ("step_loss", "step_active")}
  diag.update(steps=c.steps, rounds=c.rounds, post_time_s=post_s)
  return base.MethodResult(final, wall_time_s=prep_s + run_s + post_s, compile_time_s=compile_s,
                           diagnostics=diag, curves=rows)
