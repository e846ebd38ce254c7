"""Shared test set-up: persistent compilation cache and deterministic CPU settings."""
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite compiles hundreds of small programs and runs most for milliseconds, so compiling is
# most of its time. Two cuts: LLVM's costly optimizations of the machine code off
# (test_federated.py: 190 s -> 145 s on the 2-core CPU), and XLA:CPU's older emitter for fused
# elementwise code instead of its MLIR fusion emitters, which compile slower (the whole suite:
# 17 min 54 s -> about 9 min on an AMD EPYC, BENCHMARKS.md "Test suite"). The HLO, so what is
# computed, is the binaries'; only the machine code generated from it differs, so results agree
# with the binaries' up to float rounding. Set in the environment, it reaches the binaries that
# the tests start too. Tests that time code do not exist: timings live in benchmarks/.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                      "--xla_cpu_use_fusion_emitters=false")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

from ease_jax import runtime  # noqa: E402  (no JAX import: must precede it)

runtime.avoid_cpu_hang()  # The binaries' XLA:CPU setting, so tests run what users run.

import jax  # noqa: E402

from ease_jax import cli  # noqa: E402  (no JAX computation at import)

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", cli.MIN_CACHED_COMPILE_S)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ease_jax import configs  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import federated  # noqa: E402
from ease_jax import model as model_lib  # noqa: E402
from ease_jax.data import dataset as dataset_lib  # noqa: E402

TINY_VOCAB = 40
TINY_CONTEXT = 8


def tiny_clip_config() -> model_lib.CLIPConfig:
  return model_lib.CLIPConfig(
      vision=model_lib.VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=2, image_size=16, patch_size=8),
      text=model_lib.TextConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                vocab_size=TINY_VOCAB, max_position_embeddings=TINY_CONTEXT,
                                eos_token_id=TINY_VOCAB - 1),
      projection_dim=16)


def tiny_dataset(num_images: int = 64, seed: int = 0) -> dataset_lib.CaptionDataset:
  """Random images, each with one random caption; 4 'concepts' for non-IID partitions."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_images, 16, 16, 3), dtype=np.uint8)
  lengths = rng.integers(2, TINY_CONTEXT - 1, num_images)
  ids = np.full((num_images, TINY_CONTEXT), TINY_VOCAB - 1, np.int32)
  mask = np.zeros((num_images, TINY_CONTEXT), np.int32)
  for i, n in enumerate(lengths):
    ids[i, 0] = TINY_VOCAB - 2  # BOS
    ids[i, 1:n + 1] = rng.integers(0, TINY_VOCAB - 2, n)
    mask[i, :n + 2] = 1  # tokens + EOS
  concepts = np.array([f"concept{i % 4}" for i in range(num_images)])
  return dataset_lib.CaptionDataset(
      images=images, input_ids=ids, attention_mask=mask,
      text_image=np.arange(num_images, dtype=np.int32),
      captions=tuple(f"caption {i}" for i in range(num_images)),
      image_meta={"subgroup": concepts, "group": concepts}, name="tiny")


def tiny_config(**fed) -> ml_collections.ConfigDict:
  c = configs.base_config()
  c.fed.update(dict(num_clients=4, rounds=3, batch_size=8, local_epochs=1, client_lr=1e-2,
                    history_size=4))
  c.fed.update(fed)
  c.lora.rank = 4
  # The library's LoRA init, not the embedded backbone's tuned default (configs.base_config).
  c.lora.init_std = 0.02
  c.eval.every = 0
  c.checkpoint_every = 1
  return c


def make_tiny_setup(config: ml_collections.ConfigDict, num_images: int = 64
                    ) -> builders.FederatedSetup:
  """A FederatedSetup on a random tiny CLIP and random data (no files needed)."""
  clip_config = tiny_clip_config()
  lora_config = builders.lora_config_from(config.lora)
  model = model_lib.CLIP(clip_config, lora_scale=lora_config.scale, lora_mode=config.lora.mode)
  backbone = model.init(jax.random.key(42))
  ds = tiny_dataset(num_images)
  order = np.random.default_rng(config.seeds.partition).permutation(num_images)
  test, clients = np.sort(order[:8]), order[8:]
  client_images = [np.sort(c) for c in np.array_split(clients, config.fed.num_clients)]
  return builders.FederatedSetup(
      model=model, backbone=backbone, dataset=ds, data=federated.DeviceData.from_dataset(ds),
      public_images=np.array([], np.int64), test_images=test, client_images=client_images,
      lora_config=lora_config)


@pytest.fixture(scope="session")
def tiny_setup():
  return make_tiny_setup(tiny_config())


def make_unlearning_ctx(trained, overrides=None, request=None, setup=None):
  """An `UnlearningContext` from a `(config, setup, RunResult)` fixture (client 0 leaves by
  default); `overrides` are dotted config keys."""
  from ease_jax.unlearning import base, requests  # pylint: disable=g-import-not-at-top
  cfg, setup0, res = trained
  setup = setup or setup0
  request = request or requests.client_request(setup, [0])
  return base.UnlearningContext(
      setup=setup, config=base.config_with(cfg, overrides or {}), request=request,
      trained=res.trainable, history=res.history, eval_subsets=request.eval_subsets(setup))


def flat_params(tree) -> np.ndarray:
  """All leaves of a pytree as one flat numpy vector."""
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top
  return np.asarray(ravel_pytree(tree)[0])


def assert_same_run(actual, desired, atol=1e-5, rtol=1e-5, share=0.005, outlier_atol=1e-3):
  """Two runs of the same maths, computed in another order (vmapped, sharded): every entry within
  `atol` + `rtol`, except at most `share` of them within `outlier_atol` (a tenth of the tiny
  config's learning rate). Adam divides by the root of the squared gradient, so where a gradient
  is near zero it turns float reassociation into a step of up to its learning rate in either
  direction; a difference in the maths moves far more entries."""
  actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  assert actual.shape == desired.shape, (actual.shape, desired.shape)
  off = ~np.isclose(actual, desired, atol=atol, rtol=rtol)
  assert off.mean() <= share, f"{off.sum()} of {off.size} entries differ by more than {atol}"
  np.testing.assert_allclose(actual, desired, atol=outlier_atol, rtol=0)


def run_fedavg(setup, config, workdir=None, eval_subsets=None, **kwargs):
  """`training.run_fedavg` without a progress bar (kwargs: trainable, num_rounds, plan,
  algorithm)."""
  from ease_jax import training  # pylint: disable=g-import-not-at-top
  options = training.run_options(setup, config, eval_subsets, progress=False)
  return training.run_fedavg(setup, config, workdir, options=options, **kwargs)


def run_with_cpu_devices(script: str, count: int, *args: str, timeout: int = 600
                         ) -> subprocess.CompletedProcess:
  """Runs `script` (Python source, in the tests folder so it can import conftest) in a fresh
  process with `count` simulated CPU devices: the device count only takes effect before JAX
  initialises."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        f" --{runtime.HOST_DEVICE_COUNT}={count}").strip())
  return subprocess.run([sys.executable, "-c", script, *args],
                        cwd=pathlib.Path(__file__).resolve().parent, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)
