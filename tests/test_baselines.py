"""Baselines do what their papers say, on a tiny random CLIP (see conftest.make_tiny_setup)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.flatten_util import ravel_pytree

from conftest import assert_same_run
from conftest import flat_params as flat
from conftest import make_tiny_setup, make_unlearning_ctx as make_ctx, run_fedavg, tiny_config
from ease_jax import builders
from ease_jax import federated
from ease_jax import lora as lora_lib
from ease_jax import rng as rng_lib
from ease_jax.unlearning import base
from ease_jax.unlearning import common
from ease_jax.unlearning import methods
from ease_jax.unlearning import requests
from ease_jax.unlearning.methods import ccu
from ease_jax.unlearning.methods import federaser as fe
from ease_jax.unlearning.methods import fedrecovery as fr
from ease_jax.unlearning.methods import finetune as ft
from ease_jax.unlearning.methods import gradient_ascent as ga
from ease_jax.unlearning.methods import mvi_causal as mvi
from ease_jax.unlearning.methods import pga


@pytest.fixture(scope="module")
def trained():
  cfg = tiny_config(rounds=3, history_size=4, local_epochs=4, client_lr=3e-2)
  methods.add_config_blocks(cfg)
  setup = make_tiny_setup(cfg)
  # The tiny setup has no public split; client 3's images stand in for it (random data does not
  # generalise, so only trained-on pairs show alignment for the utility guard).
  setup = dataclasses.replace(setup, public_images=setup.client_images[3])
  res = run_fedavg(setup, cfg)
  return cfg, setup, res


@pytest.fixture(scope="module")
def partial():
  """A run where 2 of the 4 clients take part in each round (some retained client sits out)."""
  cfg = tiny_config(rounds=3, history_size=4, local_epochs=1, client_lr=3e-2,
                    clients_per_round=2)
  methods.add_config_blocks(cfg)
  setup = make_tiny_setup(cfg)
  setup = dataclasses.replace(setup, public_images=setup.client_images[3])
  return cfg, setup, run_fedavg(setup, cfg)


def test_method_config_defaults_and_unknown_keys(trained):
  cfg = trained[0]
  assert common.block(cfg, "pga", pga.DEFAULTS).radius_fraction == pytest.approx(1 / 3)
  bad = base.config_with(cfg, {})
  bad.pga.radus = 1.0
  with pytest.raises(KeyError, match="radus"):
    common.block(bad, "pga", pga.DEFAULTS)


@pytest.mark.parametrize("key,value", [
    ("pga.radius", -1.0),               # 0 is the documented "from radius_fraction"; < 0 is not
    ("pga.radius_fraction", -0.5),      # would reflect the ascent through the ball's centre
    ("gradient_ascent.lr", 0.0),
    ("federaser.calibration_ratio", -3.0),
    ("federaser.retain_interval", 0),
    ("fedrecovery.delta", 2.0),
    ("ccu.temperature", 0.0),
    ("mvi_causal.shared_dim", 0),
    ("finetune.rounds", -1),
])
def test_methods_validate_their_block_when_they_read_it(trained, key, value):
  """A value the block's rules refuse stops the method before any work (benchmark variant
  overrides and direct calls never pass `validation.validate`)."""
  name = key.split(".")[0]
  with pytest.raises(ValueError, match=rf"config\.{key.replace('.', '[.]')} must be"):
    methods.get(name)(make_ctx(trained, {key: value}))


# ------------------------------------------------------------------------------------ PGA


def test_project_to_ball():
  center = {"a": jnp.ones(3), "b": jnp.zeros((2, 2))}
  inside = {"a": jnp.ones(3) * 1.1, "b": jnp.zeros((2, 2))}
  out = ga.project_to_ball(inside, center, 1.0)
  np.testing.assert_array_equal(flat(out), flat(inside))  # Inside: unchanged, exactly.
  far = {"a": jnp.ones(3) + jnp.array([3.0, 4.0, 0.0]), "b": jnp.full((2, 2), 0.0)}
  out = ga.project_to_ball(far, center, 2.0)
  d = flat(out) - flat(center)
  np.testing.assert_allclose(np.linalg.norm(d), 2.0, rtol=1e-6)
  np.testing.assert_allclose(d[:3], [1.2, 1.6, 0.0], rtol=1e-6)  # Same direction.
  np.testing.assert_array_equal(flat(ga.project_to_ball(far, center, jnp.inf)), flat(far))


def test_pga_reference_is_mean_of_other_clients_models():
  rng = np.random.default_rng(0)
  prev, ups, w = rng.normal(size=5), rng.normal(size=(3, 5)), np.array([1.0, 2.0, 3.0])
  glob = prev + (w / w.sum()) @ ups
  ref = pga.pga_reference(jnp.asarray(glob), jnp.asarray(ups), jnp.asarray(w),
                         jnp.array([False, True, True]))
  # Other clients' local models prev + Δ_k, sample-weighted mean.
  np.testing.assert_allclose(ref, prev + (2 * ups[1] + 3 * ups[2]) / 5, atol=1e-6)
  full = pga.pga_reference(jnp.asarray(glob), jnp.asarray(ups), jnp.asarray(w), jnp.ones(3, bool))
  np.testing.assert_allclose(full, glob, atol=1e-6)


def test_pga_stays_in_its_ball(trained):
  ctx = make_ctx(trained, {"pga.radius": 0.05, "pga.post_rounds": 0, "pga.lr": 0.5,
                           "pga.max_rounds": 3, "pga.stop_quantile": 0.0,
                           "pga.max_utility_drop": 100.0})
  res = pga.pga(ctx)
  d = res.diagnostics
  assert d["radius"] == 0.05 and d["rounds_run"] >= 1
  assert d["distance_to_center"] <= 0.05 + 1e-5
  assert d["distance_to_center"] > 0.04  # The ascent does push to the boundary.
  # The centre rebuilt in numpy from the stored updates: the last round's global model before
  # the step, plus the sample-weighted mean update of the clients that stay.
  last = ctx.config.fed.rounds - 1
  rounds, updates = np.asarray(ctx.history.rounds), np.asarray(ctx.history.updates)
  sent = [k for k in range(len(rounds)) if (rounds[k] == last).any()]
  ups = np.stack([updates[k][rounds[k] == last][0] for k in sent])
  sizes = np.array([len(ctx.setup.client_texts()[k]) for k in sent], float)
  lr = ctx.config.fed.server_lr
  previous = flat(ctx.trained) - lr * (sizes @ ups) / sizes.sum()
  stay = ~np.isin(sent, ctx.request.forget_clients)
  assert stay.sum() < len(sent)  # the leaving client took part in the last round
  centre = previous + lr * (sizes[stay] @ ups[stay]) / sizes[stay].sum()
  distance = np.linalg.norm(flat(res.trainable) - centre)
  assert 0.04 < distance <= 0.05 + 1e-5
  assert np.linalg.norm(flat(res.trainable) - flat(ctx.trained)) > 1e-3  # not the trained one


# ------------------------------------------------------------------------------- FedEraser


def test_federaser_calibrate_keeps_old_norm_new_direction():
  old = {"x": jnp.array([3.0, 4.0]), "y": jnp.array([[1.0]])}
  new = {"x": jnp.array([0.0, 2.0]), "y": jnp.array([[-5.0]])}
  leaf = fe.federaser_calibrate(old, new, "leaf")
  np.testing.assert_allclose(leaf["x"], [0.0, 5.0])
  np.testing.assert_allclose(leaf["y"], [[-1.0]])
  glob = fe.federaser_calibrate(old, new, "global")
  np.testing.assert_allclose(np.linalg.norm(flat(glob)), np.linalg.norm(flat(old)), rtol=1e-6)
  np.testing.assert_allclose(flat(glob) / np.linalg.norm(flat(glob)),
                             flat(new) / np.linalg.norm(flat(new)), rtol=1e-6)
  zero = fe.federaser_calibrate(old, jax.tree.map(jnp.zeros_like, new), "leaf")
  assert np.all(flat(zero) == 0)


def test_replay_of_all_stored_updates_reproduces_training(trained):
  cfg, setup, res = trained
  rounds, ups, w = fe.round_major(res.history, common.client_counts(setup))
  unravel = jax.vmap(federated.unravel_fn(res.trainable))
  replay = fe.federaser_replay(builders.init_trainable(setup, cfg),
                               [unravel(jnp.asarray(u)) for u in ups],
                               [jnp.asarray(x) for x in w], federated.server_optimizer())
  np.testing.assert_allclose(flat(replay), flat(res.trainable), atol=1e-6)


def test_federaser_without_calibration_equals_plain_replay(trained):
  cfg, setup, res = trained
  ctx = make_ctx(trained, {"federaser.calibration_ratio": 0.0})
  out = fe.federaser(ctx)
  # The paper's replay written out one client and one round at a time (below), ratio 0: the
  # retained clients' stored updates as they were sent.
  replay, _ = _reference_federaser(ctx, 0.0, 1, "leaf")
  np.testing.assert_allclose(flat(out.trainable), replay, atol=1e-5)
  # Calibration (new local steps) changes the result.
  cal = fe.federaser(make_ctx(trained, {"federaser.calibration_ratio": 0.5}))
  assert cal.diagnostics["calibration_steps"] == [4, 4, 4]  # ceil(0.5 × 8 local steps)
  assert np.abs(flat(cal.trainable) - replay).max() > 1e-5


def _numpy_calibrate(old, new, norm):
  """‖old‖ · new / ‖new‖ in numpy, per leaf or over the whole tree (lists of leaves)."""
  old = [np.asarray(x, np.float64) for x in old]
  new = [np.asarray(x, np.float64) for x in new]
  if norm == "leaf":
    return [np.linalg.norm(o) / np.linalg.norm(n) * n for o, n in zip(old, new)]
  ratio = (np.sqrt(sum(np.sum(o**2) for o in old)) / np.sqrt(sum(np.sum(n**2) for n in new)))
  return [ratio * n for n in new]


def _reference_federaser(ctx, ratio, interval, norm):
  """FedEraser as the paper states it, one client and one round at a time: every
  `interval`-th stored round, each retained client that took part runs its calibration steps
  from the current unlearned model on its retain data, and its stored update becomes
  ‖old‖ · new / ‖new‖; round 0 keeps the stored updates of clients that keep all their data.
  Returns (θ, {round: calibrated clients})."""
  cfg, setup, request, history = ctx.config, ctx.setup, ctx.request, ctx.history
  fed = cfg.fed
  assert fed.server_momentum == 0
  rounds, updates = np.asarray(history.rounds), np.asarray(history.updates)
  kept_texts = request.retain_client_texts(setup)
  retained = request.retain_clients(setup)
  kept = {k: len(kept_texts[k]) for k in retained}
  steps = {k: federated.num_local_steps(kept[k], fed.batch_size, fed.local_epochs)
           for k in retained}
  cal_steps = {k: int(np.ceil(ratio * steps[k])) for k in retained}
  local = jax.jit(federated.local_steps(federated.clip_objective(setup.model),
                                        builders.client_optimizer(setup, cfg)))
  theta, unravel = ravel_pytree(builders.init_trainable(setup, cfg))
  theta = np.asarray(theta, np.float64)
  calibrated = {}
  for r in range(fed.rounds):
    sent = [(k, np.flatnonzero(rounds[k] == r)) for k in retained]
    sent = [(k, slot[0]) for k, slot in sent if len(slot)]
    if r % interval or not sent:
      continue
    calibrated[r] = []
    total, step = 0.0, 0.0
    for k, slot in sent:
      delta = updates[k, slot].astype(np.float64)
      unchanged = kept[k] == len(setup.client_texts()[k])
      if ratio > 0 and not (r == 0 and unchanged):
        sched = federated.build_client_schedules(
            [kept_texts[k]], fed.batch_size, fed.local_epochs, max(steps.values()),
            cfg.seeds.data, fed.rounds + rng_lib.Stream.FEDERASER_CALIBRATION + r, [k])
        batches = federated.Batches(sched.text_indices[0, :cal_steps[k]],
                                    sched.mask[0, :cal_steps[k]])
        new, _ = local(unravel(jnp.asarray(theta, jnp.float32)), setup.backbone, setup.data,
                       batches)
        old = jax.tree.leaves(unravel(jnp.asarray(delta, jnp.float32)))
        cal = _numpy_calibrate(old, jax.tree.leaves(new), norm)
        delta = np.concatenate([c.ravel() for c in cal])
        calibrated[r].append(k)
      total += kept[k]
      step = step + kept[k] * delta
    theta = theta + fed.server_lr * step / total
  return theta, calibrated


@pytest.mark.parametrize("case", ["sample_request", "partial_participation"])
def test_federaser_without_calibration_equals_a_numpy_replay(trained, partial, case):
  """The cases the client request under full participation does not reach: a sample request
  (each holder weighted by the pairs it keeps) and rounds some retained clients sat out."""
  cfg, setup, res = trained
  if case == "partial_participation":
    cfg, setup, res = partial
    request = requests.client_request(setup, [0])
  else:  # half of one client's pairs: its weight halves against the others'
    request = requests.sample_request(setup, 0.5, clients=[1], seed=1)
  ctx = make_ctx((cfg, setup, res), {"federaser.calibration_ratio": 0.0}, request=request,
                 setup=setup)
  out = fe.federaser(ctx)
  kept = {k: len(t) for k, t in enumerate(request.retain_client_texts(setup))}
  clients = [k for k in range(setup.num_clients) if kept[k]]
  want, _ = _reference_federaser(ctx, 0.0, 1, "leaf")  # ratio 0: the stored updates as sent
  np.testing.assert_allclose(flat(out.trainable), want, atol=1e-5)
  if case == "partial_participation":  # some retained client did sit a round out
    rounds = np.asarray(res.history.rounds)
    assert any((rounds[k] == r).sum() == 0 for k in clients for r in range(cfg.fed.rounds))
  else:  # the holders keep fewer pairs than they hold
    assert any(kept[k] < len(setup.client_texts()[k]) for k in clients)


def test_federaser_refuses_incomplete_history(trained):
  with pytest.raises(ValueError, match="history_size"):
    fe.federaser(make_ctx(trained, {"fed.rounds": 6}))


@pytest.mark.parametrize("name,needle", [
    ("federaser", r"set fed.history_size ≥ fed.rounds"),
    ("fedrecovery", r"set fed.history_size ≥ fed.rounds"),
    ("pga", r"no client updates \(fed.history_size=0\): PGA needs fed.history_size ≥ 1")])
def test_methods_refuse_a_run_without_history(trained, name, needle):
  """A run with fed.history_size=0 keeps no history (None): the methods that read it name the
  setting (they failed with an AttributeError on None)."""
  ctx = dataclasses.replace(make_ctx(trained, {}), history=None)
  with pytest.raises(ValueError, match=needle):
    methods.get(name)(ctx)


@pytest.mark.parametrize("case", ["leaf_every_2nd", "global", "sample_request", "partial"])
def test_federaser_calibration_equals_a_numpy_reference(trained, partial, case):
  """Calibrated rounds: the new update is computed from the current unlearned model on the
  retained participants' retain data, and keeps the stored update's norm (per leaf or global)
  with the new direction. Round 0 is only calibrated for a holder that lost D_f."""
  norm, interval, run = "leaf", 1, trained
  request = requests.client_request(run[1], [0])
  if case == "leaf_every_2nd":
    interval = 2
  elif case == "global":
    norm = "global"
  elif case == "sample_request":
    request = requests.sample_request(run[1], 0.5, clients=[1], seed=1)
  else:
    run = partial
    request = requests.client_request(run[1], [0])
  # SGD calibration: Adam would turn float reassociation (one client alone here, vmapped there)
  # into steps of up to its learning rate where a gradient is near 0 (conftest.assert_same_run).
  # Even so, the new direction is a float32 difference of parameters (after − before), rescaled
  # to the stored norm: ~1e-4 of rounding, against ~0.4 for a wrong calibration (old and new
  # swapped) or a wrong start point.
  ctx = make_ctx(run, {"federaser.calibration_ratio": 0.5, "federaser.norm": norm,
                       "federaser.retain_interval": interval, "fed.client_optimizer": "sgd",
                       "fed.client_lr": 0.5}, request=request, setup=run[1])
  out = fe.federaser(ctx)
  want, calibrated = _reference_federaser(ctx, 0.5, interval, norm)
  np.testing.assert_allclose(flat(out.trainable), want, atol=3e-4)
  assert dict(zip(out.diagnostics["replayed_rounds"],
                  out.diagnostics["calibrated_clients"])) == calibrated
  assert calibrated[0] == ([1] if case == "sample_request" else [])
  if case == "partial":  # some retained client sat a calibrated round out
    retained = request.retain_clients(run[1])
    assert any(set(c) != set(retained) for r, c in calibrated.items() if r > 0)


def test_federaser_leaves_round_0_uncalibrated_on_a_client_request(trained):
  """Liu et al. apply the first round's stored updates directly: replaying round 0 alone
  (retain_interval beyond the run) with calibration equals replaying it without."""
  only_first = {"federaser.retain_interval": 100}
  cal = fe.federaser(make_ctx(trained, {**only_first, "federaser.calibration_ratio": 0.5}))
  plain = fe.federaser(make_ctx(trained, {**only_first, "federaser.calibration_ratio": 0.0}))
  assert cal.diagnostics["replayed_rounds"] == [0]
  np.testing.assert_array_equal(flat(cal.trainable), flat(plain.trainable))


def test_federaser_calibrates_participants_on_the_configured_backend(partial, monkeypatch):
  """The calibration runs on `fed.backend` (as training does), and only the round's retained
  participants run local steps; the backends agree."""
  seen = []
  make = federated.make_round_fn

  def recording(update, backend="vmap", chunk_size=0):
    round_fn = make(update, backend, chunk_size)

    def run(params, backbone, data, batches, context=None):
      seen.append((backend, int(np.asarray(batches.mask).any(axis=(1, 2)).sum())))
      return round_fn(params, backbone, data, batches, context)

    return run

  monkeypatch.setattr(federated, "make_round_fn", recording)
  cfg, setup, res = partial
  out = {}
  for backend in ("sequential", "vmap"):
    seen.clear()
    ctx = make_ctx(partial, {"fed.backend": backend, "federaser.calibration_ratio": 0.5})
    out[backend] = fe.federaser(ctx)
    assert out[backend].diagnostics["backend"] == backend
    assert {b for b, _ in seen} == {backend}
    # Per calibrated round, the clients with local steps: the retained ones that took part.
    rounds = np.asarray(res.history.rounds)
    took_part = [sum(np.any(rounds[k] == r) for k in ctx.retain_clients)
                 for r in out[backend].diagnostics["replayed_rounds"] if r > 0]
    assert [n for _, n in seen] == took_part
    assert min(took_part) < len(ctx.retain_clients)  # someone did sit a round out
  assert_same_run(flat(out["sequential"].trainable), flat(out["vmap"].trainable))


# ----------------------------------------------------------------------------- FedRecovery


def test_fedrecovery_noise_has_configured_std():
  p = 200_000
  out = fr.fedrecovery_apply(jnp.ones(p), jnp.full(p, 0.5), jax.random.key(0), 0.03)
  noise = np.asarray(out) - 0.5
  assert abs(noise.mean()) < 3 * 0.03 / np.sqrt(p) * 3
  np.testing.assert_allclose(noise.std(), 0.03, rtol=0.01)
  assert fr.gaussian_sigma(1.0, 1e-5, 2.0) == pytest.approx(2.0 * np.sqrt(2 * np.log(1.25e5)))


def test_fedrecovery_residuals_and_method_noise(trained):
  ups = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)))
  w = jnp.array([[1.0, 1.0, 2.0], [1.0, 0.0, 1.0]])
  kept = w.at[:, 0].set(0.0)
  r = fr.aggregate_residuals(ups, w, kept)
  want0 = (ups[0, 0] + ups[0, 1] + 2 * ups[0, 2]) / 4 - (ups[0, 1] + 2 * ups[0, 2]) / 3
  np.testing.assert_allclose(r[0], want0, atol=1e-6)
  np.testing.assert_allclose(fr.fedrecovery_correction(r), r[0] + r[1], atol=1e-6)
  # A round only the leaving client took part in: without it nobody would have stepped, so the
  # residual is the whole aggregate; a round nobody took part in has none.
  w_solo = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  r = fr.aggregate_residuals(ups, w_solo, w_solo.at[:, 0].set(0.0))
  np.testing.assert_allclose(r[0], ups[0, 0], atol=1e-6)
  np.testing.assert_array_equal(r[1], np.zeros(4))
  # Without noise and uniform weights, FedRecovery = plain replay without the client
  # (= FedEraser without calibration): first-order exact removal.
  clean = fr.fedrecovery(make_ctx(trained))
  replay = fe.federaser(make_ctx(trained, {"federaser.calibration_ratio": 0.0}))
  np.testing.assert_allclose(flat(clean.trainable), flat(replay.trainable), atol=1e-5)
  noisy = fr.fedrecovery(make_ctx(trained, {"fedrecovery.noise_std": 0.02}))
  diff = flat(noisy.trainable) - flat(clean.trainable)
  assert noisy.diagnostics["noise_std"] == 0.02
  np.testing.assert_allclose(diff.std(), 0.02, rtol=0.05)


def test_fedrecovery_noise_leaves_frozen_lora_a_alone(trained):
  """Under FFA-LoRA every A factor is frozen at its init: noise goes to what is trained only."""
  cfg, setup, res = trained
  ffa = dataclasses.replace(setup, lora_config=dataclasses.replace(setup.lora_config,
                                                                  freeze_a=True))
  overrides = {"fedrecovery.noise_std": 0.02}
  clean = fr.fedrecovery(make_ctx((cfg, ffa, res)))
  noisy = fr.fedrecovery(make_ctx((cfg, ffa, res), overrides))
  labels = jax.tree.leaves(lora_lib.frozen_a_labels(noisy.trainable))
  diffs = [np.asarray(n) - np.asarray(c) for n, c in
           zip(jax.tree.leaves(noisy.trainable), jax.tree.leaves(clean.trainable))]
  assert "frozen" in labels and "trainable" in labels
  assert all(np.all(d == 0) for d, label in zip(diffs, labels) if label == "frozen")
  trained_diff = np.concatenate([d.ravel() for d, label in zip(diffs, labels)
                                 if label == "trainable"])
  np.testing.assert_allclose(trained_diff.std(), 0.02, rtol=0.05)
  # Without FFA-LoRA the A factors are trained, and noised.
  free = fr.fedrecovery(make_ctx(trained, overrides))
  free_clean = fr.fedrecovery(make_ctx(trained))
  assert all(np.abs(np.asarray(n) - np.asarray(c)).max() > 0 for n, c, label in
             zip(jax.tree.leaves(free.trainable), jax.tree.leaves(free_clean.trainable), labels)
             if label == "frozen")


def test_fedrecovery_equals_uncalibrated_federaser_under_partial_participation():
  """One client per round: the leaving client sent some round alone. FedRecovery's first-order
  removal must take that whole round out, as replay without it (FedEraser, ratio 0) does."""
  cfg = tiny_config(rounds=4, history_size=4, local_epochs=1, client_lr=3e-2,
                    clients_per_round=1)
  methods.add_config_blocks(cfg)
  setup = make_tiny_setup(cfg)
  res = run_fedavg(setup, cfg)
  rounds = np.asarray(res.history.rounds)
  target = int(np.flatnonzero((rounds == 0).any(axis=1))[0])  # round 0's only sender
  run = (cfg, setup, res)
  request = requests.client_request(setup, [target])
  rec = fr.fedrecovery(make_ctx(run, request=request))
  era = fe.federaser(make_ctx(run, {"federaser.calibration_ratio": 0.0}, request=request))
  assert 0 not in era.diagnostics["replayed_rounds"]  # replay skips the target's solo round
  np.testing.assert_allclose(flat(rec.trainable), flat(era.trainable), atol=1e-5)


# ------------------------------------------------------------------- gradient ascent, finetune


def test_ascent_stopping_rule():
  assert ga.ascent_should_stop(0.3, 0.4, 1.0, 1.0, 0.5) == (True, False)
  assert ga.ascent_should_stop(0.5, 0.4, 1.0, 1.0, 0.5) == (False, False)
  assert ga.ascent_should_stop(0.5, 0.4, 0.4, 1.0, 0.5) == (True, True)


def test_gradient_ascent_stops_before_divergence(trained):
  # Aggressive ascent: without a stopping rule it would run all 20 rounds.
  ctx = make_ctx(trained, {"gradient_ascent.max_rounds": 20, "gradient_ascent.lr": 0.5,
                           "gradient_ascent.clip_norm": 0.0})
  res = ga.gradient_ascent(ctx)
  d = res.diagnostics
  assert d["rounds_run"] < 20 and d["stopped"] != "max_rounds"
  _, setup, _ = trained
  util = common.alignment_gap(setup.model, setup.backbone, res.trainable, setup.data,
                              common.utility_texts(ctx))
  assert d["utility0"] > 0.01  # The trained tiny model does align pairs.
  assert d["utility0"] - util <= 0.5 * d["utility0"]  # The returned model is not the diverged one.
  cos = federated.matched_cosines(setup.model, setup.backbone, res.trainable, setup.data,
                                  ctx.request.forget_texts).mean()
  cos0 = federated.matched_cosines(setup.model, setup.backbone, ctx.trained, setup.data,
                                   ctx.request.forget_texts).mean()
  assert cos < cos0


def test_finetune_never_touches_forget_data(trained):
  _, setup, _ = trained
  request = requests.sample_request(setup, 0.3, seed=0)
  ctx = make_ctx(trained, {"finetune.rounds": 2}, request=request)
  out = ft.finetune(ctx)
  # Replace every forget pair's image and caption by garbage: the result must not change.
  data = setup.data
  f_img = np.asarray(data.text_image)[request.forget_texts]
  images = np.asarray(data.images).copy()
  images[f_img] = 255 - images[f_img]
  ids = np.asarray(data.input_ids).copy()
  ids[request.forget_texts, 1] = (ids[request.forget_texts, 1] + 7) % 30
  garbled = dataclasses.replace(setup, data=data.replace(images=jnp.asarray(images),
                                                         input_ids=jnp.asarray(ids)))
  out2 = ft.finetune(make_ctx(trained, {"finetune.rounds": 2}, request=request, setup=garbled))
  np.testing.assert_array_equal(flat(out.trainable), flat(out2.trainable))
  assert np.abs(flat(out.trainable) - flat(ctx.trained)).max() > 0


# --------------------------------------------------------------------------------- CCU, MVI


def _emb(seed, n=6, d=8):
  r = np.random.default_rng(seed)
  return [jnp.asarray(r.normal(size=(n, d)), jnp.float32) for _ in range(4)]


def test_ccu_losses_behave_as_documented():
  img_f, txt_f, img_r, txt_r = _emb(0)
  orig = dict(img_f=img_f, txt_f=txt_f, img_r=img_r, txt_r=txt_r)
  fm, rm = jnp.ones(6, bool), jnp.ones(6, bool)
  eye = jnp.eye(6, dtype=bool)  # six distinct images with distinct captions
  t = ccu.ccu_losses(img_f, txt_f, img_r, txt_r, orig, fm, rm, 0.1, eye)
  assert float(t["retention"]) == pytest.approx(0.0, abs=1e-5)
  assert float(t["separation"]) == pytest.approx(0.0, abs=1e-6)
  # L_inv is visual-side only: no gradient reaches the text embeddings.
  inverse = lambda x: ccu.ccu_losses(img_f, x, img_r, txt_r, orig, fm, rm, 0.1, eye)["inverse"]
  g_txt = jax.grad(inverse)(txt_f)
  assert float(jnp.abs(g_txt).max()) == 0.0
  # Images aligned with their *own* captions score worse than images re-aligned to the shifted
  # captions (the inverse objective dissociates the pairs).
  shift, _ = ccu.inverse_targets(fm, eye)
  own = ccu.ccu_losses(txt_f, txt_f, img_r, txt_r, orig, fm, rm, 0.1, eye)["inverse"]
  moved = ccu.ccu_losses(txt_f[shift], txt_f, img_r, txt_r, orig, fm, rm, 0.1, eye)["inverse"]
  assert float(moved) < float(own)
  targets, _ = ccu.inverse_targets(jnp.array([True, False, True, True]), jnp.eye(4, dtype=bool))
  np.testing.assert_array_equal(targets, [2, 2, 3, 0])  # invalid rows: unused
  # Perturbing retain images moves the retain structure: separation > 0.
  t2 = ccu.ccu_losses(img_f, txt_f, img_r + 0.5 * img_f, txt_r, orig, fm, rm, 0.1, eye)
  assert float(t2["separation"]) > 0 and float(t2["retention"]) > 0


def test_ccu_inverse_targets_are_other_captions_of_other_images():
  """Each row's new positive: the next valid row (cyclically) with other caption tokens and
  another image; a brute-force search over the batch is the reference."""
  r = np.random.default_rng(0)
  b = 12
  tokens = r.integers(0, 3, size=(b, 2))          # few distinct captions: many identical
  images = r.integers(0, 5, size=b)               # several captions per image
  valid = r.random(b) < 0.8
  pixels = np.broadcast_to(images[:, None, None, None], (b, 2, 2, 3)).astype(np.float32)
  related = ccu.related_rows(jnp.asarray(tokens), jnp.asarray(pixels))
  targets, has_partner = map(np.asarray, ccu.inverse_targets(jnp.asarray(valid), related))
  for i in range(b):
    ok = [j for j in list(range(i + 1, b)) + list(range(i + 1))
          if valid[j] and images[j] != images[i] and np.any(tokens[j] != tokens[i])]
    assert has_partner[i] == bool(ok), i
    if ok:
      assert targets[i] == ok[0], i
  t = targets[valid & has_partner]
  own = np.flatnonzero(valid & has_partner)
  assert np.all(np.any(tokens[t] != tokens[own], axis=1)) and np.all(images[t] != images[own])
  # By hand: captions [a, a, b, a] of images [0, 1, 0, 2]. Row 0's only other caption is its
  # own image's: no partner.
  tokens, images = np.array([[1], [1], [2], [1]]), np.array([0, 1, 0, 2])
  pixels = np.broadcast_to(images[:, None, None, None], (4, 2, 2, 3)).astype(np.float32)
  targets, has_partner = ccu.inverse_targets(
      jnp.ones(4, bool), ccu.related_rows(jnp.asarray(tokens), jnp.asarray(pixels)))
  np.testing.assert_array_equal(has_partner, [False, True, True, True])
  np.testing.assert_array_equal(np.asarray(targets)[1:], [2, 3, 2])


@pytest.mark.parametrize("batch", ["one_caption", "one_image"])
def test_ccu_inverse_dissociates_without_other_captions(batch):
  """A backdoor's forget batch holds one caption (rows: distinct images), a small D_f may hold
  one image with several captions: no row has another pair's caption to move to, so each falls
  back to ascent on its own positive. The gradient is not 0, and a descent step lowers every
  image's cosine to its own caption."""
  r = np.random.default_rng(0)
  b, d = 6, 8
  img = jnp.asarray(r.normal(size=(b, d)), jnp.float32)
  txt = jnp.asarray(r.normal(size=(b, d)), jnp.float32)
  tokens, ids = np.tile([[5, 7]], (b, 1)), np.arange(b)   # one caption, b images
  if batch == "one_image":
    img, tokens, ids = jnp.tile(img[:1], (b, 1)), np.stack([np.arange(b), np.arange(b)], 1), 0 * ids
  else:
    txt = jnp.tile(txt[:1], (b, 1))
  pixels = jnp.asarray(np.broadcast_to(ids[:, None, None, None], (b, 2, 2, 3)), jnp.float32)
  related = ccu.related_rows(jnp.asarray(tokens), pixels)
  m = jnp.ones(b, bool)
  orig = dict(img_f=img, txt_f=txt, img_r=img, txt_r=txt)
  loss = lambda u: ccu.ccu_losses(u, txt, img, txt, orig, m, m, 0.07, related)["inverse"]
  grad = jax.grad(loss)(img)
  assert float(jnp.abs(grad).max()) > 1e-3
  cos = lambda u: np.sum(np.asarray(u / jnp.linalg.norm(u, axis=1, keepdims=True))
                         * np.asarray(txt / jnp.linalg.norm(txt, axis=1, keepdims=True)), 1)
  assert np.all(cos(img - 0.05 * grad) < cos(img))


