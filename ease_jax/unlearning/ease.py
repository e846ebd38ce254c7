"""EASE: GSD (unique subspace) + BKE (bilateral excision) + PFL (projection with Forget Lock).

Pure pieces (jittable, no I/O):

* `ModuleLayout` / `module_layout`: where each adapted LoRA module's (A, B) lives in the flat
  `ravel_pytree` vector; `to_modules` gathers `[..., P] -> [..., modules, d]` (zero-padded to the
  largest module, so one `vmap` of `subspace.gsd` serves every module), `from_modules` scatters
  back. Leaves outside any module (a trainable `logit_scale`) are never projected: P_u is 0 and
  (I − P_u) is the identity there.
* `batched_gsd`: `subspace.gsd` vmapped over modules -> a `GSDResult` with a leading modules axis.
* `project_tree` (P_u) / `complement_tree` (I − P_u) of a LoRA-shaped tree.
* `make_bke_update`: the holders' local excision steps (bounded bilateral loss on D_f + λ_r ×
  CLIP loss on retain data), with a tower mask for the unilateral ablations.
* `lock_objective` / `drift_fn`: PFL's client objective L + λ/2 ‖P_u(θ − θ*)‖² and the drift.

`ease_method(overrides)` builds the registered methods (`ease` and its ablations) from them.
[ours] choices, all config options (see `experiments/configs/unlearn_emoji.py`):
  * forget side of GSD: client unlearning uses the leaving clients' last M transmitted updates;
    sample/concept unlearning uses M per-minibatch gradients of the CLIP loss on each holder's
    D_f, and each holder's retain stack is replaced by M minibatch gradients on its own D_r (its
    transmitted updates mix D_f in, which would mark forget directions as shared);
  * BKE target (`bke.target`): 'unmatched' = losses.bounded_unalignment_loss's own level (mean
    unmatched cosine + margin); 'nonmember' (default) = the `bke.target_quantile` quantile of the
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
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ease_jax import experiment
from ease_jax import federated
from ease_jax import lora as lora_lib
from ease_jax import losses
from ease_jax import subspace
from ease_jax.model import CLIP
from ease_jax.unlearning import base

PyTree = Any
TOWERS = ("both", "vision", "text")


# ----------------------------------------------------------------------------- module layout


@dataclasses.dataclass(frozen=True)
class ModuleLayout:
  """Per-module slices of the flat trainable vector.

  Attributes:
    names: `[modules]` module paths (`vision_model/.../q_proj`).
    index: `[modules, d]` int32 positions in the flat vector; `num_params` where padded.
    valid: `[modules, d]` bool, False on padding.
    num_params: P, the flat vector's length.
  """
  names: tuple[str, ...]
  index: np.ndarray
  valid: np.ndarray
  num_params: int

  @property
  def num_modules(self) -> int:
    return len(self.names)

  @property
  def dim(self) -> int:
    return int(self.index.shape[1])

  def tower_of(self, name: str) -> str:
    if name.startswith(lora_lib.VISION_PREFIX):
      return "vision"
    return "text" if name.startswith(lora_lib.TEXT_PREFIX) else "other"


def module_layout(trainable: PyTree) -> ModuleLayout:
  """The layout of `trainable`'s LoRA modules in `ravel_pytree(trainable)` order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(trainable)
  offsets, pos = {}, 0
  for path, leaf in leaves:  # ravel_pytree concatenates the leaves in this order.
    key = "/".join(str(getattr(k, "key", k)) for k in path)
    offsets[key] = (pos, int(np.size(leaf)))
    pos += int(np.size(leaf))
  names = lora_lib.module_paths(trainable)
  if not names:
    raise ValueError("The trainable tree has no LoRA module (no `.../a`, `.../b` leaves).")
  parts = []
  for name in names:
    idx = [np.arange(o, o + n) for o, n in (offsets[f"{name}/a"], offsets[f"{name}/b"])]
    parts.append(np.concatenate(idx))
  dim = max(len(p) for p in parts)
  index = np.full((len(names), dim), pos, np.int32)
  valid = np.zeros((len(names), dim), bool)
  for m, p in enumerate(parts):
    index[m, :len(p)] = p
    valid[m, :len(p)] = True
  return ModuleLayout(tuple(names), index, valid, pos)


