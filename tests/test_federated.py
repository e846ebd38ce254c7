"""The federated engine: backends agree, padding is inert, FedAvg is a weighted mean, resume works."""
import dataclasses
import json
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
import pytest

from conftest import assert_same_run, flat_params as flat, make_tiny_setup, run_fedavg, tiny_config
from ease_jax import builders
from ease_jax import checkpointing
from ease_jax import federated
from ease_jax import jsonio
from ease_jax import runtime
from ease_jax.data import dataset as dataset_lib
from ease_jax.federated import driver


def _tree_allclose(a, b, atol=1e-5, rtol=1e-5):
  leaves = jax.tree.leaves(jax.tree.map(
      lambda x, y: np.allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol), a, b))
  return all(leaves)


def _round_inputs(setup, config, num_steps=None, seed=0, round_index=0):
  texts = setup.client_texts()
  num_steps = num_steps or max(federated.num_local_steps(len(t), config.fed.batch_size,
                                                         config.fed.local_epochs) for t in texts)
  sched = federated.build_client_schedules(texts, config.fed.batch_size, config.fed.local_epochs,
                                           num_steps, seed, round_index, range(len(texts)))
  return sched


@pytest.fixture(scope="module")
def engine(tiny_setup):
  config = tiny_config()
  trainable = builders.init_trainable(tiny_setup, config)
  # Non-zero B, so the forward pass depends on both factors.
  trainable = jax.tree.map(lambda x: x + 0.01, trainable)
  client_update = federated.local_steps(federated.clip_objective(tiny_setup.model),
                                        optax.adam(1e-2))
  return config, trainable, client_update


def test_vmap_equals_sequential_equals_chunked(tiny_setup, engine):
  config, trainable, client_update = engine
  sched = _round_inputs(tiny_setup, config)
  args = (trainable, tiny_setup.backbone, tiny_setup.data, jax.tree.map(jnp.asarray, sched.batches))
  vmapped, m_v = federated.make_round_fn(client_update, "vmap")(*args)
  sequential, m_s = federated.make_round_fn(client_update, "sequential")(*args)
  chunked, _ = federated.make_round_fn(client_update, "chunked", chunk_size=3)(*args)
  assert _tree_allclose(vmapped, sequential)
  assert _tree_allclose(vmapped, chunked)
  np.testing.assert_allclose(m_v["loss"], m_s["loss"], rtol=1e-5)
  # The deltas are real updates, not zeros.
  assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(vmapped))


def test_padding_does_not_change_real_clients(tiny_setup, engine):
  config, trainable, client_update = engine
  sched = _round_inputs(tiny_setup, config)
  padded = _round_inputs(tiny_setup, config, num_steps=sched.text_indices.shape[1] + 3)
  fn = federated.make_round_fn(client_update, "vmap")
  base, _ = fn(trainable, tiny_setup.backbone, tiny_setup.data,
               jax.tree.map(jnp.asarray, sched.batches))
  more_steps, _ = fn(trainable, tiny_setup.backbone, tiny_setup.data,
                     jax.tree.map(jnp.asarray, padded.batches))
  assert _tree_allclose(base, more_steps, atol=1e-6)
  # An extra all-padding client next to the real ones: real clients' updates unchanged, its own 0.
  idx = np.concatenate([sched.text_indices, np.zeros_like(sched.text_indices[:1])])
  mask = np.concatenate([sched.mask, np.zeros_like(sched.mask[:1])])
  with_ghost, _ = fn(trainable, tiny_setup.backbone, tiny_setup.data,
                     federated.Batches(jnp.asarray(idx), jnp.asarray(mask)))
  # The client axis' length changes how XLA vectorizes the clients' reductions, so the real
  # clients agree up to float rounding (3e-6 on deltas of 2e-2 with the suite's compile flags),
  # the tolerance of vmap == sequential above; ghost data leaking in would move them by ~1e-2.
  assert _tree_allclose(jax.tree.map(lambda x: x[:-1], with_ghost), base)
  assert all(float(jnp.abs(x[-1]).max()) == 0 for x in jax.tree.leaves(with_ghost))


