"""EASE: GSD (unique subspace) + BKE (bilateral excision) + PFL (projection with Forget Lock).

* GSD: `gsd_inputs` stacks the forget side's and each retained client's updates per LoRA module;
  `batched_gsd` (`subspace.gsd` vmapped over modules) gives the forget-exclusive bases U_u.
* BKE: the holders of D_f run `federated.local_steps` of the bounded bilateral loss on D_f plus
  λ_r × the CLIP loss on retain data (a tower mask for the unilateral ablations); the server
  averages (`federated.holders_update`) and keeps P_u Δ (`unlearning.projection`).
* PFL: FedAvg continued on the retained clients, an instance of `federated.fedavg_algorithm`:
  server (I − P_u) on each aggregate, client objective L + λ/2 ‖P_u(θ − θ*)‖², drift per round.

[ours] choices, all config options (`CONFIG_BLOCKS` below is the one source of their defaults):
  * forget side of GSD: client unlearning uses the leaving clients' last M transmitted updates
    (M = `fed.history_size`); sample/concept unlearning uses M per-minibatch gradients of the
    CLIP loss on each holder's D_f (minibatches of at most half its pairs,
    `gradient_batch_size`, so that they differ), and each holder's retain stack is replaced by M
    minibatch gradients on its own D_r (its transmitted updates mix D_f in, which would mark
    forget directions as shared);
  * BKE target (`bke.target`): 'unmatched' = losses.bounded_unalignment_loss's own level (mean
    cosine to the batch's other captions, identical captions left out, + margin); 'nonmember' (default) = the `bke.target_quantile` quantile of the
    matched-pair cosines of non-member pairs (`bke.calibration_split`) under the trained model,
    plus margin. Why: the reference is retraining, under which D_f is *unseen* data; unseen
    matched pairs still align far above the unmatched level, so pushing to the unmatched level
    over-forgets (forget R@1 far below retrain's), while the non-member level is what retrain
    shows on D_f;
  * BKE retain term data (`bke.retain_source`): 'local' (the holder's D_r; a leaving client has
    none), 'public' (the public split, which any client may hold) or 'none'.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from ease_jax import builders
from ease_jax import checkpointing
from ease_jax import evaluation
from ease_jax import federated
from ease_jax import lora as lora_lib
from ease_jax import losses
from ease_jax import rng as rng_lib
from ease_jax import subspace
from ease_jax import training
from ease_jax.model import CLIP
from ease_jax import validation as check
from ease_jax.unlearning import base
from ease_jax.unlearning import common
from ease_jax.unlearning import projection as proj

PyTree = Any
TOWERS = ("both", "vision", "text")
TARGETS = ("nonmember", "unmatched")

CONFIG_BLOCKS: dict[str, dict[str, Any]] = dict(
    # GSD [paper: per-client SVD, principal angles, CS decomposition; values ours].
    gsd=dict(
        enabled=True,              # False: the `ease_no_gsd` ablation (no projection of Δ)
        energy=0.9,                # η of U_f and of each retained client's basis
        retain_energy=0.99,        # η of the union U_R
        max_rank=16,               # rank cap per basis
        angle_threshold_deg=45.0,  # ϑ*: exclusive directions have principal angle ≥ ϑ*
        method="gram",             # 'gram' | 'qr' | 'svd'
    ),
    # BKE [paper: displace both branches; loss ours].
    bke=dict(
        towers="both",             # 'both' | 'vision' | 'text' (unilateral ablations)
        steps=30,
        batch_size=32,
        optimizer="adam",
        lr=2e-3,
        target="nonmember",        # 'nonmember' (calibrated) | 'unmatched' (mean unmatched cos)
        target_quantile=0.5,       # nonmember: quantile of non-member matched cosines
        calibration_split="test",  # nonmember: 'test' (unseen pairs) | 'public'
        margin=0.0,
        retain_weight=1.0,         # λ_r of the CLIP retain term
        retain_source="public",    # 'local' | 'public' | 'none'
    ),
    # PFL [paper: projection + client forget lock; formulas ours].
    pfl=dict(
        rounds=3,                  # continued FedAvg rounds after unlearning (0 = none)
        server_projection=True,    # server applies (I − P_u) to each aggregate
        lock_lambda=10.0,          # λ of the client lock λ/2 ‖P_u(θ − θ*)‖² (0 = no lock)
        eval_every=1,              # forget-side R@1 every k PFL rounds (the re-anchoring curve)
    ),
)
_GSD = CONFIG_BLOCKS["gsd"]
# Part of a benchmark row's cache key (`benchmark.row_keys`), bumped when a change of this code
# moves the method's rows, so that a resumed benchmark recomputes them instead of keeping the
# old ones. 2: GSD's forget-side minibatches (`gradient_batch_size`, session 25). 3: the
# compilation of GSD's gradient stacks counted as compile time, not work (session 44; only the
# times move).
ROWS_VERSION = 3
RULES = {
    "gsd.enabled": check.boolean, "gsd.energy": check.fraction, "gsd.retain_energy": check.fraction,
    "gsd.max_rank": check.integer(1), "gsd.angle_threshold_deg": check.real(0.0, 90.0),
    "gsd.method": check.one_of("gram", "qr", "svd"),
    "bke.towers": check.one_of(*TOWERS), "bke.steps": check.integer(1),
    "bke.batch_size": check.integer(1),
    "bke.optimizer": check.one_of("adam", "adamw", "sgd"), "bke.lr": check.positive,
    "bke.target": check.one_of(*TARGETS), "bke.target_quantile": check.probability,
    "bke.calibration_split": check.one_of(*common.CALIBRATION_SPLITS),
    "bke.margin": check.real(-2.0, 2.0),
    "bke.retain_weight": check.non_negative,
    "bke.retain_source": check.one_of(*common.RETAIN_SOURCES),
    "pfl.rounds": check.integer(0), "pfl.server_projection": check.boolean,
    "pfl.lock_lambda": check.non_negative, "pfl.eval_every": check.integer(0),
}


# ------------------------------------------------------------------------------------ GSD


@dataclasses.dataclass(frozen=True)
class GSDConfig:
  """GSD hyperparameters ([paper] names; values ours, from `CONFIG_BLOCKS['gsd']`)."""
  energy: float = _GSD["energy"]
  retain_energy: float = _GSD["retain_energy"]
  max_rank: int = _GSD["max_rank"]
  angle_threshold_deg: float = _GSD["angle_threshold_deg"]
  method: str = _GSD["method"]

  @classmethod
  def from_config(cls, c: Mapping[str, Any]) -> "GSDConfig":
    return cls(energy=c["energy"], retain_energy=c["retain_energy"], max_rank=c["max_rank"],
               angle_threshold_deg=c["angle_threshold_deg"], method=c["method"])


@functools.partial(jax.jit, static_argnames=("cfg",))
def batched_gsd(forget: jax.Array, retain: jax.Array, cfg: GSDConfig) -> subspace.GSDResult:
  """`subspace.gsd` per module: forget `[modules, m, d]`, retain `[modules, k, m, d]` (zero rows
  and clients are padding) -> `GSDResult` with a leading `[modules]` axis."""
  fn = functools.partial(subspace.gsd, energy=cfg.energy, max_rank=cfg.max_rank,
                         angle_threshold_rad=math.radians(cfg.angle_threshold_deg),
                         method=cfg.method, retain_energy=cfg.retain_energy)
  return jax.vmap(fn)(forget, retain)


def minibatch_gradients(loss_fn: federated.LossFn) -> Callable[..., jax.Array]:
  """`(trainable, backbone, data, Batches [M, B]) -> [M, P]` flat per-batch gradients."""

  @jax.jit
  def grads(trainable, backbone, data, batches):
    def one(b):
      g = jax.grad(loss_fn)(trainable, backbone, dict(data.batch(b.text_indices), mask=b.mask))
      return ravel_pytree(g)[0]
    return jax.lax.map(one, batches)

  return grads


def gsd_inputs(ctx: base.UnlearningContext, layout: proj.ModuleLayout, m: int
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Forget `[modules, m_f, d]` and retain `[modules, k, M, d]` stacks (see module docstring)."""
  setup, req = ctx.setup, ctx.request
  retain = ctx.retain_clients
  info: dict[str, Any] = dict(gsd_stack_compile_s=0.0)  # the gradient stacks' (sample, concept)
  if req.kind == "client":
    forget_flat = ctx.history.stack(req.forget_clients)  # [F, M, P]
    forget_flat = forget_flat.reshape(-1, forget_flat.shape[-1])
    retain_flat = ctx.history.stack(retain)
    info["forget_side"] = "transmitted updates"
  else:
    batch_size, seed = ctx.config.fed.batch_size, ctx.config.seeds.unlearning
    # Plain InfoNCE: a forget set of one caption (a backdoor's poisoned pairs) would give zero
    # gradients if its copies were not each other's negatives.
    # Compiled apart from running (one executable per minibatch shape), so that the method's
    # time is its work, as every method's is; the compile seconds go to its compile time.
    grads = base.TimedJit(minibatch_gradients(federated.clip_objective(
        setup.model, identical_captions_as_negatives=True)))
    forget_texts = req.forget_client_texts(setup)
    retain_texts = req.retain_client_texts(setup)

    def gradients(texts, stream, c, n, size):
      out, compile_s, _ = grads(ctx.trained, setup.backbone, setup.data, federated.cycled_batches(
          texts, n, size, rng_lib.stream_seed(seed, stream, c)))
      info["gsd_stack_compile_s"] += compile_s
      return np.asarray(out)

    forget_flat = np.concatenate([
        gradients(forget_texts[h], rng_lib.Stream.GSD_FORGET_GRADIENTS, h, m,
                  gradient_batch_size(len(forget_texts[h]), batch_size))
        for h in req.holders])
    retain_flat = ctx.history.stack(retain)
    for row, c in enumerate(retain):
      if c in req.holders:  # Its updates mix D_f in: use gradients on its own D_r instead.
        retain_flat[row] = gradients(retain_texts[c], rng_lib.Stream.GSD_RETAIN_GRADIENTS, c,
                                     retain_flat.shape[1], batch_size)
    info["forget_side"] = "per-minibatch gradients"
  # A NaN would make every singular value NaN and the client's basis silently empty: a retained
  # client would drop out of U_R, or U_u would fall back to all of U_f.
  for side, flat in (("forget", forget_flat), ("retain", retain_flat)):
    bad = ~np.all(np.isfinite(flat), axis=-1)
    if bad.any():
      raise ValueError(f"GSD: {int(bad.sum())} of the {side} side's {bad.size} update or "
                       f"gradient rows hold NaN or inf; the subspaces would be meaningless.")
  forget = np.asarray(proj.to_modules(layout, jnp.asarray(forget_flat)))        # [m_f, n, d]
  retain_m = np.asarray(proj.to_modules(layout, jnp.asarray(retain_flat)))      # [k, M, n, d]
  return np.moveaxis(forget, 1, 0), np.moveaxis(retain_m, 2, 0), info


