"""Unlearning requests, the retrain reference and EASE (GSD + BKE + PFL) on a tiny random CLIP."""

import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import flat_params as flat
from conftest import make_tiny_setup, make_unlearning_ctx as make_ctx, run_fedavg, tiny_config
from ease_jax import builders
from ease_jax import configs
from ease_jax import evaluation
from ease_jax import federated
from ease_jax.unlearning import base
from ease_jax.unlearning import benchmark
from ease_jax.unlearning import common
from ease_jax.unlearning import methods
from ease_jax.unlearning import projection
from ease_jax.unlearning import requests
from ease_jax.unlearning import retrain as retrain_lib
from ease_jax.unlearning.methods import ease

ROOT = pathlib.Path(__file__).resolve().parent.parent


def unlearn_config(**fed):
  cfg = configs.add_unlearning(tiny_config(**fed))
  cfg.gsd.max_rank = 4
  cfg.bke.update(dict(steps=6, batch_size=8, lr=1e-2))
  cfg.pfl.rounds = 0
  return cfg


@pytest.fixture(scope="module")
def trained():
  # Enough local work (6 rounds x 8 epochs, Adam 1e-2) that each client memorises its 14 random
  # pairs: forget R@1 ~57 vs ~4 for the retrain reference (seed-fixed; ~8 s on 2 CPU cores).
  cfg = unlearn_config(rounds=6, history_size=4, local_epochs=8, client_lr=1e-2)
  setup = make_tiny_setup(cfg)
  res = run_fedavg(setup, cfg)
  return cfg, setup, res


# ----------------------------------------------------------------------------------- requests


def test_request_validation_errors(tiny_setup):
  with pytest.raises(ValueError, match="Unknown client id"):
    requests.client_request(tiny_setup, [7])
  with pytest.raises(ValueError, match="No client"):
    requests.client_request(tiny_setup, [])
  with pytest.raises(ValueError, match="leaves no retain data"):
    requests.client_request(tiny_setup, range(tiny_setup.num_clients))
  with pytest.raises(ValueError, match="fraction"):
    requests.sample_request(tiny_setup, 0.0)
  with pytest.raises(ValueError, match="leaves no retain data"):
    requests.sample_request(tiny_setup, 1.0)
  with pytest.raises(ValueError, match=r"Unknown concept.*valid values include.*concept0"):
    requests.concept_request(tiny_setup, "subgroup", ["nope"])
  with pytest.raises(ValueError, match="Unknown concept field.*subgroup"):
    requests.concept_request(tiny_setup, "colour", ["red"])
  with pytest.raises(ValueError, match=r"Unknown concept term\(s\) \['zebra'\]: no client caption"):
    requests.concept_request(tiny_setup, "caption", ["zebra"])
  # A misspelt term beside a good one was dropped silently.
  with pytest.raises(ValueError, match=r"term\(s\) \['captoin 9'\]"):
    requests.concept_request(tiny_setup, "caption", ["caption 5", "captoin 9"])
  with pytest.raises(ValueError, match="Empty forget set"):
    requests.UnlearningRequest("client", np.zeros((0,), np.int32), np.zeros((0,), np.int64),
                               (0,), (0,))
  with pytest.raises(ValueError, match="Unknown unlearning kind"):
    cfg = configs.add_unlearning(tiny_config())
    cfg.unlearning.kind = "everything"
    requests.from_config(tiny_setup, cfg.unlearning)


@pytest.mark.parametrize("build", [
    lambda s: requests.client_request(s, [1]),
    lambda s: requests.sample_request(s, 0.25, seed=3),
    lambda s: requests.sample_request(s, 0.5, clients=[2]),
    lambda s: requests.concept_request(s, "subgroup", ["concept1", "concept2"]),
    lambda s: requests.concept_request(s, "caption", ["caption 5", "caption 9"]),
], ids=["client", "sample", "sample_one_client", "concept", "caption_terms"])
def test_forget_and_retain_are_disjoint_and_cover(tiny_setup, build):
  s = tiny_setup
  req = build(s)
  retain = req.retain_client_texts(s)
  forget = req.forget_client_texts(s)
  for c, all_texts in enumerate(s.client_texts()):
    assert not np.intersect1d(retain[c], forget[c]).size
    if c in req.forget_clients:
      assert len(retain[c]) == 0
    else:
      np.testing.assert_array_equal(np.sort(np.concatenate([retain[c], forget[c]])), all_texts)
  np.testing.assert_array_equal(np.sort(np.concatenate(forget)), req.forget_texts)
  sets = req.eval_subsets(s)
  assert not np.intersect1d(sets["forget"], sets["retain"]).size
  assert not np.intersect1d(sets["forget"], sets["test"]).size
  assert set(req.holders) == {c for c in range(s.num_clients) if len(forget[c])}
  assert set(req.retain_clients(s)) == {c for c in range(s.num_clients) if len(retain[c])}


