"""The algorithm layer: the local-steps primitive, FedAvg as init/apply, populations, the driver."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import flat_params as flat
from conftest import assert_same_run, run_fedavg, tiny_config
from ease_jax import builders
from ease_jax import centralized
from ease_jax import federated
from ease_jax.federated import driver


def _plan(setup, config, **seeds):
  cfg = config.copy_and_resolve_references()
  for k, v in seeds.items():
    cfg.seeds[k] = v
  return cfg, builders.round_plan(setup, cfg)


def test_local_steps_streams_context_and_constraint(tiny_setup):
  """Two batch streams reach the loss as a dict, the context is passed through untouched by the
  optimiser, `constrain` runs after every step, and a fresh state per call is FedAvg's."""
  setup = tiny_setup
  config = tiny_config()
  params = builders.init_trainable(setup, config)
  clip = federated.clip_objective(setup.model)

  def loss_fn(p, backbone, batch, context):
    return (clip(p, backbone, batch["a"]) + context["weight"] * clip(p, backbone, batch["b"]),
            dict(a=clip(p, backbone, batch["a"])))

  texts = setup.client_texts()
  batches = dict(a=federated.cycled_batches(texts[0], 3, 4, (0, 1)),
                 b=federated.cycled_batches(texts[1], 3, 4, (0, 2)))
  batches = jax.tree.map(jnp.asarray, batches)
  steps = federated.local_steps(loss_fn, optax.sgd(0.1), has_aux=True)
  delta, m = jax.jit(steps)(params, setup.backbone, setup.data, batches, dict(weight=0.0))
  only_a, _ = jax.jit(federated.local_steps(clip, optax.sgd(0.1)))(
      params, setup.backbone, setup.data, batches["a"])
  np.testing.assert_allclose(flat(delta), flat(only_a), atol=1e-6)  # weight 0: stream b inert
  assert m["step_a"].shape == (3,) and int(m["steps"]) == 3
  np.testing.assert_allclose(m["step_a"], m["step_loss"], rtol=1e-6)
  # A constraint applied after each step: here a clip of every coordinate to ±1e-3.
  box = federated.local_steps(clip, optax.sgd(10.0),
                              constrain=lambda p, ctx: jax.tree.map(
                                  lambda x, x0: jnp.clip(x, x0 - ctx, x0 + ctx), p, params))
  boxed, _ = jax.jit(box)(params, setup.backbone, setup.data, batches["a"], 1e-3)
  assert np.abs(flat(boxed)).max() <= 1e-3 + 1e-7
  assert np.abs(flat(boxed)).max() > 5e-4


def test_resume_continues_the_optimizer_state(tiny_setup):
  """S steps in one scan == the same steps in two chunks with the state carried (pretraining)."""
  setup = tiny_setup
  params = builders.init_trainable(setup, tiny_config())
  clip = federated.clip_objective(setup.model)
  opt = optax.adam(1e-2)
  steps = federated.local_steps(clip, opt)
  b = jax.tree.map(jnp.asarray, federated.cycled_batches(setup.client_texts()[0], 6, 4, (1,)))
  whole, _, _ = jax.jit(steps.resume)(params, opt.init(params), setup.backbone, setup.data, b)
  head = jax.tree.map(lambda x: x[:4], b)
  tail = jax.tree.map(lambda x: x[4:], b)
  p, s, _ = jax.jit(steps.resume)(params, opt.init(params), setup.backbone, setup.data, head)
  p, _, _ = jax.jit(steps.resume)(p, s, setup.backbone, setup.data, tail)
  np.testing.assert_allclose(flat(p), flat(whole), atol=1e-6)


def test_holders_update_is_the_weighted_mean_of_each_holder(tiny_setup):
  setup = tiny_setup
  params = jax.tree.map(lambda x: x + 0.01, builders.init_trainable(setup, tiny_config()))
  steps = federated.local_steps(federated.clip_objective(setup.model), optax.adam(1e-2))
  texts = setup.client_texts()
  rows = [federated.cycled_batches(texts[c], 2, 4, (c,)) for c in range(3)]
  stacked = federated.Batches(jnp.asarray(np.stack([r.text_indices for r in rows])),
                              jnp.asarray(np.stack([r.mask for r in rows])))
  weights = jnp.array([1.0, 2.0, 5.0])
  mean, metrics = federated.holders_update(steps)(params, setup.backbone, setup.data, stacked,
                                                  weights)
  each = [flat(jax.jit(steps)(params, setup.backbone, setup.data,
                              jax.tree.map(jnp.asarray, r))[0]) for r in rows]
  np.testing.assert_allclose(flat(mean), np.average(each, axis=0, weights=[1, 2, 5]),
                             atol=1e-6)
  assert metrics["loss"].shape == (3,)