def gradient_batch_size(num_pairs: int, batch_size: int) -> int:
  """Pairs per minibatch of GSD's forget-side gradients on a holder's `num_pairs` pairs: at most
  half of them (at least 2), so that the M minibatches are different subsets. With
  `fed.batch_size`, every minibatch of a holder with few pairs would hold all of them, its M
  gradients would be one, and it would add a single direction to U_f (160 concept copies over
  8 clients are 20 pairs per holder). Two or three pairs still give one or few subsets; one pair
  gives a zero gradient (no negative), which `compute_gsd` refuses if every holder has one."""
  return int(min(batch_size, max(2, num_pairs // 2)))


def _config_key(config: ml_collections.ConfigDict, without: tuple[str, ...]) -> str:
  """A cache key of everything in `config` but the blocks `without` (which the cached step does
  not read): GSD reads `fed.history_size`, `fed.batch_size` and `seeds.unlearning` besides its
  own block, so a variant overriding any of them must not reuse another's subspace."""
  kept = {k: v for k, v in config.items() if k not in without}
  return checkpointing.fingerprint_hash(checkpointing.fingerprint(kept))


def compute_gsd(ctx: base.UnlearningContext) -> dict[str, Any]:
  """The per-module unique subspace (cached in `ctx.cache` per GSD config) and its timing."""
  cfg = GSDConfig.from_config(common.block(ctx.config, "gsd", CONFIG_BLOCKS["gsd"]))
  key = ("gsd", _config_key(ctx.config, without=("bke", "pfl")))
  if key in ctx.cache:
    return ctx.cache[key]
  if ctx.config.fed.history_size < 1:
    raise ValueError("EASE's GSD stacks the last fed.history_size updates or gradients per "
                     "client (its M); set fed.history_size >= 1.")
  layout = proj.module_layout(ctx.trained)
  t0 = time.perf_counter()
  forget, retain, info = gsd_inputs(ctx, layout, ctx.config.fed.history_size)
  stack_compile_s = info["gsd_stack_compile_s"]
  stack_s = time.perf_counter() - t0 - stack_compile_s
  res, compile_s, run_s = base.TimedJit(batched_gsd)(jnp.asarray(forget), jnp.asarray(retain),
                                                       cfg=cfg)
  if not np.any(np.asarray(res.forget_rank)):
    raise ValueError(f"GSD found no forget direction in any module: every forget-side "
                     f"{info['forget_side']} row is zero (a holder with a single forget pair has "
                     "a zero contrastive loss), so EASE would excise nothing.")
  angles = np.degrees(np.asarray(res.angles))
  diag = dict(
      info, modules=list(layout.names),
      forget_rank=np.asarray(res.forget_rank).tolist(),
      retain_rank=np.asarray(res.retain_rank).tolist(),
      unique_rank=np.asarray(res.unique_rank).tolist(),
      angles_deg=[np.round(row[:int(r)], 2).tolist()
                  for row, r in zip(angles, np.asarray(res.forget_rank))],
      gsd_stack_s=stack_s, gsd_run_s=run_s, gsd_compile_s=compile_s)
  out = dict(layout=layout, result=res, diagnostics=diag, time_s=stack_s + run_s,
             compile_s=compile_s + stack_compile_s)
  ctx.cache[key] = out
  return out


# ------------------------------------------------------------------------------------ BKE


def bke_objective(model: CLIP, retain_weight: float, target_mode: str, margin: float,
                  use_retain: bool) -> federated.LossFn:
  """BKE's local loss on `{"forget", "retain"}` batches: bounded_unalignment(D_f batch) +
  retain_weight · CLIP(retain batch). context = {"target": the 'nonmember' cosine bound (+ margin),
  "grad_mask": a bool `lora.tower_mask` tree: the frozen tower gets no gradient, so Adam leaves
  it exactly fixed}. Aux: the forget and retain terms."""
  if target_mode not in TARGETS:
    raise ValueError(f"bke.target must be one of {TARGETS}, got {target_mode!r}.")

  def loss_fn(params, backbone, batch, context):
    params = jax.tree.map(lambda p, m: jnp.where(m, p, jax.lax.stop_gradient(p)), params,
                          context["grad_mask"])
    fb, rb = batch["forget"], batch["retain"]
    ie, te, _ = model(backbone, params, fb["pixels"], fb["input_ids"], fb["attention_mask"])
    if target_mode == "nonmember":
      l_f = losses.bounded_unalignment_loss(ie, te, fb["mask"], target=context["target"] + margin)
    else:
      l_f = losses.bounded_unalignment_loss(ie, te, fb["mask"], margin=margin,
                                            text_tokens=fb["input_ids"])
    l_r = jnp.zeros(())
    if use_retain:
      ie_r, te_r, ls = model(backbone, params, rb["pixels"], rb["input_ids"],
                             rb["attention_mask"])
      l_r = losses.clip_loss(ie_r, te_r, ls, rb["mask"], text_tokens=rb["input_ids"])
    return l_f + retain_weight * l_r, dict(forget=l_f, retain=l_r)

  return loss_fn


def make_excise_fn(layout: proj.ModuleLayout, holders: Callable) -> Callable:
  """Jitted server view of BKE: the holders' averaged Δ, then P_u Δ.

  `(trainable, backbone, data, batches {forget, retain} [H, S, B], weights [H], context, basis
  [modules, d, r], valid [modules, r], project) -> (θ*, metrics [H], Δ)`. With `project=False`
  (the no-GSD ablation) Δ is only restricted to the LoRA modules, as P_u would (no logit_scale
  change).
  """

  @jax.jit
  def excise(trainable, backbone, data, batches, weights, context, basis, valid, project):
    delta, metrics = holders(trainable, backbone, data, batches, weights, context)
    flat, unravel = ravel_pytree(delta)
    in_modules = proj.from_modules(layout, proj.to_modules(layout, flat))
    flat = jnp.where(project, proj.project_flat(layout, basis, valid, flat), in_modules)
    delta = unravel(flat)
    return jax.tree.map(jnp.add, trainable, delta), metrics, delta

  return excise


def run_bke(ctx: base.UnlearningContext, layout: proj.ModuleLayout, gsd_res: Any | None,
            target: float) -> tuple[PyTree, dict[str, Any], float, float]:
  """Holders' excision, FedAvg of their Δ (weights |D_f ∩ D_h|), then Δ ← P_u Δ.

  Returns (θ*, diagnostics, run_s, compile_s).
  """
  c, setup = common.block(ctx.config, "bke", CONFIG_BLOCKS["bke"]), ctx.setup
  if c.towers not in TOWERS:
    raise ValueError(f"bke.towers must be one of {TOWERS}, got {c.towers!r}.")
  batches, weights = common.holder_schedules(ctx, c.steps, c.batch_size, c.retain_source,
                                             rng_lib.Stream.BKE_FORGET, rng_lib.Stream.BKE_RETAIN)
  use_retain = c.retain_weight > 0 and bool(batches["retain"].mask.any())
  fn_key = ("excise_fn", c.optimizer, c.lr, c.retain_weight, c.target, c.margin, use_retain)
  if fn_key not in ctx.cache:  # One compilation for every variant with these settings.
    steps = federated.local_steps(
        bke_objective(setup.model, c.retain_weight, c.target, c.margin, use_retain),
        builders.make_optimizer(c.optimizer, c.lr, freeze_lora_a=setup.lora_config.freeze_a),
        has_aux=True)
    ctx.cache[fn_key] = base.TimedJit(make_excise_fn(layout, federated.holders_update(steps)))
  if gsd_res is not None:
    basis, valid = gsd_res.unique_basis, gsd_res.unique_valid
  else:
    max_rank = common.block(ctx.config, "gsd", CONFIG_BLOCKS["gsd"]).max_rank
    basis = jnp.zeros((layout.num_modules, layout.dim, max_rank), jnp.float32)
    valid = jnp.zeros((layout.num_modules, max_rank), bool)
  context = dict(target=jnp.float32(target),
                 grad_mask=lora_lib.tower_mask(ctx.trained, c.towers))
  args = (ctx.trained, setup.backbone, setup.data, jax.tree.map(jnp.asarray, batches),
          jnp.asarray(weights), context, basis, valid, jnp.asarray(gsd_res is not None))
  (theta_star, m, delta), compile_s, run_s = ctx.cache[fn_key](*args)
  diag = dict(bke_forget_loss_first=np.asarray(m["step_forget"][:, 0]).tolist(),
              bke_forget_loss_last=np.asarray(m["step_forget"][:, -1]).tolist(),
              bke_retain_loss_last=np.asarray(m["step_retain"][:, -1]).tolist(),
              bke_delta_norm=float(jnp.linalg.norm(ravel_pytree(delta)[0])),
              bke_target=float(target), bke_use_retain=use_retain)
  return theta_star, diag, run_s, compile_s


def bke_target(ctx: base.UnlearningContext) -> tuple[float, dict[str, Any]]:
  """The calibrated cosine bound of `bke.target='nonmember'` (unused for 'unmatched')."""
  c, setup = common.block(ctx.config, "bke", CONFIG_BLOCKS["bke"]), ctx.setup
  if c.target != "nonmember":
    return 0.0, {}
  cos_nm = common.nonmember_cosines(ctx, c.calibration_split)
  cos_f = federated.matched_cosines(setup.model, setup.backbone, ctx.trained, setup.data,
                                    ctx.request.forget_texts)
  target = float(np.quantile(cos_nm, c.target_quantile))
  return target, dict(nonmember_cos_mean=float(cos_nm.mean()),
                      forget_cos_mean_before=float(cos_f.mean()), nonmember_target=target)


# ------------------------------------------------------------------------------------ PFL


def lock_objective(base_loss: federated.LossFn, layout: proj.ModuleLayout, basis: jax.Array,
                   valid: jax.Array, anchor: PyTree, lam: float) -> federated.LossFn:
  """Client objective L(θ) + λ/2 ‖P_u(θ − θ*)‖² (the Forget Lock); `base_loss` if λ = 0.

  With SGD local steps the pull bounds the drift along U_u by ~G/λ (stable for lr·λ < 2);
  Adam normalises the pull, so the drift there is bounded by ~lr per step whatever λ.
  """
  if lam < 0:
    raise ValueError(f"pfl.lock_lambda must be >= 0, got {lam}.")
  if lam == 0:
    return base_loss
  anchor_flat = ravel_pytree(anchor)[0]

  def loss_fn(trainable, backbone, batch, context=None):
    diff = ravel_pytree(trainable)[0] - anchor_flat
    drift = subspace.batched_project(basis, valid, proj.to_modules(layout, diff))
    return base_loss(trainable, backbone, batch, context) + 0.5 * lam * jnp.sum(
        jnp.square(drift))

  return loss_fn


def pfl_algorithm(ctx: base.UnlearningContext, layout: proj.ModuleLayout, gsd_res: Any | None,
                  theta_star: PyTree, plan: federated.RoundPlan, config: Any
                  ) -> federated.FederatedAlgorithm:
  """FedAvg with the server projection (I − P_u), the client Forget Lock and the drift metric
  (plain FedAvg when there is no subspace)."""
  c = common.block(config, "pfl", CONFIG_BLOCKS["pfl"])
  if gsd_res is None:
    return builders.fedavg_algorithm(ctx.setup, config, plan)
  basis, valid = gsd_res.unique_basis, gsd_res.unique_valid
  transform = (functools.partial(proj.complement_tree, layout, basis, valid)
               if c.server_projection else None)
  loss_fn = lock_objective(federated.clip_objective(ctx.setup.model), layout, basis, valid,
                           theta_star, c.lock_lambda)
  drift = proj.drift_fn(layout, basis, valid, theta_star)
  return builders.fedavg_algorithm(ctx.setup, config, plan, loss_fn, transform,
                                   lambda t: dict(drift=drift(t)))


def run_pfl(ctx: base.UnlearningContext, layout: proj.ModuleLayout, gsd_res: Any | None,
            theta_star: PyTree, name: str) -> tuple[PyTree, list[dict[str, Any]]]:
  """Post-unlearning FedAvg with the retained clients; rows with the forget-side R@1 and drift."""
  c, setup = common.block(ctx.config, "pfl", CONFIG_BLOCKS["pfl"]), ctx.setup
  config = base.config_with(ctx.config, {"eval.every": c.eval_every})
  subsets = {"forget": ctx.eval_subsets["forget"]}

  def evaluate(trainable):  # Forget-side R@1 and every plant's attack success: re-anchoring.
    row = evaluation.evaluate_splits(setup, trainable, subsets)
    for plant in setup.plants.values():
      row.update(evaluation.plant_metrics(setup, trainable, plant))
    return row

  first = dict(round=0, drift=0.0, **evaluate(theta_star))
  plan = common.retain_plan(ctx)
  options = dataclasses.replace(
      training.run_options(setup, config, desc=f"PFL {name}", progress=False),
      eval_fn=evaluate, eval_every=c.eval_every)
  res = training.run_fedavg(
      setup, config, None, trainable=theta_star, num_rounds=c.rounds, plan=plan,
      algorithm=pfl_algorithm(ctx, layout, gsd_res, theta_star, plan, config), options=options)
  return res.trainable, [first] + res.metrics


# ------------------------------------------------------------------------- the EASE method


def ease_method(overrides: Mapping[str, Any] | None = None) -> base.Method:
  """An EASE variant: the config with `overrides` applied (e.g. {'bke.towers': 'vision'})."""

  def method(ctx: base.UnlearningContext) -> base.MethodResult:
    bke_cfg = common.block(ctx.config, "bke", CONFIG_BLOCKS["bke"])
    if bke_cfg.retain_weight > 0:  # Before the GSD: its work would be lost to the error.
      common.require_retain(ctx, bke_cfg.retain_source, "bke")
    gsd_cfg = common.block(ctx.config, "gsd", CONFIG_BLOCKS["gsd"])
    g = compute_gsd(ctx) if gsd_cfg.enabled else None
    layout = g["layout"] if g else proj.module_layout(ctx.trained)
    gsd_res = g["result"] if g else None
    # The excised model depends on the GSD and BKE blocks only: PFL variants share it.
    key = ("bke", _config_key(ctx.config, without=("pfl",)))
    if key not in ctx.cache:
      t0 = time.perf_counter()
      target, tdiag = bke_target(ctx)
      target_s = time.perf_counter() - t0
      ctx.cache[key] = (target_s, tdiag, *run_bke(ctx, layout, gsd_res, target))
    target_s, tdiag, theta_star, bdiag, bke_s, bke_compile = ctx.cache[key]
    gsd_s = g["time_s"] if g else 0.0
    diag = dict(**(g["diagnostics"] if g else {}), **tdiag, **bdiag, gsd_time_s=gsd_s,
                target_time_s=target_s, bke_projection_time_s=bke_s,
                compile_time_s=(g["compile_s"] if g else 0.0) + bke_compile)
    result = base.MethodResult(theta_star, wall_time_s=gsd_s + target_s + bke_s,
                               compile_time_s=diag["compile_time_s"], diagnostics=diag)
    if common.block(ctx.config, "pfl", CONFIG_BLOCKS["pfl"]).rounds > 0:
      after, curve = run_pfl(ctx, layout, gsd_res, theta_star, "ease")
      result.curves = curve
      result.continued["pfl"] = after
    return result

  return base.with_overrides(method, dict(overrides or {}))


# The registered variants. The BKE/GSD ablations skip PFL (they compare the excised model);
# the PFL ablations differ from `ease` in the continued rounds only and reuse its GSD.
VARIANTS: dict[str, dict[str, Any]] = {
    "ease": {},
    "ease_no_lock": {"pfl.lock_lambda": 0.0},
    "ease_no_pfl_projection": {"pfl.server_projection": False},
    "ease_no_pfl": {"pfl.server_projection": False, "pfl.lock_lambda": 0.0},
    "ease_unilateral_vision": {"bke.towers": "vision", "pfl.rounds": 0},
    "ease_unilateral_text": {"bke.towers": "text", "pfl.rounds": 0},
    "ease_no_gsd": {"gsd.enabled": False, "pfl.rounds": 0},
}
METHODS: dict[str, base.Method] = {name: ease_method(o) for name, o in VARIANTS.items()}