def _expected_forget_images(s, kind):
  """What each request of `test_forget_and_retain_are_disjoint_and_cover` must forget, by brute
  force over the clients and the captions (a sample request: only its sizes and clients)."""
  if kind == "client":
    return s.client_images[1]
  if kind == "concept":
    sub = np.asarray(s.dataset.image_meta["subgroup"])
    return np.sort([i for c in range(s.num_clients) for i in s.client_images[c]
                    if sub[i] in ("concept1", "concept2")])
  if kind == "caption_terms":
    hit = lambda caption: any(" ".join(caption.lower().split()[k:k + 2]) in ("caption 5",
                                                                              "caption 9")
                              for k in range(len(caption.split())))
    return np.sort([i for c in range(s.num_clients) for i in s.client_images[c]
                    if any(hit(s.dataset.captions[t])
                           for t in np.flatnonzero(s.dataset.text_image == i))])
  return None


@pytest.mark.parametrize("kind,build", [
    ("client", lambda s: requests.client_request(s, [1])),
    ("concept", lambda s: requests.concept_request(s, "subgroup", ["concept1", "concept2"])),
    ("caption_terms", lambda s: requests.concept_request(s, "caption", ["caption 5",
                                                                         "caption 9"])),
    ("sample", lambda s: requests.sample_request(s, 0.25, seed=3)),
    ("sample_one_client", lambda s: requests.sample_request(s, 0.5, clients=[2])),
])
def test_requests_forget_what_they_name(tiny_setup, kind, build):
  s = tiny_setup
  req = build(s)
  forget = np.sort(np.asarray(req.forget_images))
  expected = _expected_forget_images(s, kind)
  if expected is not None:
    assert len(expected) and np.array_equal(forget, expected), (forget, expected)
    return
  # Sample requests: round(fraction * n_k) (>= 1) of each chosen client's images, none else.
  fraction, chosen = (0.25, range(s.num_clients)) if kind == "sample" else (0.5, [2])
  for c in range(s.num_clients):
    own = np.intersect1d(forget, s.client_images[c])
    n = len(s.client_images[c])
    assert len(own) == (max(1, round(fraction * n)) if c in chosen else 0), (c, len(own))
  assert np.isin(forget, np.concatenate(s.client_images)).all()


def test_request_fingerprint_tells_forget_sets_with_equal_sums_apart():
  """Two sample requests of the same size, holders and index sum must not share a cached
  retrain (the old sum-based hash gave {10, 20} and {11, 19} one identity)."""
  make = lambda texts: requests.UnlearningRequest(
      "sample", np.asarray(texts, np.int32), np.asarray(texts, np.int64), (), (0,))
  assert make([10, 20]).fingerprint() != make([11, 19]).fingerprint()
  assert make([10, 20]).fingerprint() == make([10, 20]).fingerprint()


def test_from_config_kinds(tiny_setup):
  cfg = configs.add_unlearning(tiny_config())
  assert requests.from_config(tiny_setup, cfg.unlearning).forget_clients == (0,)
  cfg.unlearning.update(dict(kind="concept", concepts=("concept3",)))
  req = requests.from_config(tiny_setup, cfg.unlearning)
  assert req.kind == "concept" and not req.forget_clients
  assert set(tiny_setup.dataset.image_meta["subgroup"][req.forget_images]) == {"concept3"}
  # A sample request draws from `sample_clients` (() = all), not from the leaving clients.
  cfg.unlearning.update(dict(kind="sample", fraction=0.5, clients=(0,)))
  req = requests.from_config(tiny_setup, cfg.unlearning, seed=1)
  assert req.holders == tuple(range(tiny_setup.num_clients))
  cfg.unlearning.sample_clients = (2,)
  assert requests.from_config(tiny_setup, cfg.unlearning, seed=1).holders == (2,)


