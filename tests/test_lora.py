"""LoRA adapters: identity at init, merged == unmerged, gradients, target selection, client vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from ease_jax import lora as lora_lib
from ease_jax.model import CLIP, CLIPConfig, TextConfig, VisionConfig

# Different depths per tower so per-tower counts cannot be confused.
CONFIG = CLIPConfig(
    vision=VisionConfig(hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4,
                        image_size=16, patch_size=8),
    text=TextConfig(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
                    vocab_size=64, max_position_embeddings=12, eos_token_id=63),
    projection_dim=24)
LORA = lora_lib.LoRAConfig(rank=4, alpha=8.0)
NUM_LAYERS = CONFIG.vision.num_layers + CONFIG.text.num_layers


@pytest.fixture(scope="module")
def params():
  return jax.jit(CLIP(CONFIG).init)(jax.random.key(0))


@pytest.fixture(scope="module")
def batch():
  rng = np.random.RandomState(0)
  pixels = rng.randn(3, 16, 16, 3).astype(np.float32)
  ids = rng.randint(1, 62, size=(3, 8)).astype(np.int32)
  lengths = np.array([4, 6, 8])
  ids[np.arange(3), lengths - 1] = 63
  mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
  return jnp.asarray(pixels), jnp.asarray(ids), jnp.asarray(mask)


def _with_random_b(lora, seed: int, std: float = 0.1):
  """Replaces every B (zero at init) by N(0, std²), so the adapters change the function."""
  flat = traverse_util.flatten_dict(lora, sep="/")
  keys = jax.random.split(jax.random.key(seed), len(flat))
  flat = {p: (std * jax.random.normal(k, x.shape) if p.endswith("/b") else x)
          for k, (p, x) in zip(keys, flat.items())}
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def trained_lora(params):
  return _with_random_b(lora_lib.init_lora(jax.random.key(1), params, LORA), seed=2)


def _encode(clip, params, lora, batch):
  pixels, ids, mask = batch
  return (np.asarray(jax.jit(clip.encode_image)(params, lora, pixels)),
          np.asarray(jax.jit(clip.encode_text)(params, lora, ids, mask)))


def _paths(tree):
  return list(traverse_util.flatten_dict(tree, sep="/"))


# -------------------------------------------------------------------------------------------------
# Function of the adapted model.


def test_fresh_adapter_is_the_base_model(params, batch):
  lora = lora_lib.init_lora(jax.random.key(1), params, LORA)
  assert all(not np.any(b) for p, b in traverse_util.flatten_dict(lora, sep="/").items()
             if p.endswith("/b"))
  clip = CLIP(CONFIG, lora_scale=LORA.scale)
  base_image, base_text = _encode(clip, params, None, batch)
  image, text = _encode(clip, params, lora, batch)
  np.testing.assert_allclose(image, base_image, atol=1e-6, rtol=0)
  np.testing.assert_allclose(text, base_text, atol=1e-6, rtol=0)


def test_merged_equals_unmerged_equals_merged_weights(params, trained_lora, batch):
  unmerged = _encode(CLIP(CONFIG, LORA.scale, "unmerged"), params, trained_lora, batch)
  merged = _encode(CLIP(CONFIG, LORA.scale, "merged"), params, trained_lora, batch)
  base = _encode(CLIP(CONFIG), params, None, batch)
  folded = _encode(CLIP(CONFIG), lora_lib.merge(params, trained_lora, LORA.scale), None, batch)
  for u, m, f, b in zip(unmerged, merged, folded, base):
    assert np.abs(u - b).max() > 1e-3  # The adapters do change the model...
    np.testing.assert_allclose(m, u, atol=1e-5, rtol=0)  # ... the same way in both modes,
    np.testing.assert_allclose(f, u, atol=1e-5, rtol=0)  # and when folded into the kernels.


def test_merge_is_w_plus_alpha_over_rank_a_b_in_numpy(params, trained_lora):
  """The scale is alpha / rank (here 8 / 4 = 2), not its inverse: one module against numpy."""
  assert LORA.scale == 2.0
  merged = traverse_util.flatten_dict(lora_lib.merge(params, trained_lora, LORA.scale), sep="/")
  base = traverse_util.flatten_dict(params, sep="/")
  adapters = traverse_util.flatten_dict(trained_lora, sep="/")
  module = lora_lib.module_paths(trained_lora)[0]
  a, b = np.asarray(adapters[module + "/a"]), np.asarray(adapters[module + "/b"])
  np.testing.assert_allclose(merged[module + "/kernel"],
                             np.asarray(base[module + "/kernel"]) + 2.0 * a @ b, atol=1e-6)


def test_merge_touches_only_adapted_kernels(params, trained_lora):
  merged = traverse_util.flatten_dict(lora_lib.merge(params, trained_lora, LORA.scale), sep="/")
  base = traverse_util.flatten_dict(params, sep="/")
  adapted = {m + "/kernel" for m in lora_lib.module_paths(trained_lora)}
  assert merged.keys() == base.keys()
  for p in base:
    assert np.array_equal(merged[p], base[p]) == (p not in adapted), p


def test_bad_lora_mode():
  with pytest.raises(ValueError, match="lora_mode"):
    CLIP(CONFIG, lora_mode="fused").init(jax.random.key(0))


# -------------------------------------------------------------------------------------------------
# Gradients: only the adapters are trained.


def _loss(clip, params, batch):
  pixels, ids, mask = batch

  def loss(lora):
    # The backbone is closed over, not an argument: jax.grad cannot produce backbone gradients.
    image = clip.encode_image(params, lora, pixels)
    text = clip.encode_text(params, lora, ids, mask)
    return jnp.mean(image @ text.T)
  return loss


def _tower_grad_norms(grads, leaf):
  flat = traverse_util.flatten_dict(grads, sep="/")
  return {tower: max(float(jnp.abs(g).max()) for p, g in flat.items()
                     if p.startswith(tower) and p.endswith("/" + leaf))
          for tower in (lora_lib.VISION_PREFIX, lora_lib.TEXT_PREFIX)}


def test_gradients_reach_both_towers(params, trained_lora, batch):
  clip = CLIP(CONFIG, LORA.scale)
  fresh = lora_lib.init_lora(jax.random.key(1), params, LORA)
  grads = jax.jit(jax.grad(_loss(clip, params, batch)))(fresh)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(fresh)
  # With B = 0, d/dA vanishes (it is multiplied by B) but d/dB does not.
  assert all(v > 0 for v in _tower_grad_norms(grads, "b").values())
  assert all(v == 0 for v in _tower_grad_norms(grads, "a").values())
  # Once B != 0 both factors get gradients, in both towers.
  grads = jax.jit(jax.grad(_loss(clip, params, batch)))(trained_lora)
  assert all(v > 0 for v in _tower_grad_norms(grads, "a").values())
  assert all(v > 0 for v in _tower_grad_norms(grads, "b").values())


def test_optimizer_state_holds_only_adapters(params, trained_lora, batch):
  optimizer = optax.adam(1e-3)
  state = optimizer.init(trained_lora)
  lora_structure = jax.tree_util.tree_structure(trained_lora)
  adam_state = state[0]
  assert jax.tree_util.tree_structure(adam_state.mu) == lora_structure
  assert jax.tree_util.tree_structure(adam_state.nu) == lora_structure
  # mu + nu + the step count: nothing of the (much larger) backbone.
  assert lora_lib.num_params(state) == 2 * lora_lib.num_params(trained_lora) + 1
  assert lora_lib.num_params(trained_lora) < lora_lib.num_params(params) / 10

  grads = jax.jit(jax.grad(_loss(CLIP(CONFIG, LORA.scale), params, batch)))(trained_lora)
  updates, _ = optimizer.update(grads, state, trained_lora)
  new_lora = optax.apply_updates(trained_lora, updates)
  assert jax.tree_util.tree_structure(new_lora) == lora_structure


# -------------------------------------------------------------------------------------------------
# Target selection.


def _modules(targets, params):
  paths = lora_lib.target_paths(params, targets)
  assert all(p.endswith("/kernel") for p in paths)
  return [p[: -len("/kernel")] for p in paths]


def test_default_targets_are_q_and_v_of_both_towers(params):
  modules = _modules(lora_lib.LoRAConfig().targets, params)
  assert len(modules) == 2 * NUM_LAYERS
  assert {m.rsplit("/", 1)[1] for m in modules} == {"q_proj", "v_proj"}
  assert sum(m.startswith("vision_model/") for m in modules) == 2 * CONFIG.vision.num_layers
  assert sum(m.startswith("text_model/") for m in modules) == 2 * CONFIG.text.num_layers
  assert _modules("qv", params) == modules
  lora = lora_lib.init_lora(jax.random.key(0), params, lora_lib.LoRAConfig(rank=3))
  assert lora_lib.module_paths(lora) == modules
  flat = traverse_util.flatten_dict(params, sep="/")
  lora_flat = traverse_util.flatten_dict(lora, sep="/")
  for m in modules:
    fan_in, fan_out = flat[m + "/kernel"].shape
    assert lora_flat[m + "/a"].shape == (fan_in, 3)
    assert lora_flat[m + "/b"].shape == (3, fan_out)


@pytest.mark.parametrize("preset, names", [
    ("qkvo", {"q_proj", "k_proj", "v_proj", "out_proj"}),
    ("qv_mlp", {"q_proj", "v_proj", "fc1", "fc2"}),
    ("all", {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}),
])
def test_target_presets(params, preset, names):
  modules = _modules(preset, params)
  assert len(modules) == len(names) * NUM_LAYERS
  assert {m.rsplit("/", 1)[1] for m in modules} == names


@pytest.mark.parametrize("preset, tower", [("vision_qv", "vision_model/"),
                                           ("text_qv", "text_model/")])
def test_single_tower_presets(params, preset, tower):
  modules = _modules(preset, params)
  assert modules and modules == [m for m in _modules("qv", params) if m.startswith(tower)]


def test_custom_regex_targets(params):
  assert sorted(_modules([r".*projection/kernel"], params)) == ["text_projection",
                                                               "visual_projection"]
  assert _modules(r"text_model/encoder/layers/0/mlp/fc1/kernel", params) == [
      "text_model/encoder/layers/0/mlp/fc1"]


def test_bad_targets_and_rank(params):
  with pytest.raises(ValueError, match="Unknown LoRA target"):
    lora_lib.init_lora(jax.random.key(0), params,
                       lora_lib.LoRAConfig(targets=(r".*/nonexistent/kernel",)))
  with pytest.raises(ValueError, match="Unknown LoRA target"):  # A misspelt preset.
    lora_lib.target_paths(params, "qvv")
  with pytest.raises(ValueError, match="Invalid LoRA target regex"):
    lora_lib.target_paths(params, ["(q_proj"])
  with pytest.raises(ValueError, match="rank"):
    lora_lib.init_lora(jax.random.key(0), params, lora_lib.LoRAConfig(rank=0))


def test_tower_mask(trained_lora):
  for tower, prefix in (("vision", "vision_model/"), ("text", "text_model/")):
    mask = traverse_util.flatten_dict(lora_lib.tower_mask(trained_lora, tower), sep="/")
    assert list(mask) == _paths(trained_lora)
    assert any(mask.values())
    assert all(selected == p.startswith(prefix) for p, selected in mask.items())
  assert all(jax.tree_util.tree_leaves(lora_lib.tower_mask(trained_lora, "both")))
  with pytest.raises(ValueError, match="tower"):
    lora_lib.tower_mask(trained_lora, "audio")


def test_a_towers_projection_head_belongs_to_its_tower(params):
  """LoRA on the projection heads (a regex target): each head goes with its tower, so a
  unilateral (vision-only) ablation also trains the visual projection, not neither."""
  heads = lora_lib.init_lora(jax.random.key(0), params, lora_lib.LoRAConfig(
      targets=(r".*projection/kernel", r".*/q_proj/kernel")))
  for tower in ("vision", "text"):
    mask = traverse_util.flatten_dict(lora_lib.tower_mask(heads, tower), sep="/")
    head = "visual_projection" if tower == "vision" else "text_projection"
    assert any(p.startswith(head + "/") for p in mask)  # the head has adapters
    assert all(mask[p] for p in mask if p.startswith(head + "/"))
    assert not any(mask[p] for p in mask if p.startswith(("visual_projection/",
                                                         "text_projection/")[tower == "vision"]))
    assert {lora_lib.tower_of(p) for p in mask if mask[p]} == {tower}
  assert lora_lib.tower_of("logit_scale") == "other"
  # EASE's module layout (the GSD / projection side) names modules without a leaf.
  from ease_jax.unlearning import projection  # pylint: disable=g-import-not-at-top
  layout = projection.module_layout(heads)
  assert layout.tower_of("visual_projection") == "vision"
  assert layout.tower_of("text_projection") == "text"
  assert layout.tower_of("vision_model") == "vision"


# -------------------------------------------------------------------------------------------------
# Clients as a vmapped axis of the adapter tree.


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_vmap_over_clients_equals_loop(params, batch, mode):
  pixels, ids, mask = batch
  clip = CLIP(CONFIG, LORA.scale, mode)
  base = lora_lib.init_lora(jax.random.key(1), params, LORA)
  clients = [_with_random_b(base, seed=10 + c) for c in range(3)]
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *clients)
  text = jax.jit(jax.vmap(clip.encode_text, in_axes=(None, 0, None, None)))(
      params, stacked, ids, mask)
  image = jax.jit(jax.vmap(clip.encode_image, in_axes=(None, 0, None)))(params, stacked, pixels)
  assert text.shape == (3, 3, CONFIG.projection_dim)
  for c, lora in enumerate(clients):
    loop_image, loop_text = _encode(clip, params, lora, batch)
    np.testing.assert_allclose(np.asarray(text[c]), loop_text, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(image[c]), loop_image, atol=1e-5, rtol=0)
  assert np.abs(np.asarray(text[0] - text[1])).max() > 1e-3  # Clients differ.


def test_lora_on_the_patch_embedding_is_a_matrix_on_flattened_patches(params, batch):
  """The ViT patch embedding (a conv kernel [p, p, C, hidden]) can be a LoRA target: its update
  acts on each flattened patch, so the adapted image embedding equals the plain model with the
  merged kernel, and the patch embedding itself equals a numpy patch-by-patch matmul."""
  target = r"vision_model/embeddings/patch_embedding/kernel"
  assert _modules(target, params) == ["vision_model/embeddings/patch_embedding"]
  # Only a pattern that names it takes the conv kernel: `.*/kernel` means the dense ones, as it
  # did before conv kernels could be targets.
  assert "vision_model/embeddings/patch_embedding" not in _modules(r".*/kernel", params)
  assert "vision_model/embeddings/patch_embedding" in _modules(r".*patch_embedding/kernel",
                                                               params)
  config = lora_lib.LoRAConfig(rank=3, alpha=6.0, targets=(target, r".*/q_proj/kernel"))
  lora = _with_random_b(lora_lib.init_lora(jax.random.key(3), params, config), seed=4, std=1.0)
  flat_lora = traverse_util.flatten_dict(lora, sep="/")
  p, channels = CONFIG.vision.patch_size, 3
  module = "vision_model/embeddings/patch_embedding"
  a, b = np.asarray(flat_lora[module + "/a"]), np.asarray(flat_lora[module + "/b"])
  assert a.shape == (p * p * channels, 3) and b.shape == (3, CONFIG.vision.hidden_size)

  clip = CLIP(CONFIG, config.scale)
  adapted = _encode(clip, params, lora, batch)
  merged = lora_lib.merge(params, lora, config.scale)
  np.testing.assert_allclose(_encode(CLIP(CONFIG), merged, {}, batch)[0], adapted[0],
                             atol=2e-5)
  in_merged_mode = _encode(CLIP(CONFIG, config.scale, lora_mode="merged"), params, lora, batch)
  np.testing.assert_allclose(in_merged_mode[0], adapted[0], atol=2e-5)
  assert not np.allclose(adapted[0], _encode(CLIP(CONFIG), params, {}, batch)[0], atol=1e-4)

  # Independent reference for the adapted patch embedding: every patch, flattened in (row,
  # col, channel) order, times the [p·p·C, hidden] kernel plus scale · A B.
  kernel = np.asarray(traverse_util.flatten_dict(params, sep="/")[module + "/kernel"])
  pixels = np.asarray(batch[0])
  grid = pixels.shape[1] // p
  expected = np.stack([
      np.stack([pixels[n, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(-1)
                for i in range(grid) for j in range(grid)]) for n in range(len(pixels))])
  expected = expected @ (kernel.reshape(-1, kernel.shape[-1]) + config.scale * a @ b)
  from ease_jax.model import LoRAPatchEmbedding  # pylint: disable=g-import-not-at-top
  got = LoRAPatchEmbedding(CONFIG.vision.hidden_size, p, config.scale).apply(
      {"params": {"kernel": kernel}, "lora": {"a": a, "b": b}}, jnp.asarray(pixels))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)
  unadapted = LoRAPatchEmbedding(CONFIG.vision.hidden_size, p).apply(
      {"params": {"kernel": kernel}}, jnp.asarray(pixels))
  assert np.abs(np.asarray(got - unadapted)).max() > 0.1 * np.abs(np.asarray(unadapted)).max()