def to_modules(layout: ModuleLayout, flat: jax.Array) -> jax.Array:
  """`[..., P]` -> `[..., modules, d]` (zeros on padding)."""
  flat = jnp.asarray(flat)
  padded = jnp.concatenate([flat, jnp.zeros(flat.shape[:-1] + (1,), flat.dtype)], axis=-1)
  return jnp.take(padded, jnp.asarray(layout.index), axis=-1)


def from_modules(layout: ModuleLayout, x: jax.Array) -> jax.Array:
  """`[modules, d]` -> `[P]`; entries outside every module are 0."""
  out = jnp.zeros((layout.num_params + 1,), x.dtype)
  out = out.at[jnp.asarray(layout.index).reshape(-1)].set(x.reshape(-1))
  return out[:-1]


# ------------------------------------------------------------------------------------ GSD


@dataclasses.dataclass(frozen=True)
class GSDConfig:
  """GSD hyperparameters ([paper] names; values ours)."""
  energy: float = 0.9            # η for the per-client / forget bases
  retain_energy: float = 0.99    # η for the union U_R (keep nearly all retained directions)
  max_rank: int = 16             # rank cap of U_f and of each client's basis
  angle_threshold_deg: float = 45.0  # ϑ*: exclusive directions have principal angle ≥ ϑ*
  method: str = "gram"           # 'gram', 'qr' or 'svd'

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "GSDConfig":
    return cls(energy=c.energy, retain_energy=c.retain_energy, max_rank=c.max_rank,
               angle_threshold_deg=c.angle_threshold_deg, method=c.method)


@functools.partial(jax.jit, static_argnames=("cfg",))
def batched_gsd(forget: jax.Array, retain: jax.Array, cfg: GSDConfig) -> subspace.GSDResult:
  """`subspace.gsd` per module.

  Args:
    forget: `[modules, m, d]` forget-side updates/gradients (zero rows = padding).
    retain: `[modules, k, m, d]` per retained client (zero clients = padding).
    cfg: hyperparameters.

  Returns:
    `GSDResult` with a leading `[modules]` axis: unique_basis `[modules, d, r]`, ...
  """
  fn = functools.partial(subspace.gsd, energy=cfg.energy, max_rank=cfg.max_rank,
                         angle_threshold_rad=math.radians(cfg.angle_threshold_deg),
                         method=cfg.method, retain_energy=cfg.retain_energy)
  return jax.vmap(fn)(forget, retain)


def project_flat(layout: ModuleLayout, basis: jax.Array, valid: jax.Array,
                 flat: jax.Array) -> jax.Array:
  """P_u on a flat vector `[P]` (module by module; 0 outside modules)."""
  mods = to_modules(layout, flat)
  return from_modules(layout, subspace.batched_project(basis, valid, mods))


def project_tree(layout: ModuleLayout, basis: jax.Array, valid: jax.Array, tree: PyTree
                 ) -> PyTree:
  """P_u Δ for a LoRA-shaped tree Δ."""
  flat, unravel = ravel_pytree(tree)
  return unravel(project_flat(layout, basis, valid, flat))


def complement_tree(layout: ModuleLayout, basis: jax.Array, valid: jax.Array, tree: PyTree
                    ) -> PyTree:
  """(I − P_u) Δ for a LoRA-shaped tree Δ."""
  flat, unravel = ravel_pytree(tree)
  return unravel(flat - project_flat(layout, basis, valid, flat))


def history_stack(history: federated.UpdateHistory, clients: Sequence[int]) -> np.ndarray:
  """`[len(clients), M, P]` of the clients' last M transmitted updates (zeros where empty)."""
  return np.stack([history.updates[c] * (history.rounds[c] >= 0)[:, None] for c in clients])


def make_minibatch_gradients(loss_fn: federated.LossFn) -> Callable[..., jax.Array]:
  """`(trainable, backbone, data, idx [M, B], mask [M, B]) -> [M, P]` flat per-batch gradients."""

  @jax.jit
  def grads(trainable, backbone, data, idx, mask):
    def one(xs):
      i, m = xs
      g = jax.grad(loss_fn)(trainable, backbone, dict(data.batch(i), mask=m))
      return ravel_pytree(g)[0]
    return jax.lax.map(one, (idx, mask))

  return grads