def test_mvi_shared_basis_and_losses():
  r = np.random.default_rng(0)
  n, d, k = 400, 10, 2
  z = r.normal(size=(n, k))
  planted = np.linalg.qr(r.normal(size=(d, k)))[0]
  img = z @ planted.T * 3 + 0.3 * r.normal(size=(n, d))
  txt = z @ planted.T * 3 + 0.3 * r.normal(size=(n, d))
  basis = np.asarray(mvi.shared_basis(jnp.asarray(img), jnp.asarray(txt), k))
  np.testing.assert_allclose(basis.T @ basis, np.eye(k), atol=1e-5)
  # The recovered subspace is the planted one (cosines of principal angles ≈ 1).
  assert np.linalg.svd(planted.T @ basis, compute_uv=False).min() > 0.98
  shared, specific = mvi.factorize(jnp.asarray(img[:5]), jnp.asarray(basis))
  u = img[:5] / np.linalg.norm(img[:5], axis=1, keepdims=True)
  np.testing.assert_allclose(shared + specific, u, atol=1e-5)
  np.testing.assert_allclose(np.sum(shared * specific, 1), 0, atol=1e-5)

  img_f, txt_f, img_r, txt_r = _emb(1, d=d)
  orig = dict(img_f=img_f, txt_f=txt_f, img_r=img_r, txt_r=txt_r)
  m = jnp.ones(6, bool)
  b = jnp.asarray(basis)
  t = mvi.mvi_losses(img_f, img_f, img_r, txt_r, orig, m, m, b, 0.1)  # matched pairs aligned
  assert float(t["edit"]) > 0.1
  assert float(t["locality"]) == pytest.approx(0.0, abs=1e-5)
  same = jnp.tile(jnp.asarray(planted[:, 0])[None], (6, 1))  # every shared factor identical
  t = mvi.mvi_losses(same, same, img_r, txt_r, dict(orig, img_f=same, txt_f=same), m, m, b, 0.1)
  assert float(t["edit"]) == pytest.approx(0.0, abs=1e-5)
  assert float(t["specific"]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", ["ccu", "mvi"])
def test_ccu_and_mvi_losses_ignore_padded_rows(method):
  """Batches padded with garbage rows (mask False) give the losses of the real rows alone."""
  img_f, txt_f, img_r, txt_r = _emb(2)
  keep_f = np.array([True, True, False, True, False, True])
  keep_r = np.array([True, False, True, True, True, False])
  pad = lambda x, keep: jnp.where(jnp.asarray(keep)[:, None], x, 50.0)
  padded = [pad(img_f, keep_f), pad(txt_f, keep_f), pad(img_r, keep_r), pad(txt_r, keep_r)]
  compact = [img_f[keep_f], txt_f[keep_f], img_r[keep_r], txt_r[keep_r]]
  # The reference embeddings of the original model: the same rows shifted, padded the same way.
  orig_p = dict(zip(("img_f", "txt_f", "img_r", "txt_r"),
                    [p + 0.1 for p in padded]))
  orig_c = dict(zip(("img_f", "txt_f", "img_r", "txt_r"), [c + 0.1 for c in compact]))
  basis = jnp.asarray(np.linalg.qr(np.random.default_rng(3).normal(size=(8, 3)))[0],
                      jnp.float32)
  if method == "ccu":
    fn = lambda e, o, fm, rm: ccu.ccu_losses(*e, o, fm, rm, 0.1, jnp.eye(len(fm), dtype=bool))
  else:
    fn = lambda e, o, fm, rm: mvi.mvi_losses(*e, o, fm, rm, basis, 0.1)
  got = fn(padded, orig_p, jnp.asarray(keep_f), jnp.asarray(keep_r))
  want = fn(compact, orig_c, jnp.ones(4, bool), jnp.ones(4, bool))
  assert set(got) == set(want)
  for k in want:
    assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-5, abs=1e-6), k
  assert any(abs(float(v)) > 1e-3 for v in want.values())  # not all zero