@pytest.mark.parametrize("backend", ["sequential", "vmap"])
def test_a_plan_on_part_of_the_data_pads_to_the_whole_federation_where_padding_is_skipped(
    tiny_setup, backend):
  """A retrain-like plan (a subset of every client's texts) is padded to the whole federation's
  local steps only where padded steps are skipped, so it reuses the whole federation's compiled
  client update; its real batches and its training are those of the unpadded plan."""
  config = tiny_config(batch_size=4)
  config.fed.backend = backend
  part = [t[:5] for t in tiny_setup.client_texts()]  # 2 local steps each, against 4
  whole = builders.round_plan(tiny_setup, config)
  plan = builders.round_plan(tiny_setup, config, client_texts=part)
  own = dataclasses.replace(plan, min_steps=0)
  assert (whole.num_steps, own.num_steps) == (4, 2)
  assert plan.num_steps == (4 if backend == "sequential" else 2)
  padded, unpadded = plan.inputs(1), own.inputs(1)
  np.testing.assert_array_equal(padded.batches.text_indices[:, :2], unpadded.batches.text_indices)
  np.testing.assert_array_equal(padded.batches.mask[:, :2], unpadded.batches.mask)
  assert not padded.batches.mask[:, 2:].any()
  start = builders.init_trainable(tiny_setup, config)
  trained = []
  for p in (plan, own):
    algorithm = builders.fedavg_algorithm(tiny_setup, config, p)
    state, _ = algorithm.apply(algorithm.init(start), p.inputs(1))
    trained.append(state.trainable)
  np.testing.assert_array_equal(flat(trained[0]), flat(trained[1]))
  assert not _tree_allclose(trained[0], start)


def test_client_update_trains_only_the_adapter(tiny_setup, engine):
  config, trainable, client_update = engine
  sched = _round_inputs(tiny_setup, config)
  delta, metrics = jax.jit(client_update)(
      trainable, tiny_setup.backbone, tiny_setup.data,
      federated.Batches(jnp.asarray(sched.text_indices[0]), jnp.asarray(sched.mask[0])))
  assert jax.tree.structure(delta) == jax.tree.structure(trainable)
  assert int(metrics["steps"]) == int(sched.mask[0].any(-1).sum())
  # One SGD step on one full batch is exactly -lr * grad of the objective (computed separately).
  loss_fn = federated.clip_objective(tiny_setup.model)
  sgd_update = federated.local_steps(loss_fn, optax.sgd(0.1))
  texts = jnp.asarray(tiny_setup.client_texts()[0][:8])
  one_step, _ = sgd_update(trainable, tiny_setup.backbone, tiny_setup.data,
                           federated.Batches(texts[None], jnp.ones((1, 8), bool)))
  batch = dict(tiny_setup.data.batch(texts), mask=jnp.ones(8, bool))
  grads = jax.grad(loss_fn)(trainable, tiny_setup.backbone, batch)
  assert _tree_allclose(one_step, jax.tree.map(lambda g: -0.1 * g, grads), atol=1e-6)