def sample_batches(texts: np.ndarray, num_batches: int, batch_size: int, seed: Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """`num_batches` batches cycling through shuffled epochs of `texts`: idx, mask `[S, B]`."""
  idx = np.zeros((num_batches, batch_size), np.int32)
  mask = np.zeros((num_batches, batch_size), bool)
  texts = np.asarray(texts, np.int32)
  if len(texts) == 0:
    return idx, mask
  rng = np.random.default_rng(list(seed))
  b = min(batch_size, len(texts))
  stream = np.concatenate([rng.permutation(texts)
                           for _ in range(-(-num_batches * b // len(texts)))])
  idx[:, :b] = stream[:num_batches * b].reshape(num_batches, b)
  mask[:, :b] = True
  return idx, mask


# ------------------------------------------------------------------------------------ BKE


def make_bke_update(model: CLIP, optimizer: optax.GradientTransformation, retain_weight: float,
                    target_mode: str, margin: float, use_retain: bool
                    ) -> Callable[..., tuple[PyTree, dict[str, jax.Array]]]:
  """One holder's excision: `(trainable, backbone, data, f_idx [S, B], f_mask, r_idx [S, B'],
  r_mask, target, grad_mask) -> (Δ, metrics)`.

  Loss per step: bounded_unalignment(D_f batch) + retain_weight · CLIP(retain batch). With
  `target_mode='nonmember'` the bound is the scalar `target` + margin; with 'unmatched' it is the
  batch's mean unmatched cosine + margin. `grad_mask` (a float `lora.tower_mask` tree, an
  argument so that the unilateral ablations share one compilation) zeroes the frozen tower's
  gradients; Adam then leaves those leaves exactly fixed.
  """
  if target_mode not in ("nonmember", "unmatched"):
    raise ValueError(f"bke.target must be 'nonmember' or 'unmatched', got {target_mode!r}.")

  def loss_fn(params, backbone, fb, rb, target):
    ie, te, _ = model(backbone, params, fb["pixels"], fb["input_ids"], fb["attention_mask"])
    if target_mode == "nonmember":
      l_f = losses.bounded_unalignment_loss(ie, te, fb["mask"], target=target + margin)
    else:
      l_f = losses.bounded_unalignment_loss(ie, te, fb["mask"], margin=margin)
    l_r = jnp.zeros(())
    if use_retain:
      ie_r, te_r, ls = model(backbone, params, rb["pixels"], rb["input_ids"],
                             rb["attention_mask"])
      l_r = losses.clip_loss(ie_r, te_r, ls, rb["mask"])
    return l_f + retain_weight * l_r, (l_f, l_r)

  def update(trainable, backbone, data, f_idx, f_mask, r_idx, r_mask, target, grad_mask):
    backbone = jax.lax.stop_gradient(backbone)

    def step(carry, xs):
      params, opt_state = carry
      fi, fm, ri, rm = xs
      fb = dict(data.batch(fi), mask=fm)
      rb = dict(data.batch(ri), mask=rm)
      (_, (l_f, l_r)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, backbone, fb, rb,
                                                                    target)
      g = jax.tree.map(jnp.multiply, g, grad_mask)
      upd, opt_state = optimizer.update(g, opt_state, params)
      return (optax.apply_updates(params, upd), opt_state), (l_f, l_r)

    (trained, _), (l_f, l_r) = jax.lax.scan(step, (trainable, optimizer.init(trainable)),
                                            (f_idx, f_mask, r_idx, r_mask))
    delta = jax.tree.map(jnp.subtract, trained, trainable)
    return delta, dict(forget_loss_first=l_f[0], forget_loss_last=l_f[-1],
                       retain_loss_last=l_r[-1])

  return update


def make_excise_fn(layout: ModuleLayout, update: Callable) -> Callable:
  """Jitted server view of BKE: holders' Δ (vmapped), weighted mean, then P_u Δ.

  `(trainable, backbone, data, f_idx [H, S, B], f_mask, r_idx [H, S, B'], r_mask, weights [H],
  target, grad_mask, basis [modules, d, r], valid [modules, r], project) -> (θ*, metrics, Δ)`.
  With `project=False` (the no-GSD ablation) Δ is only restricted to the LoRA modules, as P_u
  would (no logit_scale change).
  """

  @jax.jit
  def excise(trainable, backbone, data, f_idx, f_mask, r_idx, r_mask, weights, target,
             grad_mask, basis, valid, project):
    deltas, m = jax.vmap(update, in_axes=(None, None, None, 0, 0, 0, 0, None, None))(
        trainable, backbone, data, f_idx, f_mask, r_idx, r_mask, target, grad_mask)
    delta = federated.weighted_mean(deltas, weights)
    flat, unravel = ravel_pytree(delta)
    in_modules = from_modules(layout, to_modules(layout, flat))
    flat = jnp.where(project, project_flat(layout, basis, valid, flat), in_modules)
    delta = unravel(flat)
    return jax.tree.map(jnp.add, trainable, delta), m, delta

  return excise


def matched_cosines(model: CLIP, backbone: PyTree, trainable: PyTree,
                    data: federated.DeviceData, texts: np.ndarray) -> np.ndarray:
  """`[n]` cosine of each caption with its own image under (backbone, trainable)."""
  texts = np.asarray(texts, np.int32)
  images = np.asarray(data.text_image)[texts]
  ie, te = federated.embed(model, backbone, trainable, data, images, texts)
  ie = ie / np.linalg.norm(ie, axis=1, keepdims=True)
  te = te / np.linalg.norm(te, axis=1, keepdims=True)
  return np.sum(ie * te, axis=1)


# ------------------------------------------------------------------------------------ PFL


def lock_objective(base_loss: federated.LossFn, layout: ModuleLayout, basis: jax.Array,
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

  def loss_fn(trainable, backbone, batch):
    diff = ravel_pytree(trainable)[0] - anchor_flat
    drift = subspace.batched_project(basis, valid, to_modules(layout, diff))
    return base_loss(trainable, backbone, batch) + 0.5 * lam * jnp.sum(jnp.square(drift))

  return loss_fn


def drift_fn(layout: ModuleLayout, basis: jax.Array, valid: jax.Array, anchor: PyTree
             ) -> Callable[[PyTree], jax.Array]:
  """θ -> ‖P_u(θ − θ*)‖ (jitted)."""
  anchor_flat = ravel_pytree(anchor)[0]

  @jax.jit
  def drift(trainable):
    diff = ravel_pytree(trainable)[0] - anchor_flat
    return jnp.linalg.norm(project_flat(layout, basis, valid, diff))

  return drift


# ------------------------------------------------------------------------- the EASE method


def _gsd_inputs(ctx: base.UnlearningContext, layout: ModuleLayout, m: int
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Forget `[modules, m_f, d]` and retain `[modules, k, M, d]` stacks (see module docstring)."""
  setup, req = ctx.setup, ctx.request
  retain = ctx.retain_clients
  info: dict[str, Any] = {}
  if req.kind == "client":
    forget_flat = history_stack(ctx.history, req.forget_clients)  # [F, M, P]
    forget_flat = forget_flat.reshape(-1, forget_flat.shape[-1])
    retain_flat = history_stack(ctx.history, retain)
    info["forget_side"] = "transmitted updates"
  else:
    fed = ctx.config.fed
    grads = make_minibatch_gradients(federated.clip_objective(setup.model))
    forget_texts = req.forget_client_texts(setup)
    retain_texts = req.retain_client_texts(setup)
    seed = ctx.config.seeds.unlearning
    f_rows = []
    for h in req.holders:
      idx, mask = sample_batches(forget_texts[h], m, fed.batch_size, (seed, 2, h))
      f_rows.append(np.asarray(grads(ctx.trained, setup.backbone, setup.data, idx, mask)))
    forget_flat = np.concatenate(f_rows)
    hist = history_stack(ctx.history, retain)
    for row, c in enumerate(retain):
      if c in req.holders:  # Its updates mix D_f in: use gradients on its own D_r instead.
        idx, mask = sample_batches(retain_texts[c], hist.shape[1], fed.batch_size, (seed, 3, c))
        hist[row] = np.asarray(grads(ctx.trained, setup.backbone, setup.data, idx, mask))
    retain_flat = hist
    info["forget_side"] = "per-minibatch gradients"
  forget = np.asarray(to_modules(layout, jnp.asarray(forget_flat)))        # [m_f, n, d]
  retain_m = np.asarray(to_modules(layout, jnp.asarray(retain_flat)))      # [k, M, n, d]
  return np.moveaxis(forget, 1, 0), np.moveaxis(retain_m, 2, 0), info


def compute_gsd(ctx: base.UnlearningContext) -> dict[str, Any]:
  """The per-module unique subspace (cached in `ctx.cache` per GSD config) and its timing."""
  cfg = GSDConfig.from_config(ctx.config.gsd)
  key = ("gsd", cfg)
  if key in ctx.cache:
    return ctx.cache[key]
  layout = module_layout(ctx.trained)
  t0 = time.perf_counter()
  forget, retain, info = _gsd_inputs(ctx, layout, ctx.config.fed.history_size or 16)
  stack_s = time.perf_counter() - t0
  res, compile_s, run_s = base.TimedJit(batched_gsd)(jnp.asarray(forget), jnp.asarray(retain),
                                                       cfg=cfg)
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
             compile_s=compile_s)
  ctx.cache[key] = out
  return out


def holder_schedules(ctx: base.UnlearningContext, steps: int, batch_size: int,
                     retain_source: str, stream: int) -> dict[str, np.ndarray]:
  """Per holder of forget data, `[holders, S, B]` forget and retain batches plus the FedAvg
  weights |D_f ∩ D_h|, for any method that runs local steps on the forget holders.

  retain_source: 'local' (the holder's retained pairs), 'public' (the public split) or 'none'
  (all-False retain masks). `stream` separates the random streams of different methods/rounds.
  """
  setup, req = ctx.setup, ctx.request
  seed = ctx.config.seeds.unlearning
  forget_texts = req.forget_client_texts(setup)
  retain_texts = req.retain_client_texts(setup)
  public_texts = setup.texts_of(setup.public_images)
  rows = {k: [] for k in ("f_idx", "f_mask", "r_idx", "r_mask")}
  weights = []
  for h in req.holders:
    fi, fm = sample_batches(forget_texts[h], steps, batch_size, (seed, stream, h))
    source = {"local": retain_texts[h], "public": public_texts,
              "none": np.zeros((0,), np.int32)}.get(retain_source)
    if source is None:
      raise ValueError(f"retain_source must be 'local', 'public' or 'none', got "
                       f"{retain_source!r}.")
    ri, rm = sample_batches(source, steps, batch_size, (seed, stream + 1, h))
    for k, v in zip(rows, (fi, fm, ri, rm)):
      rows[k].append(v)
    weights.append(len(forget_texts[h]))
  out = {k: np.stack(v) for k, v in rows.items()}
  out["weights"] = np.asarray(weights, np.float32)
  return out


def bke_schedules(ctx: base.UnlearningContext) -> dict[str, np.ndarray]:
  """BKE's per-holder forget / retain batches (`bke.steps` of `bke.batch_size`)."""
  c = ctx.config.bke
  return holder_schedules(ctx, c.steps, c.batch_size, c.retain_source, stream=4)


def run_bke(ctx: base.UnlearningContext, layout: ModuleLayout, gsd_res: Any | None,
            target: float) -> tuple[PyTree, dict[str, Any], float, float]:
  """Holders' excision, FedAvg of their Δ (weights |D_f ∩ D_h|), then Δ ← P_u Δ.

  Returns (θ*, diagnostics, run_s, compile_s).
  """
  c, setup = ctx.config.bke, ctx.setup
  if c.towers not in TOWERS:
    raise ValueError(f"bke.towers must be one of {TOWERS}, got {c.towers!r}.")
  sched = bke_schedules(ctx)
  use_retain = c.retain_weight > 0 and bool(sched["r_mask"].any())
  grad_mask = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32),
                           lora_lib.tower_mask(ctx.trained, c.towers))
  fn_key = ("excise_fn", c.optimizer, c.lr, c.retain_weight, c.target, c.margin, use_retain)
  if fn_key not in ctx.cache:  # One compilation for every variant with these settings.
    update = make_bke_update(setup.model, experiment.make_optimizer(c.optimizer, c.lr, freeze_lora_a=setup.lora_config.freeze_a),
                             c.retain_weight, c.target, c.margin, use_retain)
    ctx.cache[fn_key] = base.TimedJit(make_excise_fn(layout, update))
  excise = ctx.cache[fn_key]
  if gsd_res is not None:
    basis, valid = gsd_res.unique_basis, gsd_res.unique_valid
  else:
    max_rank = ctx.config.gsd.max_rank
    basis = jnp.zeros((layout.num_modules, layout.dim, max_rank), jnp.float32)
    valid = jnp.zeros((layout.num_modules, max_rank), bool)
  args = (ctx.trained, setup.backbone, setup.data, *(jnp.asarray(sched[k]) for k in
          ("f_idx", "f_mask", "r_idx", "r_mask", "weights")), jnp.float32(target), grad_mask,
          basis, valid, jnp.asarray(gsd_res is not None))
  (theta_star, m, delta), compile_s, run_s = excise(*args)
  delta_norm = float(jnp.linalg.norm(ravel_pytree(delta)[0]))
  diag = dict(bke_forget_loss_first=np.asarray(m["forget_loss_first"]).tolist(),
              bke_forget_loss_last=np.asarray(m["forget_loss_last"]).tolist(),
              bke_retain_loss_last=np.asarray(m["retain_loss_last"]).tolist(),
              bke_delta_norm=delta_norm, bke_target=float(target), bke_use_retain=use_retain)
  return theta_star, diag, run_s, compile_s


def bke_target(ctx: base.UnlearningContext) -> tuple[float, dict[str, Any]]:
  """The calibrated cosine bound of `bke.target='nonmember'` (unused for 'unmatched')."""
  c, setup = ctx.config.bke, ctx.setup
  if c.target != "nonmember":
    return 0.0, {}
  images = {"test": setup.test_images, "public": setup.public_images}.get(c.calibration_split)
  if images is None:
    raise ValueError(f"bke.calibration_split must be 'test' or 'public', got "
                     f"{c.calibration_split!r}.")
  cos_nm = matched_cosines(setup.model, setup.backbone, ctx.trained, setup.data,
                           setup.texts_of(images))
  cos_f = matched_cosines(setup.model, setup.backbone, ctx.trained, setup.data,
                          ctx.request.forget_texts)
  target = float(np.quantile(cos_nm, c.target_quantile))
  return target, dict(nonmember_cos_mean=float(cos_nm.mean()),
                      forget_cos_mean_before=float(cos_f.mean()), nonmember_target=target)


def run_pfl(ctx: base.UnlearningContext, layout: ModuleLayout, gsd_res: Any | None,
            theta_star: PyTree, name: str) -> tuple[PyTree, list[dict[str, Any]]]:
  """Post-unlearning FedAvg with the retained clients: server (I − P_u), client Forget Lock."""
  c, setup = ctx.config.pfl, ctx.setup
  transform = loss_fn = None
  drift = lambda _: 0.0
  if gsd_res is not None:
    basis, valid = gsd_res.unique_basis, gsd_res.unique_valid
    if c.server_projection:
      transform = functools.partial(complement_tree, layout, basis, valid)
    loss_fn = lock_objective(federated.clip_objective(setup.model), layout, basis, valid,
                             theta_star, c.lock_lambda)
    drift = drift_fn(layout, basis, valid, theta_star)
  cfg = base.config_with(ctx.config, {"eval.every": c.eval_every})
  subsets = {"forget": ctx.eval_subsets["forget"]}
  first = dict(round=0, drift=0.0, **experiment.evaluate_splits(setup, theta_star, subsets))
  res = experiment.run_federated(
      setup, cfg, None, trainable=theta_star, num_rounds=c.rounds,
      client_texts=ctx.retain_client_texts, active_clients=ctx.retain_clients,
      eval_subsets=subsets, loss_fn=loss_fn, server_transform=transform,
      round_offset=ctx.config.fed.rounds, callback=lambda r, t: dict(drift=float(drift(t))),
      desc=f"PFL {name}", progress=False)
  return res.trainable, [first] + res.metrics


def ease_method(overrides: Mapping[str, Any] | None = None) -> base.Method:
  """An EASE variant: the config with `overrides` applied (e.g. {'bke.towers': 'vision'})."""

  def method(ctx: base.UnlearningContext) -> base.MethodResult:
    g = compute_gsd(ctx) if ctx.config.gsd.enabled else None
    layout = g["layout"] if g else module_layout(ctx.trained)
    gsd_res = g["result"] if g else None
    # The excised model depends on the GSD and BKE blocks only: PFL variants share it.
    key = ("bke", repr(sorted(ctx.config.gsd.items())), repr(sorted(ctx.config.bke.items())))
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
    if ctx.config.pfl.rounds > 0:
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
for _name, _overrides in VARIANTS.items():
  base.register(_name)(ease_method(_overrides))