@pytest.mark.parametrize("method,block,source", [
    ("ccu", "ccu", "public"), ("ccu", "ccu", "local"), ("mvi_causal", "mvi_causal", "local"),
    ("ease", "bke", "public"), ("ease", "bke", "local")])
def test_empty_retain_source_is_refused(trained, method, block, source):
  """'public' without a public split (Flickr30K/COCO configs have none), 'local' on a client
  request (the leaving client keeps nothing): the retention terms would silently vanish (EASE's
  BKE ran without its retain term, saying so only in a diagnostic)."""
  _, setup, _ = trained
  if source == "public":
    setup = dataclasses.replace(setup, public_images=np.array([], np.int64))
  ctx = make_ctx(trained, {f"{block}.retain_source": source}, setup=setup)
  why = "no public split" if source == "public" else "keep no pairs"
  with pytest.raises(ValueError, match=rf"{block}: retain_source='{source}'.*{why}"):
    methods.get(method)(ctx)
  common.require_retain(ctx, "none", block)  # 'none' says so on purpose
  if method == "ease":  # Without a retain term there is nothing to refuse.
    ctx = make_ctx(trained, {"bke.retain_source": source, "bke.retain_weight": 0.0,
                             "pfl.rounds": 0, "gsd.enabled": False}, setup=setup)
    assert methods.get("ease")(ctx).diagnostics["bke_use_retain"] is False