def test_fedavg_apply_is_pure_and_jit_equals_no_jit(tiny_setup):
  setup = tiny_setup
  config = tiny_config(clients_per_round=3)
  plan = builders.round_plan(setup, config)
  algo = builders.fedavg_algorithm(setup, config, plan)
  state = algo.init(builders.init_trainable(setup, config))
  inputs = jax.tree.map(jnp.asarray, plan.inputs(0))
  eager, m1 = algo.apply(state, inputs)
  again, _ = algo.apply(state, inputs)  # The input state is not consumed or changed.
  jitted, m2 = jax.jit(algo.apply)(state, inputs)
  np.testing.assert_array_equal(flat(eager.trainable), flat(again.trainable))
  assert_same_run(flat(jitted.trainable), flat(eager.trainable))
  assert_same_run(jitted.history.updates, eager.history.updates)
  assert int(eager.round) == 1 and float(m1["train_loss"]) == pytest.approx(
      float(m2["train_loss"]), rel=1e-5)
  # The history holds exactly the sampled clients' updates of round 0.
  rounds = np.asarray(eager.history.rounds)
  np.testing.assert_array_equal(np.flatnonzero(rounds[:, 0] == 0), plan.inputs(0).client_ids)


def test_two_seeds_vmapped_equal_the_two_runs_one_by_one(tiny_setup):
  """`vmapped(algorithm)` over a seed axis (LoRA init, sampling, shuffles) == separate runs."""
  setup = tiny_setup
  config = tiny_config(rounds=3, clients_per_round=3)
  cfgs, plans, singles = [], [], []
  for seed in (0, 1):
    cfg, plan = _plan(setup, config, init=seed, sampling=seed, data=seed)
    cfgs.append(cfg)
    plans.append(plan)
    singles.append(run_fedavg(setup, cfg, plan=plan))
  assert [r["clients"] for r in singles[0].metrics] != [r["clients"] for r in singles[1].metrics]
  algo = builders.fedavg_algorithm(setup, config, plans[0])
  stacked = federated.StackedPlan(tuple(plans))
  population = federated.vmapped(algo, stacked.axes)
  starts = jax.tree.map(lambda *x: jnp.stack(x),
                        *[builders.init_trainable(setup, c) for c in cfgs])
  res = driver.run(population, stacked, population.init(starts), config.fed.rounds,
                   options=driver.RunOptions(progress=False))
  # Adam amplifies float reassociation of near-zero gradients (`assert_same_run`).
  for i, single in enumerate(singles):
    member = jax.tree.map(lambda x, i=i: x[i], res.state)
    assert_same_run(flat(member.trainable), flat(single.trainable))
    assert_same_run(member.history.updates, single.state.history.updates)
    np.testing.assert_array_equal(np.asarray(member.history.rounds),
                                  np.asarray(single.state.history.rounds))
  assert res.metrics[0]["clients"] == [singles[0].metrics[0]["clients"],
                                       singles[1].metrics[0]["clients"]]


def test_auto_backend_follows_the_measured_rule():
  assert federated.resolve_backend("auto", 0, 8, "cpu") == ("vmap", 0)
  assert federated.resolve_backend("auto", 0, 512, "cpu") == ("chunked", 8)
  assert federated.resolve_backend("auto", 16, 512, "cpu") == ("chunked", 16)
  assert federated.resolve_backend("auto", 0, 512, "gpu") == ("vmap", 0)
  assert federated.resolve_backend("auto", 0, 4096, "gpu") == ("chunked", 256)
  assert federated.resolve_backend("sequential", 0, 8) == ("sequential", 0)
  with pytest.raises(ValueError, match="pmap"):
    federated.resolve_backend("pmap", 0, 8)
  # Clients of unequal sizes: on a CPU the loop that skips their padded steps, below 85% real.
  assert federated.resolve_backend("auto", 0, 8, "cpu", utilization=0.84) == ("sequential", 0)
  assert federated.resolve_backend("auto", 0, 8, "cpu", utilization=0.85) == ("vmap", 0)
  assert federated.resolve_backend("auto", 0, 8, "gpu", utilization=0.3) == ("vmap", 0)
  # The default config runs 'auto' (every tiny run of the suite trains with it).
  assert tiny_config().fed.backend == "auto"


def test_pretraining_runs_on_the_local_steps_primitive(tiny_setup):
  """Central full-parameter training (chunks of `local_steps.resume`) lowers the loss and is
  deterministic in its seed."""
  setup = tiny_setup
  init = lambda: setup.model.init(jax.random.key(3))  # pretrain donates its params
  scale0 = np.asarray(init()["logit_scale"])
  texts = np.arange(setup.dataset.num_texts)
  kw = dict(options=centralized.PretrainOptions(
      steps=30, batch_size=16, learning_rate=3e-3, weight_decay=0.0, warmup=2, seed=0,
      learn_logit_scale=False), progress=False)
  trained, curve = centralized.pretrain(setup.model, init(), setup.data, texts, **kw)
  assert len(curve) == 3 and curve[-1] < curve[0]
  np.testing.assert_array_equal(trained["logit_scale"], scale0)  # the fixed temperature
  again, curve2 = centralized.pretrain(setup.model, init(), setup.data, texts, **kw)
  assert curve2 == curve
  np.testing.assert_array_equal(flat(again), flat(trained))
  with pytest.raises(ValueError, match="batch_size"):
    centralized.pretrain(setup.model, init(), setup.data, texts[:4], **kw)
