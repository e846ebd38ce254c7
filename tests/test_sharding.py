"""Client-axis sharding over 8 simulated CPU devices equals the single-device vmap backend.

`--xla_force_host_platform_device_count` only takes effect before JAX initialises, so the check
runs in a fresh subprocess.
"""
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import run_with_cpu_devices, tiny_config
from ease_jax import builders
from ease_jax import federated
from ease_jax import sharding

_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    assert jax.device_count() == 8, jax.devices()
    from conftest import make_tiny_setup, tiny_config
    from ease_jax import builders, federated, sharding

    def allclose(a, b, atol=1e-5):
      return all(jax.tree.leaves(jax.tree.map(
          lambda x, y: np.allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5), a, b)))

    mesh = sharding.client_mesh()
    for num_clients in (6, 11):
      config = tiny_config(num_clients=num_clients, batch_size=2)
      setup = make_tiny_setup(config)
      trainable = jax.tree.map(lambda x: x + 0.01, builders.init_trainable(setup, config))
      # SGD keeps the deltas linear in the gradients, so 1e-5 checks the engine itself; Adam's
      # first steps are ~lr * sign(g) and amplify float reassociation of near-zero gradients.
      loss_fn = federated.clip_objective(setup.model)
      sgd = federated.local_steps(loss_fn, optax.sgd(0.05))
      adam = federated.local_steps(loss_fn, optax.adam(1e-2))
      texts = setup.client_texts()
      steps = max(federated.num_local_steps(len(t), 2, 1) for t in texts)
      sched = federated.build_client_schedules(texts, 2, 1, steps, 0, 0, range(num_clients))
      # Unequal clients: drop the last example of every other client (masked tails).
      mask = sched.mask.copy()
      for c in range(0, num_clients, 2):
        s, b = np.argwhere(mask[c])[-1]
        mask[c, s, b] = False
      args = (trainable, setup.backbone, setup.data,
              federated.Batches(jnp.asarray(sched.text_indices), jnp.asarray(mask)))
      ref, ref_m = federated.make_round_fn(sgd, "vmap")(*args)
      for chunk in ((0,) if num_clients == 6 else (0, 1)):
        out, m = sharding.make_sharded_round_fn(sgd, mesh, chunk_size=chunk)(*args)
        leaf = jax.tree.leaves(out)[0]
        assert leaf.shape[0] == num_clients, leaf.shape
        assert len(leaf.sharding.device_set) == 8, leaf.sharding
        assert allclose(out, ref), (num_clients, chunk)
        np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(m["steps"], ref_m["steps"])
      if num_clients == 6:
        continue
      # The config knob reaches the same path; FedAvg over the sharded axis matches too.
      via_config, _ = federated.make_round_fn(adam, "sharded")(*args)
      adam_ref, _ = federated.make_round_fn(adam, "vmap")(*args)
      assert allclose(via_config, adam_ref, atol=1e-4)
      w = jnp.asarray(sched.num_examples)
      assert allclose(federated.weighted_mean(via_config, w),
                      federated.weighted_mean(adam_ref, w), atol=1e-4)
    print("OK")
""")


def test_sharded_equals_single_device_vmap():
  proc = run_with_cpu_devices(_SCRIPT, 8, timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]


def test_padded_size():
  assert [sharding.padded_size(c, 8) for c in (1, 6, 8, 11, 16)] == [8, 8, 8, 16, 16]
  assert sharding.padded_size(0, 4) == 4


def test_sharded_backend_on_one_device_equals_vmap(tiny_setup):
  assert "sharded" in federated.BACKENDS
  config = tiny_config()
  trainable = builders.init_trainable(tiny_setup, config)
  update = federated.local_steps(federated.clip_objective(tiny_setup.model), optax.adam(1e-2))
  texts = tiny_setup.client_texts()
  steps = max(federated.num_local_steps(len(t), 8, 1) for t in texts)
  sched = federated.build_client_schedules(texts, 8, 1, steps, 0, 0, range(len(texts)))
  args = (trainable, tiny_setup.backbone, tiny_setup.data,
          federated.Batches(jnp.asarray(sched.text_indices), jnp.asarray(sched.mask)))
  ref, _ = federated.make_round_fn(update, "vmap")(*args)
  out, _ = federated.make_round_fn(update, "sharded")(*args)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


if __name__ == "__main__":
  pytest.main([__file__, "-q"])