@pytest.mark.parametrize("name", ["ccu", "mvi_causal"])
def test_multimodal_baselines_lower_forget_alignment(trained, name):
  _, setup, _ = trained
  ctx = make_ctx(trained, {f"{name}.steps": 8, f"{name}.lr": 1e-2, f"{name}.batch_size": 8})
  if name == "mvi_causal":
    ctx = make_ctx(trained, {"mvi_causal.steps": 8, "mvi_causal.lr": 1e-2,
                             "mvi_causal.batch_size": 8, "mvi_causal.shared_dim": 8})
  res = methods.get(name)(ctx)
  assert res.wall_time_s > 0 and np.all(np.isfinite(flat(res.trainable)))
  if name == "mvi_causal":  # It edits the shared factor: matched pairs stop standing out there.
    d = res.diagnostics
    assert d["forget_shared_margin_after"] < d["forget_shared_margin_before"]
    return
  cos = federated.matched_cosines(setup.model, setup.backbone, res.trainable, setup.data,
                                  ctx.request.forget_texts).mean()
  cos0 = federated.matched_cosines(setup.model, setup.backbone, ctx.trained, setup.data,
                                   ctx.request.forget_texts).mean()
  assert cos < cos0


@pytest.mark.parametrize("build", [lambda s: requests.client_request(s, [2]),
                                   lambda s: requests.sample_request(s, 0.4, clients=[3, 1])])
def test_holder_batches_come_from_each_holders_own_data(trained, build):
  """The ascent-style methods (GA, PGA, CCU, MVI) index holders by position; every other test
  leaves client 0, whose position is its id. Row h must draw from holder h's own D_f and D_r."""
  _, setup, _ = trained
  req = build(setup)
  ctx = make_ctx(trained, request=req)
  batches, weights = common.holder_schedules(ctx, 6, 4, "local", rng_lib.Stream.CCU_FORGET,
                                             rng_lib.Stream.CCU_RETAIN)
  forget, retain = req.forget_client_texts(setup), req.retain_client_texts(setup)
  for row, h in enumerate(req.holders):
    f, r = batches["forget"], batches["retain"]
    assert set(f.text_indices[row][f.mask[row]]) <= set(forget[h].tolist())
    assert f.mask[row].any()
    assert set(r.text_indices[row][r.mask[row]]) <= set(retain[h].tolist())
    assert weights[row] == len(forget[h])