def test_benchmark_scenarios_inherit_no_other_request():
  """A scenario block sits on the request defaults: a sample scenario that names no clients
  draws from all of them, whatever the main request's clients or plant."""
  config = configs.from_file(ROOT / "experiments" / "configs" / "benchmark_emoji.py")
  config.unlearning.update(dict(clients=(5,), plant="concept", kind="concept"))
  config.benchmark.scenario_blocks["sample10"] = dict(kind="sample", fraction=0.1)
  cell = benchmark.scenario_config(config, "sample10", 2)
  assert dict(cell.unlearning) == dict(configs.UNLEARNING_DEFAULTS, kind="sample", fraction=0.1)
  assert benchmark.scenario_config(config, "client", 2).unlearning.clients == (1,)
  assert (cell.seeds.init, cell.seeds.partition, cell.seed) == (2, 0, 2)


# ------------------------------------------------------------------------------ module layout


def test_module_layout_roundtrip(trained):
  _, _, res = trained
  tree = res.trainable
  layout = projection.module_layout(tree)
  x = flat(tree)
  mods = projection.to_modules(layout, jnp.asarray(x))
  assert mods.shape == (layout.num_modules, layout.dim)
  np.testing.assert_array_equal(np.asarray(projection.from_modules(layout, mods)), x)
  # A module's row is its (A, B) in that order.
  lora_a = tree["vision_model"]["encoder"]["layers"]["0"]["self_attn"]["q_proj"]["a"]
  row = layout.names.index("vision_model/encoder/layers/0/self_attn/q_proj")
  np.testing.assert_array_equal(np.asarray(mods[row, :lora_a.size]), np.ravel(lora_a))