@pytest.mark.parametrize("size,epochs", [(14, 2), (5, 1)])
def test_client_update_equals_a_plain_loop_over_its_batches(tiny_setup, size, epochs):
  """The schedule and the scanned, masked steps against a Python loop of Adam steps on the
  unpadded batches: two epochs ending in a partial batch, and a client smaller than one batch,
  padded to more steps than it has."""
  loss_fn = federated.clip_objective(tiny_setup.model)
  optimizer = optax.adam(1e-2)
  trainable = jax.tree.map(lambda x: x + 0.01, builders.init_trainable(tiny_setup, tiny_config()))
  texts = np.asarray(tiny_setup.client_texts()[0][:size])
  batch_size, seed, round_index, client = 8, 3, 2, 5
  steps = federated.num_local_steps(size, batch_size, epochs)
  sched = federated.build_client_schedules([texts], batch_size, epochs, steps + 2, seed,
                                           round_index, [client])
  delta, metrics = federated.local_steps(loss_fn, optimizer)(
      trainable, tiny_setup.backbone, tiny_setup.data,
      federated.Batches(jnp.asarray(sched.text_indices[0]), jnp.asarray(sched.mask[0])))
  # The reference: the client's shuffle of each epoch, cut into batches, one Adam step each.
  rng = np.random.default_rng([seed, round_index, client])
  batches = [order[i:i + batch_size] for order in (rng.permutation(texts) for _ in range(epochs))
             for i in range(0, size, batch_size)]
  params, opt_state, losses = trainable, optimizer.init(trainable), []
  for ids in batches:
    batch = dict(tiny_setup.data.batch(jnp.asarray(ids)), mask=jnp.ones(len(ids), bool))
    loss, grads = jax.value_and_grad(loss_fn)(params, tiny_setup.backbone, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params, losses = optax.apply_updates(params, updates), losses + [float(loss)]
  assert len(batches) == steps == int(metrics["steps"])
  reference = jax.tree.map(jnp.subtract, params, trainable)
  assert _tree_allclose(delta, reference, atol=1e-6, rtol=1e-4)
  assert float(metrics["loss"]) == pytest.approx(np.mean(losses), rel=1e-5)


def test_fedavg_is_sample_weighted_mean():
  rng = np.random.default_rng(0)
  deltas = {"a": rng.normal(size=(3, 4, 2)).astype(np.float32),
            "b": rng.normal(size=(3, 5)).astype(np.float32)}
  weights = np.array([10.0, 30.0, 60.0], np.float32)
  trainable = {"a": np.ones((4, 2), np.float32), "b": np.zeros(5, np.float32)}
  opt = federated.server_optimizer(1.0)
  state = federated.init_server(jax.tree.map(jnp.asarray, trainable), opt)
  new_state, aggregate = federated.fedavg(state, jax.tree.map(jnp.asarray, deltas),
                                          jnp.asarray(weights), opt)
  p = weights / weights.sum()
  for k in deltas:
    expected = np.tensordot(p, deltas[k], axes=1)
    np.testing.assert_allclose(aggregate[k], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_state.trainable[k], trainable[k] + expected, rtol=1e-6,
                               atol=1e-6)
  assert int(new_state.round) == 1
  # A server learning rate scales the step; a transform (e.g. a projection) is applied first.
  half = federated.server_optimizer(0.5)
  s2, _ = federated.fedavg(federated.init_server(jax.tree.map(jnp.asarray, trainable), half),
                           jax.tree.map(jnp.asarray, deltas), jnp.asarray(weights), half,
                           transform=lambda t: jax.tree.map(lambda x: 2 * x, t))
  np.testing.assert_allclose(s2.trainable["b"], trainable["b"] + np.tensordot(p, deltas["b"], 1),
                             rtol=1e-6, atol=1e-6)


def test_schedules_cover_each_example_once_per_epoch():
  texts = [np.arange(0, 10), np.arange(10, 13), np.arange(13, 30)]
  sched = federated.build_client_schedules(texts, batch_size=4, local_epochs=2, num_steps=10,
                                           seed=3, round_index=5, client_ids=[0, 1, 2])
  for row, t in enumerate(texts):
    seen = sched.text_indices[row][sched.mask[row]]
    np.testing.assert_array_equal(np.sort(seen), np.sort(np.concatenate([t, t])))
  again = federated.build_client_schedules(texts, 4, 2, 10, 3, 5, [0, 1, 2])
  np.testing.assert_array_equal(again.text_indices, sched.text_indices)
  other_round = federated.build_client_schedules(texts, 4, 2, 10, 3, 6, [0, 1, 2])
  assert not np.array_equal(other_round.text_indices, sched.text_indices)
  with pytest.raises(ValueError, match="needs 10 local steps"):
    federated.build_client_schedules(texts, 4, 2, 9, 3, 5, [0, 1, 2])
  np.testing.assert_array_equal(sched.num_examples, [10, 3, 17])


def test_sample_clients_deterministic_and_in_range():
  a = federated.sample_clients(100, 10, seed=1, round_index=4)
  np.testing.assert_array_equal(a, federated.sample_clients(100, 10, seed=1, round_index=4))
  assert len(np.unique(a)) == 10 and a.min() >= 0 and a.max() < 100
  assert not np.array_equal(a, federated.sample_clients(100, 10, seed=1, round_index=5))
  np.testing.assert_array_equal(federated.sample_clients(5, 0, 1, 0), np.arange(5))


def test_update_history_ring_buffer():
  h = federated.UpdateHistory.create(num_clients=3, size=2, num_params=4)
  for r in range(3):
    h = h.record(jnp.array([0, 2]), np.full((2, 4), r, np.float32), r)
  ups, rounds = h.client_updates(0)
  np.testing.assert_array_equal(rounds, [1, 2])
  np.testing.assert_array_equal(ups[:, 0], [1, 2])
  assert h.client_updates(1)[0].shape == (0, 4)

  # Every client every round: the slot is the round modulo the size (the checkpointed layout).
  full = federated.UpdateHistory.create(num_clients=2, size=3, num_params=1)
  for r in range(5):
    full = full.record(jnp.array([0, 1]), np.full((2, 1), r, np.float32), r)
  np.testing.assert_array_equal(np.asarray(full.rounds), [[3, 4, 2], [3, 4, 2]])


def test_update_history_keeps_each_clients_own_last_updates():
  """Partial participation: client 0 sends in rounds 0, 1, 3 and 5; its last two are 3 and 5
  (the slot `round % size` kept 0 and 5). A dropped update (keep False) leaves the store as is."""
  h = federated.UpdateHistory.create(num_clients=2, size=2, num_params=1)
  for r, ids in enumerate([[0], [0, 1], [1], [0], [1], [0]]):
    h = h.record(jnp.array(ids), np.full((len(ids), 1), r, np.float32), r)
  np.testing.assert_array_equal(h.client_updates(0)[1], [3, 5])
  np.testing.assert_array_equal(h.client_updates(0)[0][:, 0], [3, 5])
  np.testing.assert_array_equal(h.client_updates(1)[1], [2, 4])
  kept = h.record(jnp.array([0, 1]), np.full((2, 1), 9, np.float32), 6, keep=jnp.array([False, True]))
  np.testing.assert_array_equal(kept.client_updates(0)[1], [3, 5])
  np.testing.assert_array_equal(kept.client_updates(1)[1], [4, 6])


def test_driver_evaluates_the_final_model_once():
  """The last round's evaluation is the run's final one; a run with no evaluating round (or no
  rounds) evaluates the final model after the loop."""
  class State(NamedTuple):
    trainable: jax.Array

  class Plan:
    def inputs(self, r):
      return r

  algorithm = federated.FederatedAlgorithm(
      init=State, apply=lambda state, r: (State(state.trainable + 1), {}))
  for num_rounds, every, evaluated_models in ((4, 2, [2, 4]), (4, 0, [4]), (0, 2, [0])):
    seen = []
    def eval_fn(trainable, seen=seen):
      seen.append(int(trainable))
      return {"value": float(trainable)}
    res = driver.run(algorithm, Plan(), State(jnp.zeros(())), num_rounds,
                     options=driver.RunOptions(eval_fn=eval_fn, eval_every=every, progress=False))
    assert seen == evaluated_models
    assert res.final_eval == {"value": float(num_rounds)}
    assert [r.get("value") for r in res.metrics] == [
        float(r + 1) if every and (r + 1) % every == 0 else None for r in range(num_rounds)]


def test_round_rows_list_clients_without_padding_rows():
  """A plan padded to a fixed number of rows (FedEraser's replay: id -1, weight 0) records only
  its real clients; a population's `[members, rows]` ids keep one list per member."""

  class Inputs(NamedTuple):
    client_ids: np.ndarray

  class Plan:
    def __init__(self, ids):
      self.ids = np.asarray(ids)

    def inputs(self, r):
      return Inputs(self.ids)

  algorithm = federated.FederatedAlgorithm(init=lambda x: x, apply=lambda s, i: (s + 1, {}))
  for ids, want in (([3, 5, -1, -1], [3, 5]), ([[1, -1], [2, 4]], [[1], [2, 4]])):
    res = driver.run(algorithm, Plan(ids), jnp.zeros(()), 2,
                     options=driver.RunOptions(progress=False))
    assert [r["clients"] for r in res.metrics] == [want, want]


def _run(setup, config, workdir, num_rounds=None):
  return run_fedavg(setup, config, workdir, num_rounds=num_rounds,
                    eval_subsets={"test": setup.test_images})


def test_resumed_equals_uninterrupted(tmp_path):
  # Server momentum: the server optimizer has a state that the checkpoint must carry.
  config = tiny_config(rounds=4, clients_per_round=3, server_lr=0.5, server_momentum=0.9)
  setup = make_tiny_setup(config)
  straight = _run(setup, config, tmp_path / "straight")
  # "Killed" after round 2: a fresh process (new setup objects) resumes from the checkpoint.
  _run(setup, config, tmp_path / "resumed", num_rounds=2)
  resumed = _run(make_tiny_setup(config), config, tmp_path / "resumed")
  assert _tree_allclose(straight.trainable, resumed.trainable, atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(straight.history.updates, resumed.history.updates, atol=1e-6)
  np.testing.assert_array_equal(straight.history.rounds, resumed.history.rounds)
  assert straight.final_eval == pytest.approx(resumed.final_eval)
  rows = jsonio.read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
  assert [r["round"] for r in rows] == [1, 2, 3, 4]
  straight_rows = jsonio.read_jsonl(tmp_path / "straight" / "metrics.jsonl")
  assert [r["clients"] for r in rows] == [r["clients"] for r in straight_rows]
  assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in straight_rows])


