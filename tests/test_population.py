"""Populations: one batched computation whose member i is the single run with seed i."""
import textwrap

import numpy as np
import pytest

from conftest import flat_params as flat
from conftest import make_tiny_setup, run_fedavg, run_with_cpu_devices, tiny_config
from ease_jax import builders
from ease_jax import configs
from ease_jax import federated
from ease_jax.unlearning import population
from ease_jax.unlearning import requests
from ease_jax.unlearning import retrain as retrain_lib


def _config(n=3, chunk=0):
  cfg = configs.add_unlearning(tiny_config(rounds=2, clients_per_round=3))
  cfg.audit.population = n
  cfg.audit.first_seed = 5
  cfg.audit.chunk = chunk
  return cfg


@pytest.mark.parametrize("chunk", [0, 2])
def test_population_member_equals_the_single_run_with_its_seed(tmp_path, chunk):
  cfg = _config(chunk=chunk)
  setup = make_tiny_setup(cfg)
  req = requests.client_request(setup, [0])
  pop = population.train(setup, cfg, lambda c: retrain_lib.retrain_plan(setup, c, req),
                         tmp_path / "out", req.fingerprint(), "retrain")
  assert pop.seeds == (5, 6, 7)
  for i, seed in enumerate(pop.seeds):
    member_cfg = population.member_config(cfg, seed)
    assert (member_cfg.seeds.init, member_cfg.seeds.sampling, member_cfg.seeds.data) == (
        seed, seed, seed)
    single = run_fedavg(setup, member_cfg, plan=retrain_lib.retrain_plan(setup, member_cfg, req))
    np.testing.assert_allclose(flat(pop.member(i)), flat(single.trainable), atol=1e-5,
                               rtol=1e-5)
  # Cached: a second call restores (same numbers), and a different request is refused.
  again = population.train(setup, cfg, lambda c: retrain_lib.retrain_plan(setup, c, req),
                           tmp_path / "out", req.fingerprint(), "retrain")
  np.testing.assert_array_equal(flat(again.trainables), flat(pop.trainables))
  other = requests.client_request(setup, [1])
  with pytest.raises(ValueError, match="holds a population"):
    population.train(setup, cfg, lambda c: retrain_lib.retrain_plan(setup, c, other),
                     tmp_path / "out", other.fingerprint(), "retrain")
  if chunk:
    # A larger population reuses the finished chunk (its checkpoint is not rewritten) and
    # trains the new members only; given the algorithms of an earlier call, it runs those
    # (already compiled) instead of building its own.
    done = tmp_path / "out" / "members_5_6"
    before = {p: p.stat().st_mtime_ns for p in (done / "checkpoints").rglob("*") if p.is_file()}
    algorithms = {}
    population.train(setup, cfg, lambda c: retrain_lib.retrain_plan(setup, c, req),
                     tmp_path / "out", req.fingerprint(), "retrain", algorithms=algorithms)
    built = dict(algorithms)
    assert len(built) == 1
    larger = population.train(setup, _config(n=4, chunk=chunk),
                              lambda c: retrain_lib.retrain_plan(setup, c, req),
                              tmp_path / "out", req.fingerprint(), "retrain",
                              algorithms=algorithms)
    assert algorithms.keys() == built.keys()
    assert all(algorithms[k] is built[k] for k in built)
    assert larger.seeds == (5, 6, 7, 8)
    assert {p: p.stat().st_mtime_ns for p in (done / "checkpoints").rglob("*")
            if p.is_file()} == before
    # Member 7 now trains beside member 8 (a batch of 2, not 1): equal up to float reassociation.
    np.testing.assert_allclose(flat(larger.member(2)), flat(pop.member(2)), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(flat(larger.member(0)), flat(pop.member(0)))


def test_population_pair_members_equal_their_single_runs(tmp_path):
  """`train_pair`: member i of `in` is the trained run with seed i, of `out` the retrain; EASE's
  history size M (which members do not keep) does not move their cache."""
  cfg = _config()
  setup = make_tiny_setup(cfg)
  req = requests.client_request(setup, [2])
  in_pop, out_pop = population.train_pair(setup, cfg, req, tmp_path)
  member_cfg = population.member_config(cfg, in_pop.seeds[1])
  np.testing.assert_allclose(flat(in_pop.member(1)), flat(run_fedavg(setup, member_cfg).trainable),
                             atol=1e-5, rtol=1e-5)
  retrained = run_fedavg(setup, member_cfg, plan=retrain_lib.retrain_plan(setup, member_cfg, req))
  np.testing.assert_allclose(flat(out_pop.member(1)), flat(retrained.trainable), atol=1e-5,
                             rtol=1e-5)
  # `scored_pair` (what the benchmark's cells and the calibration probe audit with): the cached
  # pair, each member's scores on D_f against numpy's logit-scaled matched cosine of its own
  # embeddings, standardised by its scores on the calibration pairs.
  calibration = np.setdiff1d(setup.texts_of(setup.test_images), req.forget_texts)[:8]
  cfg.audit.calibrate = True
  pair = population.scored_pair(setup, cfg, req, tmp_path, calibration)
  assert pair["seeds"] == in_pop.seeds and pair["out_seeds"] == out_pop.seeds
  # The default (`audit.calibrate=False`): the logits themselves, the calibration pairs unused.
  cfg.audit.calibrate = False
  plain = population.scored_pair(setup, cfg, req, tmp_path, calibration)

  def numpy_scores(trainable):
    """(standardised, raw) logits of the forget pairs."""
    def logits(texts):
      images = np.asarray(setup.data.text_image)[texts]
      img, txt = federated.Embedder(setup.model, setup.backbone, trainable, setup.data)(
          images, texts)
      img, txt = (np.asarray(x, np.float64) for x in (img, txt))
      c = np.sum(img * txt, 1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
      return np.log((1 + c) / (1 - c))
    forget, ref = logits(np.asarray(req.forget_texts)), logits(calibration)
    return (forget - ref.mean()) / ref.std(), forget

  for key, pop in (("in_scores", in_pop), ("out_scores", out_pop)):
    assert pair[key].shape == (len(pop.seeds), len(req.forget_texts))
    for i in range(len(pop.seeds)):
      calibrated, raw = numpy_scores(pop.member(i))
      np.testing.assert_allclose(pair[key][i], calibrated, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(plain[key][i], raw, rtol=1e-4, atol=1e-4)
  assert not np.allclose(pair["in_scores"], pair["out_scores"])
  # `Population.scores` without some seeds: the other members' rows, in order, with their seeds.
  score = population.forget_scorer(setup, cfg, req.forget_texts)
  rest, rest_seeds = out_pop.scores(score, skip=[out_pop.seeds[0]])
  np.testing.assert_array_equal(rest_seeds, out_pop.seeds[1:])
  np.testing.assert_allclose(rest, plain["out_scores"][1:], rtol=1e-6, atol=1e-6)
  assert out_pop.scores(score, skip=out_pop.seeds)[0].shape == (0, 0)
  folders = sorted(p.name for p in tmp_path.iterdir())
  cfg.fed.history_size = cfg.fed.history_size + 3
  population.train_pair(setup, cfg, req, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == folders


_SPLIT_SCRIPT = textwrap.dedent("""
    import logging, sys, jax, numpy as np
    assert jax.device_count() == 2, jax.devices()
    # Counts the server step's compilations: every round after the first must reuse the first's.
    jax.config.update("jax_log_compiles", True)
    compiled = []
    class Count(logging.Handler):
      def emit(self, record):
        if record.getMessage().startswith("Finished XLA compilation of jit(server_step)"):
          compiled.append(record.getMessage())
    logging.getLogger("jax").addHandler(Count())
    from conftest import flat_params as flat, make_tiny_setup, run_fedavg, tiny_config
    from ease_jax import builders, configs, runtime, sharding
    from ease_jax.unlearning import population
    # A leading axis is split over the most devices that divide it.
    assert [sharding.split_count(n) for n in (1, 2, 3, 4)] == [1, 2, 1, 2]
    # The population's algorithms, and the XLA options each was built with.
    built, fedavg_algorithm = [], builders.fedavg_algorithm
    def recording(*args, compiler_options=(), **kwargs):
      built.append(compiler_options)
      return fedavg_algorithm(*args, compiler_options=compiler_options, **kwargs)
    builders.fedavg_algorithm = recording
    for chunk in (0, 2):
      cfg = configs.add_unlearning(tiny_config(rounds=2, clients_per_round=3))
      cfg.audit.population, cfg.audit.first_seed, cfg.audit.chunk = 4, 5, chunk
      setup = make_tiny_setup(cfg)
      workdir = f"{sys.argv[1]}/chunk{chunk}"
      compiled.clear()
      built.clear()
      pop = population.train(setup, cfg, lambda c: builders.round_plan(setup, c), workdir, {},
                             "trained")
      # Each chunk ran split over both devices, its operations single-threaded, and 2 rounds of
      # every chunk compiled the server step once (a state leaf placed only after round 1 used
      # to compile it again).
      assert pop.devices == 2
      assert built == [runtime.SINGLE_THREADED_OPS], built
      assert len(compiled) == 1, compiled
      for i, seed in enumerate(pop.seeds):
        single = run_fedavg(setup, population.member_config(cfg, seed))
        # Each device's batched matmuls block differently (float reassociation), and Adam
        # amplifies it where a gradient is near zero: one of 2048 entries once differed by
        # 2.7e-5. A member mixed up with another would differ everywhere.
        diff = np.abs(flat(pop.member(i)) - flat(single.trainable))
        assert diff.max() < 1e-4 and np.mean(diff < 1e-6) > 0.99, (chunk, i, diff.max())
      again = population.train(setup, cfg, lambda c: builders.round_plan(setup, c), workdir,
                               {}, "trained")
      np.testing.assert_array_equal(flat(again.trainables), flat(pop.trainables))
    print("OK")
""")


def test_population_split_over_devices_equals_the_single_runs(tmp_path):
  """With two (simulated) CPU devices each chunk's members are split over both, as the binaries
  run them (`runtime.one_cpu_device_per_core`), each device's operations single-threaded
  (`runtime.split_cpu_compiler_options`); members still equal their single runs up to rounding
  and the cache restores them. The device count only takes effect in a fresh process."""
  proc = run_with_cpu_devices(_SPLIT_SCRIPT, 2, str(tmp_path))
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]


def test_population_needs_three_members(tmp_path):
  cfg = _config(n=2)
  setup = make_tiny_setup(cfg)
  with pytest.raises(ValueError, match="audit.population must be >= 3"):
    population.train(setup, cfg, lambda c: builders.round_plan(setup, c), tmp_path, {}, "x")


def test_the_run_fingerprint_leaves_out_the_methods_seed():
  """A federated run never reads `seeds.unlearning`, so benchmark seeds share one population
  per request (the cache key is the run's fingerprint without its member seeds)."""
  cfg = _config()
  other = population.member_config(cfg, 5)
  other.seeds.unlearning = 17
  assert builders.run_fingerprint(other) == builders.run_fingerprint(
      population.member_config(cfg, 5))
  assert builders.run_fingerprint(population.member_config(cfg, 6)) != builders.run_fingerprint(
      population.member_config(cfg, 5))
  # Two benchmark seeds (all four seeds differ) share the population's checkpoints; another
  # federation does not.
  seed_2 = population.member_config(cfg, 2)
  seed_2.seeds.unlearning = 2
  assert population.federation_fingerprint(seed_2) == population.federation_fingerprint(cfg)
  seed_2.fed.rounds += 1
  assert population.federation_fingerprint(seed_2) != population.federation_fingerprint(cfg)