def test_projections_equal_numpy_per_module(trained):
  """P_u and (I − P_u) of a random tree against numpy: each module's (A, B), raveled in that
  order, projected on its own basis columns (those its mask keeps); leaves outside every module
  untouched by the complement and zero under P_u."""
  _, _, res = trained
  tree = dict(res.trainable, logit_scale=jnp.zeros(()))  # and a leaf outside every module
  layout = projection.module_layout(tree)
  basis, _ = _random_projector(layout, 3, seed=3)
  valid = jnp.asarray(np.random.default_rng(0).random((layout.num_modules, 3)) < 0.7)
  valid = valid.at[0].set(True).at[1].set(False)  # a module with every column, one with none
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  delta = treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  flat_of = lambda t: traverse_util.flatten_dict(t, sep="/")  # path -> leaf, as `lora` reads it
  d, p, c = (flat_of(t) for t in (delta, projection.project_tree(layout, basis, valid, delta),
                                  projection.complement_tree(layout, basis, valid, delta)))
  module = lambda flat, name: np.concatenate([np.ravel(flat[f"{name}/a"]),
                                              np.ravel(flat[f"{name}/b"])])
  for m, name in enumerate(layout.names):
    v = module(d, name)
    u = np.asarray(basis)[m, :v.size][:, np.asarray(valid)[m]]
    want = u @ (u.T @ v)
    np.testing.assert_allclose(module(p, name), want, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(module(c, name), v - want, atol=1e-5, err_msg=name)
  assert np.abs(want).max() > 0  # the last module kept some columns
  outside = [k for k in d if k.rsplit("/", 1)[-1] not in ("a", "b")]
  assert outside == ["logit_scale"]
  for name in outside:
    assert not np.asarray(p[name]).any(), name
    np.testing.assert_array_equal(c[name], d[name])


def _random_projector(layout, rank, seed=0):
  """A random orthonormal U_u per module: basis [modules, d, rank], valid [modules, rank]."""
  g = jax.random.normal(jax.random.key(seed), (layout.num_modules, layout.dim, rank))
  g = g * jnp.asarray(layout.valid)[:, :, None]
  basis = jnp.linalg.qr(g)[0]
  return basis, jnp.ones((layout.num_modules, rank), bool)


def test_server_projection_removes_the_unique_component(trained):
  cfg, setup, res = trained
  layout = projection.module_layout(res.trainable)
  basis, valid = _random_projector(layout, 3)
  transform = lambda t: projection.complement_tree(layout, basis, valid, t)
  deltas = jax.tree.map(lambda x: jnp.stack([x, -0.5 * x, 2 * x]) + 0.01, res.trainable)
  opt = federated.server_optimizer()
  state = federated.init_server(res.trainable, opt)
  new_state, aggregate = federated.fedavg(state, deltas, jnp.ones(3), opt, transform)
  p_agg = projection.project_tree(layout, basis, valid, aggregate)
  assert np.abs(flat(p_agg)).max() < 1e-6 * max(np.abs(flat(aggregate)).max(), 1)
  # So the model does not move along U_u: the drift from the start stays 0.
  drift = projection.drift_fn(layout, basis, valid, res.trainable)(new_state.trainable)
  assert float(drift) < 1e-5
  # And through whole PFL rounds (server projection, no lock).
  plan = builders.round_plan(setup, cfg)
  pfl = builders.fedavg_algorithm(
      setup, cfg, plan, server_transform=transform,
      round_metrics=lambda t: dict(drift=projection.drift_fn(layout, basis, valid,
                                                             res.trainable)(t)))
  out = run_fedavg(setup, cfg, trainable=res.trainable, num_rounds=2, plan=plan, algorithm=pfl)
  assert max(r["drift"] for r in out.metrics) < 1e-5
  assert np.abs(flat(out.trainable) - flat(res.trainable)).max() > 1e-4  # it did train


def test_forget_lock_bounds_drift_monotonically_in_lambda(trained):
  # SGD: the lock's pull λ P_u(θ − θ*) bounds the drift by ~G/λ (lr·λ ≤ 1 keeps it stable).
  # Adam rescales the pull to ~lr per coordinate, so there the bound is ~lr, not ~G/λ.
  cfg, setup, res = trained
  cfg = base.config_with(cfg, {"fed.client_optimizer": "sgd", "fed.client_lr": 1e-2})
  layout = projection.module_layout(res.trainable)
  basis, valid = _random_projector(layout, 4, seed=1)
  drift = projection.drift_fn(layout, basis, valid, res.trainable)
  drifts = []
  for lam in (0.0, 1.0, 10.0, 100.0):
    loss = ease.lock_objective(federated.clip_objective(setup.model), layout, basis, valid,
                               res.trainable, lam)
    plan = builders.round_plan(setup, cfg, round_offset=3)
    out = run_fedavg(setup, cfg, trainable=res.trainable, num_rounds=2, plan=plan,
                     algorithm=builders.fedavg_algorithm(setup, cfg, plan, loss_fn=loss))
    drifts.append(float(drift(out.trainable)))
  assert all(a > b for a, b in zip(drifts, drifts[1:])), drifts
  assert drifts[-1] < 0.2 * drifts[0], drifts


def test_lock_objective_rejects_negative_lambda(trained):
  _, setup, res = trained
  layout = projection.module_layout(res.trainable)
  basis, valid = _random_projector(layout, 2)
  with pytest.raises(ValueError, match="lock_lambda"):
    ease.lock_objective(federated.clip_objective(setup.model), layout, basis, valid,
                        res.trainable, -1.0)


# ------------------------------------------------------------------------------- GSD and BKE


@pytest.mark.parametrize("kind", ["client", "sample"])
def test_gsd_shapes_and_bke_moves_only_inside_unique_subspace(trained, kind):
  cfg, setup, res = trained
  req = (requests.client_request(setup, [0]) if kind == "client"
         else requests.sample_request(setup, 0.3, seed=1))
  ctx = make_ctx(trained, request=req)
  g = ease.compute_gsd(ctx)
  gres, layout = g["result"], g["layout"]
  assert gres.unique_basis.shape == (layout.num_modules, layout.dim, cfg.gsd.max_rank)
  assert (np.asarray(gres.unique_rank) <= np.asarray(gres.forget_rank)).all()
  assert np.asarray(gres.unique_rank).sum() > 0
  theta_star, diag, run_s, _ = ease.run_bke(ctx, layout, gres, target=0.0)
  delta = jax.tree.map(jnp.subtract, theta_star, res.trainable)
  p_delta = projection.project_tree(layout, gres.unique_basis, gres.unique_valid, delta)
  d, pd = flat(delta), flat(p_delta)
  assert np.linalg.norm(d) > 1e-4
  np.testing.assert_allclose(pd, d, atol=1e-5 * np.abs(d).max() + 1e-7)
  assert diag["bke_delta_norm"] > 0 and run_s > 0


def test_gsd_cache_is_keyed_by_everything_gsd_reads(trained):
  """A variant that overrides a knob GSD reads outside its block (here M, `fed.history_size`)
  computes its own subspace; one that differs only in PFL reuses it."""
  cfg, setup, _ = trained
  req = requests.sample_request(setup, 0.3, seed=1)
  cache = {}
  first = ease.compute_gsd(dataclasses.replace(make_ctx(trained, request=req), cache=cache))
  same = ease.compute_gsd(dataclasses.replace(
      make_ctx(trained, {"pfl.lock_lambda": 0.0}, request=req), cache=cache))
  assert same is first
  fewer = ease.compute_gsd(dataclasses.replace(
      make_ctx(trained, {"fed.history_size": 1}, request=req), cache=cache))
  assert fewer is not first
  assert np.asarray(fewer["result"].forget_rank).max() <= len(req.holders)  # M = 1 row each


def test_gsd_gradients_of_a_small_forget_set_span_more_than_one_direction(trained):
  """A holder with fewer forget pairs than a batch: minibatches of all its pairs would make its
  M gradients one (a single forget direction per holder); at most half of them per minibatch,
  they differ. A single pair per holder has a zero contrastive loss: refused by name."""
  cfg, setup, _ = trained
  req = requests.sample_request(setup, 0.3, seed=1)
  per_holder = [len(t) for t in req.forget_client_texts(setup) if len(t)]
  assert max(per_holder) <= cfg.fed.batch_size  # every holder's D_f fits one batch
  assert ease.gradient_batch_size(max(per_holder), cfg.fed.batch_size) < max(per_holder)
  # Every direction kept (no energy cut): the rank is what the gradients span.
  g = ease.compute_gsd(make_ctx(trained, {"gsd.energy": 1.0, "gsd.max_rank": 16}, request=req))
  assert np.asarray(g["result"].forget_rank).max() > len(req.holders)
  assert ease.gradient_batch_size(100, 32) == 32 and ease.gradient_batch_size(1, 32) == 2
  single = requests.sample_request(setup, 0.01, seed=1)
  assert all(len(t) <= 1 for t in single.forget_client_texts(setup))
  with pytest.raises(ValueError, match="GSD found no forget direction"):
    ease.compute_gsd(make_ctx(trained, request=single))


def test_gsd_time_leaves_the_gradient_stacks_compilation_out(trained):
  """EASE's time is its work: on a sample request the minibatch-gradient executables of GSD's
  stacks are compiled apart and counted as compile time, as every method's are, not in the
  GSD's seconds (which the benchmark's time column and speed-up read)."""
  cfg, setup, _ = trained
  req = requests.sample_request(setup, 0.3, seed=1)
  t0 = time.perf_counter()
  g = ease.compute_gsd(make_ctx(trained, request=req))
  wall = time.perf_counter() - t0
  d = g["diagnostics"]
  assert d["gsd_stack_compile_s"] > 0 and d["gsd_stack_s"] > 0
  assert g["compile_s"] == pytest.approx(d["gsd_compile_s"] + d["gsd_stack_compile_s"])
  assert g["time_s"] == pytest.approx(d["gsd_stack_s"] + d["gsd_run_s"])
  assert g["time_s"] + g["compile_s"] <= wall  # disjoint parts of the call, none counted twice


def test_gsd_refuses_non_finite_updates(trained):
  """A NaN in a retained client's stored updates would empty its basis silently."""
  cfg, setup, res = trained
  ctx = make_ctx(trained, request=requests.client_request(setup, [0]))
  updates = np.array(ctx.history.updates)
  updates[1, 0, 3] = np.nan
  ctx = dataclasses.replace(ctx, history=dataclasses.replace(ctx.history, updates=updates))
  with pytest.raises(ValueError, match=r"GSD: 1 of the retain side's \d+ update or gradient "
                     r"rows hold NaN or inf"):
    ease.compute_gsd(ctx)


def test_unilateral_bke_moves_one_tower(trained):
  cfg, setup, res = trained
  for tower, frozen in (("vision", "text_model"), ("text", "vision_model")):
    ctx = make_ctx(trained, {"bke.towers": tower, "gsd.enabled": False})
    layout = projection.module_layout(res.trainable)
    theta_star, *_ = ease.run_bke(ctx, layout, None, target=0.0)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), theta_star, res.trainable)
    assert max(jax.tree.leaves(moved[frozen])) == 0.0
    assert max(jax.tree.leaves(moved[tower + "_model"])) > 0.0
  with pytest.raises(ValueError, match="bke.towers"):
    ease.run_bke(make_ctx(trained, {"bke.towers": "left"}), layout, None, 0.0)