def test_resuming_past_the_rounds_asked_for_is_refused(tmp_path):
  """A workdir at round 4 asked for 2 rounds: the loop would not run and the 4-round model would
  come back as the 2-round one."""
  config = tiny_config(rounds=4)
  setup = make_tiny_setup(config)
  _run(setup, config, tmp_path, num_rounds=4)
  before = (tmp_path / "metrics.jsonl").read_text()
  with pytest.raises(checkpointing.CheckpointMismatchError, match="at round 4, past the 2 rounds"):
    _run(setup, config, tmp_path, num_rounds=2)
  assert (tmp_path / "metrics.jsonl").read_text() == before
  assert _run(setup, config, tmp_path, num_rounds=4).metrics[-1]["round"] == 4


def test_same_seeds_same_numbers_and_seeds_matter(tmp_path):
  config = tiny_config(rounds=2)
  setup = make_tiny_setup(config)
  a = _run(setup, config, None)
  b = _run(setup, config, None)
  assert _tree_allclose(a.trainable, b.trainable, atol=0, rtol=0)
  config.seeds.data = 7
  c = _run(setup, config, None)
  assert not _tree_allclose(a.trainable, c.trainable, atol=1e-7, rtol=0)


def test_checkpoint_from_another_config_is_refused(tmp_path):
  config = tiny_config(rounds=2)
  setup = make_tiny_setup(config)
  _run(setup, config, tmp_path, num_rounds=1)
  before = (tmp_path / "metrics.jsonl").read_text()
  other = tiny_config(rounds=2, client_lr=0.5)
  with pytest.raises(checkpointing.CheckpointMismatchError, match="fed.client_lr"):
    _run(setup, other, tmp_path)
  assert (tmp_path / "metrics.jsonl").read_text() == before
  # A different execution backend is the same maths: resuming with it is allowed, and its round
  # 2 continues the round-1 model as the uninterrupted run does.
  same_maths = tiny_config(rounds=2, backend="sequential")
  resumed = _run(setup, same_maths, tmp_path)
  assert [r["round"] for r in jsonio.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
  assert_same_run(flat(resumed.trainable), flat(_run(setup, config, None).trainable))


def test_metrics_file_without_checkpoint_is_moved_aside_not_overwritten(tmp_path, caplog):
  """A run killed before its first checkpoint reruns in its workdir; what it had written is kept
  beside the new file."""
  config = tiny_config(rounds=1)
  setup = make_tiny_setup(config)
  (tmp_path / "metrics.jsonl").write_text('{"round": 9}\n')
  with caplog.at_level("WARNING"):
    _run(setup, config, tmp_path)
  (stale,) = tmp_path.glob("metrics.jsonl.*.stale")
  assert stale.read_text() == '{"round": 9}\n'
  assert str(stale) in " ".join(r.getMessage() for r in caplog.records)
  assert [r["round"] for r in jsonio.read_jsonl(tmp_path / "metrics.jsonl")] == [1]


def test_unknown_backend_is_an_error(engine):
  _, _, client_update = engine
  with pytest.raises(ValueError, match="Unknown federated backend"):
    federated.make_round_fn(client_update, "pmap")


@pytest.mark.parametrize("backend", ["vmap", "sequential", "chunked"])
def test_fedavg_compiles_every_computation_with_its_compiler_options(tiny_setup, monkeypatch,
                                                                     backend):
  """`compiler_options` (a population split over CPU devices: single-threaded operations) reach
  every computation a FedAvg round compiles, and leave the model as it is up to rounding."""
  config = tiny_config(history_size=2)
  config.fed.backend, config.fed.chunk_size = backend, 2
  plan = builders.round_plan(tiny_setup, config)
  start = builders.init_trainable(tiny_setup, config)
  options = runtime.split_cpu_compiler_options("cpu", devices=2)
  assert options == runtime.SINGLE_THREADED_OPS
  assert runtime.split_cpu_compiler_options("cpu", devices=1) == ()
  assert runtime.split_cpu_compiler_options("gpu", devices=2) == ()
  jit, compiled_with = jax.jit, []

  def recording_jit(fun, **kwargs):
    compiled_with.append(kwargs.get("compiler_options"))
    return jit(fun, **kwargs)

  monkeypatch.setattr(jax, "jit", recording_jit)
  algorithm = builders.fedavg_algorithm(tiny_setup, config, plan, compiler_options=options)
  monkeypatch.setattr(jax, "jit", jit)
  # The clients' update, the server step and the history's record.
  assert compiled_with == [dict(options)] * 3
  default = builders.fedavg_algorithm(tiny_setup, config, plan)
  state, state_default = algorithm.init(start), default.init(start)
  for r in range(2):
    state, _ = algorithm.apply(state, plan.inputs(r))
    state_default, _ = default.apply(state_default, plan.inputs(r))
  assert_same_run(flat(state.trainable), flat(state_default.trainable))
  assert not _tree_allclose(state.trainable, start)


def test_frozen_a_trains_b_only_and_makes_fedavg_exact(tiny_setup):
  """FFA-LoRA: with A frozen the averaged update of the products A·B_k is A·mean(B_k)."""
  config = tiny_config()
  trainable = builders.init_trainable(tiny_setup, config)
  update = federated.local_steps(
      federated.clip_objective(tiny_setup.model),
      builders.make_optimizer("adam", 1e-2, freeze_lora_a=True))
  sched = _round_inputs(tiny_setup, config)
  round_fn = federated.make_round_fn(update, "vmap")
  deltas, _ = round_fn(trainable, tiny_setup.backbone, tiny_setup.data,
                       jax.tree.map(jnp.asarray, sched.batches))
  leaves = jax.tree_util.tree_flatten_with_path(deltas)[0]
  a_deltas = [np.asarray(x) for p, x in leaves if jax.tree_util.keystr(p).endswith("['a']")]
  b_deltas = [np.asarray(x) for p, x in leaves if jax.tree_util.keystr(p).endswith("['b']")]
  assert a_deltas and all(np.all(d == 0) for d in a_deltas)
  assert all(np.abs(d).max() > 0 for d in b_deltas)
  # The server averages the factors; the model is their product. The average of the clients'
  # products A·(B + ΔB_k) is then A·(B + mean ΔB), the product of the averages, exactly as
  # long as no client moves A. Without freezing, A moves and the two differ.
  free = federated.local_steps(federated.clip_objective(tiny_setup.model),
                               builders.make_optimizer("adam", 1e-2))
  free_deltas, _ = federated.make_round_fn(free, "vmap")(
      trainable, tiny_setup.backbone, tiny_setup.data, jax.tree.map(jnp.asarray, sched.batches))
  module = lambda tree: tree["text_model"]["encoder"]["layers"]["0"]["self_attn"]["q_proj"]
  a0, b0 = (np.asarray(module(trainable)[k], np.float64) for k in ("a", "b"))

  def product_gap(d):
    da, db = (np.asarray(module(d)[k], np.float64) for k in ("a", "b"))
    clients = np.mean([(a0 + x) @ (b0 + y) for x, y in zip(da, db)], axis=0)
    return np.abs(clients - (a0 + da.mean(0)) @ (b0 + db.mean(0))).max()

  assert product_gap(deltas) < 1e-9
  assert product_gap(free_deltas) > 1e-6


def test_clip_objective_and_a_forget_set_of_one_caption(tiny_setup):
  """Training leaves identical captions out of the negatives; a batch of one repeated caption
  (a backdoor's poisoned pairs) then has no negatives, so forget-side objectives ask for plain
  InfoNCE, which still has a gradient there."""
  setup = tiny_setup
  trainable = builders.init_trainable(setup, tiny_config())
  batch = setup.data.batch(jnp.arange(8))
  same = dict(batch, input_ids=jnp.tile(batch["input_ids"][:1], (8, 1)),
              attention_mask=jnp.tile(batch["attention_mask"][:1], (8, 1)),
              mask=jnp.ones(8, bool))
  norm = lambda g: float(optax.tree.norm(g))
  training = federated.clip_objective(setup.model)
  plain = federated.clip_objective(setup.model, identical_captions_as_negatives=True)
  assert float(training(trainable, setup.backbone, same)) == 0.0
  assert norm(jax.grad(training)(trainable, setup.backbone, same)) == 0.0
  assert norm(jax.grad(plain)(trainable, setup.backbone, same)) > 0.0
  # Distinct captions: both objectives are the same loss.
  distinct = dict(batch, mask=jnp.ones(8, bool))
  np.testing.assert_allclose(training(trainable, setup.backbone, distinct),
                             plain(trainable, setup.backbone, distinct), rtol=1e-6)


def test_client_weight_decay_is_adamw_decoupled_decay(tiny_setup):
  """`fed.client_weight_decay` reaches the clients' optimizer: one step from the same gradient
  equals Adam's first step (numpy) minus lr * decay * the parameter; 0 is plain Adam."""
  config = tiny_config()
  config.fed.client_optimizer, config.fed.client_weight_decay = "adamw", 0.5
  params = {"w": jnp.asarray([[0.5, -2.0], [1.0, 0.25]]), "b": jnp.asarray([3.0, -1.0])}
  grads = {"w": jnp.asarray([[0.1, -0.3], [0.0, 2.0]]), "b": jnp.asarray([-0.5, 0.05])}
  lr, eps = config.fed.client_lr, 1e-8

  def one_step(cfg):
    opt = builders.client_optimizer(tiny_setup, cfg)
    updates, _ = opt.update(grads, opt.init(params), params)
    return jax.tree.map(np.asarray, updates)

  for key in params:
    g, p = np.asarray(grads[key], np.float64), np.asarray(params[key], np.float64)
    adam = -lr * g / (np.abs(g) + eps)  # bias-corrected m / sqrt(v) after one step: g / |g|
    np.testing.assert_allclose(one_step(config)[key], adam - lr * 0.5 * p, rtol=1e-5, atol=1e-7)
  config.fed.client_weight_decay = 0.0
  g = np.asarray(grads["w"], np.float64)
  np.testing.assert_allclose(one_step(config)["w"], -lr * g / (np.abs(g) + eps), rtol=1e-5,
                             atol=1e-7)
  with pytest.raises(ValueError, match="weight_decay=0.5 needs the 'adamw' optimizer"):
    builders.make_optimizer("adam", lr, weight_decay=0.5)


def test_zero_weight_decay_keeps_the_fingerprint_of_runs_written_before_the_key():
  """Workdirs written before `fed.client_weight_decay` existed hold exactly the zero-decay run,
  so their fingerprint (which lacks the key) must still match; a positive decay is another run."""
  config = tiny_config()
  before = builders.run_fingerprint(config)
  assert "fed.client_weight_decay" not in before
  config.fed.client_optimizer, config.fed.client_weight_decay = "adamw", 0.1
  after = builders.run_fingerprint(config)
  assert after["fed.client_weight_decay"] == 0.1
  assert checkpointing.diff_fingerprints(before, after) == [
      "fed.client_optimizer: checkpoint='adam' vs now='adamw'",
      "fed.client_weight_decay: checkpoint='<absent>' vs now=0.1"]


def test_a_pasted_triggers_opacity_keeps_the_fingerprint_of_runs_written_before_the_key():
  """Likewise `plants.<name>.trigger.opacity` (`checkpointing.LEFT_OUT_AT`): at 1, the pasted
  patch every earlier run used, it is left out of every fingerprint; a blended trigger is
  another run. Other keys named alike stay."""
  config = tiny_config()
  config.plants = ml_collections.ConfigDict(dict(door=dict(
      kind="backdoor", clients=(0,), num_pairs=4, target_caption="rocket",
      trigger=dict(size=8, opacity=1.0))))
  before = builders.run_fingerprint(config)
  assert "plants.door.trigger.opacity" not in before and before["plants.door.trigger.size"] == 8
  config.plants.door.trigger.opacity = 0.3
  assert checkpointing.diff_fingerprints(before, builders.run_fingerprint(config)) == [
      "plants.door.trigger.opacity: checkpoint='<absent>' vs now=0.3"]
  assert checkpointing.fingerprint({"plants": {"a": {"trigger": {"opacity": 1}}},
                                    "x": {"trigger": {"opacity": 1.0}},
                                    "plants2": {"a": {"trigger": {"opacity": 1.0}}}}) == {
                                        "x.trigger.opacity": 1.0,
                                        "plants2.a.trigger.opacity": 1.0}


def test_the_run_fingerprint_holds_the_backbones_bytes(tmp_path):
  """A checkpoint folder rewritten in place (e.g. by `pretrain.py --export_to`) is another run:
  its cached models must not be resumed."""
  folder = tmp_path / "clip"
  shutil.copytree(builders.embedded_backbone_dir(), folder)
  config = tiny_config()
  config.model.checkpoint = str(folder)
  before = builders.run_fingerprint(config)
  assert before["model.checkpoint_sha256"] == builders.run_fingerprint(tiny_config())[
      "model.checkpoint_sha256"]  # the same bytes as the embedded folder
  weights = folder / "flax_model.msgpack"
  data = bytearray(weights.read_bytes())
  data[-1] ^= 1  # one bit of the last weight; same size
  weights.write_bytes(bytes(data))
  after = builders.run_fingerprint(config)
  assert [d.split(":")[0] for d in checkpointing.diff_fingerprints(before, after)] == [
      "model.checkpoint_sha256"]


def test_the_run_fingerprint_holds_the_datas_bytes(tmp_path, monkeypatch):
  """Data rewritten under the same config strings (a rebuilt emoji npz, a regenerated Karpathy
  file, replaced images) is another run; checkpoints written before the key resume as before."""
  assets = tmp_path / "assets"
  shutil.copytree(dataset_lib.ASSETS_DIR, assets)
  monkeypatch.setattr(dataset_lib, "ASSETS_DIR", assets)
  config = tiny_config()
  before = builders.run_fingerprint(config)
  npz = assets / dataset_lib.emoji_npz_name()
  data = bytearray(npz.read_bytes())
  data[len(data) // 2] ^= 1
  npz.write_bytes(bytes(data))
  after = builders.run_fingerprint(config)
  assert [d.split(":")[0] for d in checkpointing.diff_fingerprints(before, after)] == [
      "data.files_sha256"]
  older = {k: v for k, v in before.items() if k != "data.files_sha256"}
  assert checkpointing.diff_fingerprints(older, after) == []

  # Another size's emoji file (`build_emoji --size=64`) is not this run's data.
  (assets / dataset_lib.emoji_npz_name(64)).write_bytes(b"other size")
  assert builders.run_fingerprint(config) == after

  root = tmp_path / "flickr"
  (root / "images").mkdir(parents=True)
  (root / "images" / "0.jpg").write_bytes(b"x" * 10)
  (root / "images" / "unlisted.jpg").write_bytes(b"x")
  entry = {"filename": "0.jpg", "split": "train", "sentences": [{"raw": "a"}]}
  (root / "captions.json").write_text(json.dumps({"images": [entry]}))
  karpathy = ml_collections.ConfigDict(dict(name="karpathy", json_path=str(root / "captions.json"),
                                            image_root=str(root / "images")))
  first = builders.data_digest(karpathy)
  (root / "images" / "unlisted.jpg").write_bytes(b"xx")  # not one of the run's images
  assert builders.data_digest(karpathy) == first
  (root / "images" / "0.jpg").write_bytes(b"x" * 11)  # a replaced image
  assert builders.data_digest(karpathy) == first  # the sizes are read once per process
  builders._karpathy_image_sizes.cache_clear()  # pylint: disable=protected-access  # a new one
  second = builders.data_digest(karpathy)
  (root / "captions.json").write_text(json.dumps({"images": [entry]}, indent=1))  # regenerated
  assert len({first, second, builders.data_digest(karpathy)}) == 3


def test_a_plan_with_an_empty_active_client_is_refused():
  """A round that samples only clients without data has FedAvg weights summing to 0 (a 0/0
  model, reported as non-finite updates): the plan refuses such a client by id."""
  config = tiny_config(rounds=1)
  setup = make_tiny_setup(config)
  texts = list(setup.client_texts())
  texts[1] = np.zeros((0,), np.int32)
  with pytest.raises(ValueError, match=r"Active client\(s\) \[1\] have no training data"):
    builders.round_plan(setup, config, texts, active_clients=[0, 1])
  assert list(builders.round_plan(setup, config, texts).active_clients) == [0, 2, 3]


@pytest.mark.parametrize("n,b,steps", [(40, 32, 6), (5, 4, 7), (33, 32, 9), (64, 32, 5),
                                       (3, 8, 4)])
def test_cycled_batches_never_repeat_a_text_within_a_batch(n, b, steps):
  """A batch that spans two epochs held texts twice (40 texts, batch 32: 27 distinct), and under
  plain InfoNCE a repeated pair is its own negative. Every epoch still holds each text once."""
  texts = np.arange(100, 100 + n, dtype=np.int32)
  batches = federated.cycled_batches(texts, steps, b, (3, 1))
  width = min(n, b)
  assert batches.mask[:, :width].all() and not batches.mask[:, width:].any()
  rows = batches.text_indices[:, :width]
  assert all(len(set(row.tolist())) == width for row in rows)
  stream = rows.ravel()
  for e in range(len(stream) // n):
    assert sorted(stream[e * n:(e + 1) * n].tolist()) == texts.tolist()