def test_registry_and_unknown_method():
  for name in ("ease", "ease_no_lock", "ease_unilateral_vision", "ease_unilateral_text",
               "ease_no_gsd"):
    assert name in methods.METHODS
  with pytest.raises(ValueError, match="Unknown unlearning method"):
    methods.get("eraser9000")


def test_overriding_a_variant_overrides_its_own_overrides():
  """A benchmark variant of a registered variant (`ease_no_gsd` with 3 PFL rounds) runs with
  the benchmark's value; the registered variant's own override was applied last and won."""
  seen = []
  probe = lambda ctx: seen.append((ctx.config.pfl.rounds, ctx.config.gsd.enabled))
  ctx = base.UnlearningContext(None, configs.add_unlearning(tiny_config()), None, None, None, {})
  registered = base.with_overrides(probe, {"gsd.enabled": False, "pfl.rounds": 0})
  base.with_overrides(registered, {"pfl.rounds": 3})(ctx)
  registered(ctx)
  assert seen == [(3, False), (0, False)]
  assert methods.get("ease_no_gsd").base_and_overrides[1] == {"gsd.enabled": False,
                                                              "pfl.rounds": 0}


def test_round_timing_replaces_the_compiling_round():
  t = common.round_timing([dict(round_time_s=10.0), dict(round_time_s=2.0),
                                dict(round_time_s=2.0)])
  assert t["wall_time_s"] == 14.0 and t["steady_time_s"] == 6.0
  # A resumed run compiles again in its first round after the restore.
  t = common.round_timing([dict(round_time_s=10.0), dict(round_time_s=2.0),
                           dict(round_time_s=9.0, round_compiles=True), dict(round_time_s=3.0)])
  assert t["wall_time_s"] == 24.0 and t["steady_time_s"] == 2.5 + 2.0 + 2.5 + 3.0


def test_the_driver_marks_the_first_round_of_each_call(tmp_path):
  """What `round_timing` relies on: the round that compiles, fresh or resumed, says so."""
  cfg = base.config_with(tiny_config(rounds=3), {"checkpoint_every": 1})
  setup = make_tiny_setup(cfg)
  run_fedavg(setup, cfg, workdir=tmp_path, num_rounds=2)  # stopped after round 2
  rows = run_fedavg(setup, cfg, workdir=tmp_path).metrics
  assert [r.get(federated.driver.ROUND_COMPILES, False) for r in rows] == [True, False, True]


# -------------------------------------------------------------------------------- end to end


def test_ease_moves_forget_recall_toward_retrain(trained, tmp_path):
  """Random captions cannot generalise: the retrain model is at chance on the forget client while
  the trained model has memorised it. EASE must close most of that gap, and keep retain R@1."""
  cfg, setup, res = trained
  cfg = base.config_with(cfg, {"bke.steps": 20, "bke.target": "unmatched", "bke.margin": 0.0,
                               "bke.retain_source": "none", "gsd.max_rank": 4,
                               "pfl.rounds": 1, "pfl.lock_lambda": 10.0})
  req = requests.client_request(setup, [0])
  subsets = req.eval_subsets(setup)
  ref, timing = retrain_lib.retrain(setup, cfg, req, tmp_path)
  assert (tmp_path / "retrain" / "timing.json").exists() and timing["rounds"] == cfg.fed.rounds
  ev = lambda t: evaluation.evaluate_splits(setup, t, subsets)
  before, after_ref = ev(res.trainable), ev(ref.trainable)
  ctx = base.UnlearningContext(setup=setup, config=cfg, request=req, trained=res.trainable,
                               history=res.history, eval_subsets=subsets)
  out = methods.get("ease")(ctx)
  after = ev(out.trainable)
  gap_before = before["forget/mean_r1"] - after_ref["forget/mean_r1"]
  gap_after = abs(after["forget/mean_r1"] - after_ref["forget/mean_r1"])
  assert gap_before > 20, (before, after_ref)  # the forget client was learned
  assert gap_after < 0.5 * gap_before, (before, after, after_ref)
  # Seen: forget R@1 57.1 -> 14.3 (retrain 3.6); retain R@1 19.0 -> 20.2 (retrain 25.0).
  assert abs(after["retain/mean_r1"] - before["retain/mean_r1"]) <= 10.0, (before, after)
  assert out.wall_time_s > 0 and "unique_rank" in out.diagnostics
  assert [r["round"] for r in out.curves] == [0, 1] and "forget/mean_r1" in out.curves[-1]
  # A second retrain call is served from the cache, with the same timing.
  _, timing2 = retrain_lib.retrain(setup, cfg, req, tmp_path)
  assert timing2 == timing
  with pytest.raises(ValueError, match="holds a run for"):
    retrain_lib.retrain(setup, cfg, requests.client_request(setup, [1]), tmp_path)


def test_methods_calibrate_on_a_test_half_the_mia_never_draws_from(tiny_setup):
  """EASE's target and the ascent stop were the median cosine of the very test pairs the MIA
  used as its non-members: the halves are disjoint, cover the test split and are fixed by the
  seed."""
  calibration, audit_half = common.test_halves(tiny_setup, 3)
  test = np.sort(np.asarray(tiny_setup.test_images))
  assert len(calibration) == len(test) // 2 and not np.intersect1d(calibration, audit_half).size
  np.testing.assert_array_equal(np.sort(np.concatenate([calibration, audit_half])), test)
  np.testing.assert_array_equal(common.test_halves(tiny_setup, 3)[0], calibration)
  assert not np.array_equal(common.test_halves(tiny_setup, 4)[0], calibration)


def test_the_non_member_level_reads_the_calibration_half(trained):
  ctx = make_ctx(trained)
  setup = ctx.setup
  calibration = common.test_halves(setup, ctx.config.seeds.unlearning)[0]
  want = federated.matched_cosines(setup.model, setup.backbone, ctx.trained, setup.data,
                                   setup.texts_of(calibration))
  np.testing.assert_allclose(common.nonmember_cosines(ctx, "test"), want)
  assert len(want) < len(setup.texts_of(setup.test_images))


def test_mia_non_members_come_from_the_audit_half(tiny_setup):
  config = configs.add_unlearning(tiny_config())
  calibration, audit_half = common.test_halves(tiny_setup, config.seeds.unlearning)
  forget = np.asarray(tiny_setup.client_images[0])
  texts = common.mia_nonmembers(tiny_setup, config, forget)
  images = np.unique(tiny_setup.dataset.text_image[texts])
  assert len(images) == min(len(forget), len(audit_half))
  assert np.isin(images, audit_half).all() and not np.isin(images, calibration).any()


def test_the_embedding_warm_up_compiles_what_the_methods_embed(trained):
  """A resumed benchmark's first method paid `embed`'s compilation inside its timed work; the
  cell now compiles it first, and a method's embedding of any size reuses it."""
  from ease_jax.data import device  # pylint: disable=g-import-not-at-top
  ctx = make_ctx(trained)
  jax.clear_caches()
  common.warm_up_embedding(ctx.setup, ctx.trained)
  compiled = device._embed_chunk._cache_size()
  assert compiled >= 1
  common.nonmember_cosines(ctx, "test")
  federated.matched_cosines(ctx.setup.model, ctx.setup.backbone, ctx.trained, ctx.setup.data,
                            ctx.request.forget_texts)
  assert device._embed_chunk._cache_size() == compiled
