"""Parity of `ease_jax.model.CLIP` with transformers' Flax and PyTorch CLIP, and `ease_jax.hf` I/O.

Every comparison uses a tiny random model whose weights are all perturbed away from their init
(biases and LayerNorms included), so a wrongly transposed or misnamed tensor shows up.
"""
import dataclasses
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ease_jax import hf
from ease_jax.model import CLIP, CLIPConfig, TextConfig, VisionConfig

transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB = 64
BOS, EOS = VOCAB - 2, VOCAB - 1
# Towers of different widths and a third projection width, so a transposed kernel cannot fit.
CONFIG = CLIPConfig(
    vision=VisionConfig(hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4,
                        image_size=16, patch_size=8),
    text=TextConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    vocab_size=VOCAB, max_position_embeddings=12, eos_token_id=EOS),
    projection_dim=24)
# Pre-#24773 HF configs: eos_token_id == 2 means "pool at the largest id" (argmax of input_ids).
LEGACY_CONFIG = dataclasses.replace(CONFIG, text=dataclasses.replace(CONFIG.text, eos_token_id=2))
TOKENIZER_DIR = (pathlib.Path(__file__).resolve().parent.parent / "ease_jax" / "data" / "assets" /
                 "emoji_tokenizer")


def _texts() -> tuple[np.ndarray, np.ndarray]:
  """Right-padded texts of lengths 4, 7, 10 and 12: ids, attention mask [4, 12] int32.

  Row 1 is padded with EOS (HF's pad = eos convention, so pooling must take the *first* EOS);
  rows 0 and 2 contain token 2 before their EOS (so legacy pooling must not look for id 2).
  """
  rng = np.random.RandomState(1)
  lengths = [4, 7, 10, 12]
  ids = np.zeros((len(lengths), 12), np.int32)
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    ids[row, :n] = [BOS, *rng.randint(3, BOS, size=n - 2), EOS]
    mask[row, :n] = 1
  ids[1, 7:] = EOS
  ids[0, 1] = ids[2, 3] = 2
  return ids, mask


@pytest.fixture(scope="module")
def inputs():
  pixels = np.random.RandomState(0).randn(3, 16, 16, 3).astype(np.float32)  # NHWC
  ids, mask = _texts()
  return pixels, ids, mask


def _perturb(params, seed: int):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _assert_trees_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for p in fa:
    np.testing.assert_array_equal(np.asarray(fa[p]), np.asarray(fb[p]), err_msg=p)


def _embeddings(config, params, inputs):
  pixels, ids, mask = inputs
  clip = CLIP(config)
  return (np.asarray(jax.jit(clip.encode_image)(params, None, pixels)),
          np.asarray(jax.jit(clip.encode_text)(params, None, ids, mask)))


# -------------------------------------------------------------------------------------------------
# transformers.FlaxCLIPModel on identical weights.


@pytest.fixture(scope="module", params=["first_eos", "legacy_eos2"])
def flax_hf(request):
  config = CONFIG if request.param == "first_eos" else LEGACY_CONFIG
  model = transformers.FlaxCLIPModel(config.to_hf(), seed=0)
  return config, model, _perturb(model.params, seed=1)


def test_param_tree_is_flax_clip_tree(flax_hf):
  config, model, _ = flax_hf
  ours = jax.eval_shape(CLIP(config).init, jax.random.key(0))
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(model.params)
  assert (jax.tree_util.tree_map(jnp.shape, ours) ==
          jax.tree_util.tree_map(jnp.shape, model.params))


def test_matches_flax_clip(flax_hf, inputs):
  config, model, params = flax_hf
  pixels, ids, mask = inputs
  image, text = _embeddings(config, params, inputs)
  hf_image = model.get_image_features(pixels.transpose(0, 3, 1, 2), params=params)
  hf_text = model.get_text_features(ids, mask, params=params)
  np.testing.assert_allclose(image, np.asarray(hf_image), atol=TOL, rtol=0)
  np.testing.assert_allclose(text, np.asarray(hf_text), atol=TOL, rtol=0)
  # The texts really are distinguished (guards against a degenerate pooling).
  assert np.abs(text[:, None] - text[None]).sum(-1)[np.triu_indices(len(text), 1)].min() > 1e-3


def test_load_flax_msgpack_and_flax_safetensors(flax_hf, inputs, tmp_path):
  config, model, params = flax_hf
  model.save_pretrained(tmp_path / "msgpack", params=params)
  model.save_pretrained(tmp_path / "safe", params=params, safe_serialization=True)
  assert (tmp_path / "msgpack" / hf.FLAX_WEIGHTS_NAME).is_file()
  assert (tmp_path / "safe" / hf.SAFE_WEIGHTS_NAME).is_file()
  for name in ("msgpack", "safe"):
    loaded_config, loaded = hf.load_clip(tmp_path / name)
    assert loaded_config == config
    _assert_trees_equal(loaded, params)
  hf_image = model.get_image_features(inputs[0].transpose(0, 3, 1, 2), params=params)
  np.testing.assert_allclose(_embeddings(config, loaded, inputs)[0], np.asarray(hf_image),
                             atol=TOL, rtol=0)


# -------------------------------------------------------------------------------------------------
# transformers.CLIPModel (PyTorch) through a safetensors checkpoint.


def _torch_features(out):
  """get_*_features returns a tensor (or, in some versions, an output object)."""
  import torch  # pylint: disable=g-import-not-at-top
  if isinstance(out, torch.Tensor):
    return out.numpy()
  return getattr(out, "pooler_output", out[0]).numpy()


@pytest.fixture(scope="module", params=["first_eos", "legacy_eos2"])
def torch_ckpt(request, tmp_path_factory):
  torch = pytest.importorskip("torch")
  config = CONFIG if request.param == "first_eos" else LEGACY_CONFIG
  torch.manual_seed(0)
  model = transformers.CLIPModel(config.to_hf()).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  path = tmp_path_factory.mktemp(f"torch_{request.param}")
  model.save_pretrained(path, safe_serialization=True)
  return config, model, path


def test_load_torch_safetensors_matches_torch(torch_ckpt, inputs):
  import torch  # pylint: disable=g-import-not-at-top
  config, model, path = torch_ckpt
  loaded_config, params = hf.load_clip(path)
  assert loaded_config == config
  pixels, ids, mask = inputs
  with torch.no_grad():
    t_image = _torch_features(model.get_image_features(
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())))
    t_text = _torch_features(model.get_text_features(
        input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()))
  image, text = _embeddings(config, params, inputs)
  np.testing.assert_allclose(image, t_image, atol=TOL, rtol=0)
  np.testing.assert_allclose(text, t_text, atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(CLIP(config).logit_scale(params, None)),
                             model.logit_scale.item(), atol=1e-6)


def test_torch_other_layouts_load_identically(torch_ckpt, tmp_path):
  """Sharded safetensors, safetensors without metadata and pytorch_model.bin give equal trees."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  _, model, path = torch_ckpt
  _, reference = hf.load_clip(path)

  model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
  assert (tmp_path / "sharded" / hf.SAFE_INDEX_NAME).is_file()
  model.save_pretrained(tmp_path / "bin", safe_serialization=False)
  (tmp_path / "bare").mkdir()
  shutil.copy(path / hf.CONFIG_NAME, tmp_path / "bare")
  save_file({k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
            str(tmp_path / "bare" / hf.SAFE_WEIGHTS_NAME))  # No metadata at all.
  for name in ("sharded", "bin", "bare"):
    _, params = hf.load_clip(tmp_path / name)
    _assert_trees_equal(params, reference)


# -------------------------------------------------------------------------------------------------
# save_clip.


@pytest.fixture(scope="module")
def params():
  return _perturb(jax.jit(CLIP(CONFIG).init)(jax.random.key(0)), seed=2)


def test_save_load_round_trip(params, inputs, tmp_path):
  tokenizer = transformers.CLIPTokenizerFast.from_pretrained(TOKENIZER_DIR)
  processor = transformers.CLIPImageProcessor(size={"shortest_edge": 16},
                                              crop_size={"height": 16, "width": 16})
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params, tokenizer, image_processor=processor)
  config, loaded = hf.load_clip(out)
  assert config == CONFIG
  _assert_trees_equal(loaded, params)
  # transformers reads it too.
  flax_model = transformers.FlaxCLIPModel.from_pretrained(out)
  _assert_trees_equal(flax_model.params, params)
  tok, proc = hf.load_tokenizer_and_processor(out)
  assert tok.get_vocab() == tokenizer.get_vocab()
  assert tok("a b").input_ids == tokenizer("a b").input_ids
  assert proc is not None and proc.crop_size == {"height": 16, "width": 16}
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # No temp folders left behind.
  # The folder has a new folder's usual mode (others can read it), not mkdtemp's private 0700.
  umask = os.umask(0)
  os.umask(umask)
  assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
  # Saving through a symlink replaces the folder it points to and keeps the link.
  (tmp_path / "link").symlink_to(out)
  hf.save_clip(tmp_path / "link", CONFIG, params, overwrite=True)
  assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == out.resolve()
  assert sorted(p.name for p in out.iterdir()) == [hf.CONFIG_NAME, hf.FLAX_WEIGHTS_NAME]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "link"]


def test_a_save_interrupted_by_a_kill_is_recovered_by_the_next_one(params, tmp_path, caplog):
  """A kill between `replace_dir`'s two renames leaves the checkpoint only under `.ckpt.old-*`,
  and one during writing leaves `.ckpt.tmp-*`: the next save puts the old folder back (so it
  is refused without overwrite=True, not silently replaced) and removes the partial one. Other
  folders' leftovers are never touched, even where their names start alike."""
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  out.rename(tmp_path / ".ckpt.old-x1x1x1x1")
  (tmp_path / ".ckpt.tmp-y2y2y2y2").mkdir()
  (tmp_path / ".ckpt.tmp-y2y2y2y2" / hf.FLAX_WEIGHTS_NAME).write_bytes(b"half")
  # Another folder's: the backup of a folder named `ckpt.old-x`, and a save of `ckpt.tmp-2`.
  neighbours = [tmp_path / ".ckpt.old-x.old-abcdefgh", tmp_path / ".ckpt.tmp-2.tmp-abcdefgh"]
  for folder in neighbours:
    folder.mkdir()
  other = _perturb(params, seed=5)
  with caplog.at_level("WARNING"):
    with pytest.raises(FileExistsError, match="overwrite=True"):
      hf.save_clip(out, CONFIG, other)
  assert "restored the previous folder" in caplog.text
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["ckpt"] + [f.name for f in neighbours])
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  # With the new folder in place, a stale `.old-*` beside it is only removed.
  (tmp_path / ".ckpt.old-z3z3z3z3").mkdir()
  hf.save_clip(out, CONFIG, other, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["ckpt"] + [f.name for f in neighbours])
  _assert_trees_equal(hf.load_clip(out)[1], other)
  # A name with glob characters is taken literally: `run[1]` does not take `run1`'s leftovers.
  (tmp_path / ".run1.old-abcdefgh").mkdir()
  hf.save_clip(tmp_path / "run[1]", CONFIG, params)
  assert (tmp_path / ".run1.old-abcdefgh").is_dir()


def test_extra_files_are_part_of_the_folder(params, tmp_path):
  hf.save_clip(tmp_path / "ckpt", CONFIG, params, extra_files={"notes.json": b"{}"})
  assert (tmp_path / "ckpt" / "notes.json").read_bytes() == b"{}"
  with pytest.raises(ValueError, match="plain file name"):
    hf.save_clip(tmp_path / "other", CONFIG, params, extra_files={"../x": b""})
  assert not (tmp_path / "other").exists() and not (tmp_path / "x").exists()


def test_save_without_tokenizer_and_processor(params, tmp_path):
  hf.save_clip(tmp_path / "ckpt", CONFIG, params)
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
      hf.CONFIG_NAME, hf.FLAX_WEIGHTS_NAME]
  with pytest.raises(FileNotFoundError, match="no tokenizer files"):
    hf.load_tokenizer_and_processor(tmp_path / "ckpt")
  (tmp_path / "empty").mkdir()
  hf.save_clip(tmp_path / "empty", CONFIG, params)  # An empty folder is not "existing".
  assert (tmp_path / "empty" / hf.FLAX_WEIGHTS_NAME).is_file()


def test_save_refuses_to_overwrite(params, tmp_path):
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params)
  other = _perturb(params, seed=3)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    hf.save_clip(out, CONFIG, other)
  _assert_trees_equal(hf.load_clip(out)[1], params)  # Untouched.
  hf.save_clip(out, CONFIG, other, overwrite=True)
  _assert_trees_equal(hf.load_clip(out)[1], other)
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
  with pytest.raises(FileExistsError, match="is a file"):
    hf.save_clip(out / hf.CONFIG_NAME, CONFIG, params)


def test_save_rejects_params_of_another_config(params, tmp_path):
  with pytest.raises(ValueError, match="text_model/"):
    wider = dataclasses.replace(CONFIG, text=dataclasses.replace(CONFIG.text, hidden_size=64))
    hf.save_clip(tmp_path / "ckpt", wider, params)
  assert not list(tmp_path.iterdir())


def test_resolve_repo_id_from_hf_cache(params, tmp_path):
  # The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<commit>/}.
  repo = tmp_path / "cache" / "models--acme--tiny-clip"
  commit = "0123456789abcdef0123456789abcdef01234567"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  hf.save_clip(repo / "snapshots" / commit, CONFIG, params)
  assert hf.resolve_checkpoint("acme/tiny-clip", cache_dir=tmp_path / "cache") == (
      repo / "snapshots" / commit)
  config, loaded = hf.load_clip("acme/tiny-clip", cache_dir=tmp_path / "cache")
  assert config == CONFIG
  _assert_trees_equal(loaded, params)
  with pytest.raises(FileNotFoundError, match="acme/other-clip"):
    hf.resolve_checkpoint("acme/other-clip", cache_dir=tmp_path / "cache")


def test_uncached_repo_id_with_the_default_cache_is_a_clear_error(tmp_path):
  """In a fresh process (nothing has imported `huggingface_hub.constants` yet), as a binary
  resolving a config's default repo id sees it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("from ease_jax import hf\n"
          "try:\n  hf.resolve_checkpoint('acme/not-cached')\n"
          "except FileNotFoundError as e:\n  print(e)\n")
  env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hf_cache"), HF_HUB_OFFLINE="1")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "acme/not-cached" in proc.stdout and str(tmp_path / "hf_cache") in proc.stdout


# -------------------------------------------------------------------------------------------------
# Bad input.


def test_missing_folder_config_or_weights(params, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf.load_clip(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_clip(tmp_path)
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params)
  (out / hf.FLAX_WEIGHTS_NAME).unlink()
  with pytest.raises(FileNotFoundError, match="no weights"):
    hf.load_clip(out)


@pytest.mark.parametrize("name", [hf.FLAX_WEIGHTS_NAME, hf.SAFE_WEIGHTS_NAME])
@pytest.mark.parametrize("data", [b"not a weights file at all", b"\x00" * 64, b""])
def test_corrupt_weights_name_the_file(params, tmp_path, name, data):
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params)
  (out / hf.FLAX_WEIGHTS_NAME).unlink()
  (out / name).write_bytes(data)
  with pytest.raises(ValueError, match=name.replace(".", r"\.")):
    hf.load_clip(out)


def test_truncated_msgpack_names_the_file(params, tmp_path):
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params)
  weights = out / hf.FLAX_WEIGHTS_NAME
  weights.write_bytes(weights.read_bytes()[:1000])
  with pytest.raises(ValueError, match="flax_model.msgpack"):
    hf.load_clip(out)


def test_config_that_does_not_match_weights(params, tmp_path):
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params)
  config = json.loads((out / hf.CONFIG_NAME).read_text())
  config["text_config"]["hidden_size"] = 64
  (out / hf.CONFIG_NAME).write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"shape mismatch: text_model/.*ckpt|ckpt.*shape mismatch: "
                     r"text_model/"):
    hf.load_clip(out)


@pytest.mark.parametrize("edit,needle", [
    (lambda c: "{\"model_type\": \"cl", "is not valid JSON"),
    (lambda c: "[1, 2]", "must hold a JSON object"),
    (lambda c: json.dumps(dict(c, model_type="bert")), "model_type='bert', expected 'clip'"),
    (lambda c: json.dumps(dict(c, text_config=dict(c["text_config"], hidden_size="64"))),
     r"text_config.hidden_size must be an integer, got '64'"),
    (lambda c: json.dumps(dict(c, vision_config=[1])), r"vision_config must be a JSON object"),
    (lambda c: json.dumps(dict(c, text_config=dict(c["text_config"], layer_norm_eps=None))),
     r"text_config.layer_norm_eps must be a positive number, got None"),
    (lambda c: json.dumps(dict(c, vision_config=dict(c["vision_config"], hidden_act="swish2"))),
     r"vision_config.hidden_act: Unknown hidden_act 'swish2'"),
    (lambda c: json.dumps(dict(c, vision_config=dict(c["vision_config"], patch_size=0))),
     r"vision_config.patch_size must be an integer >= 1, got 0"),
])
def test_a_bad_config_json_names_the_file_and_the_problem(params, tmp_path, edit, needle):
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params)
  config = json.loads((out / hf.CONFIG_NAME).read_text())
  (out / hf.CONFIG_NAME).write_text(edit(config))
  with pytest.raises(ValueError, match=needle) as e:
    hf.load_clip(out)
  assert str(out / hf.CONFIG_NAME) in str(e.value)


def test_a_corrupt_tokenizer_is_an_error_not_another_tokenization(params, tmp_path):
  """A malformed merges.txt: the slow tokenizer would read it and give other ids, silently."""
  out = tmp_path / "ckpt"
  tokenizer = transformers.CLIPTokenizerFast.from_pretrained(TOKENIZER_DIR)
  hf.save_clip(out, CONFIG, params, tokenizer)
  (out / "tokenizer.json").unlink()
  merges = (out / "merges.txt").read_text().splitlines()
  (out / "merges.txt").write_text("\n".join(merges[:5] + ["a b c"] + merges[5:]) + "\n")
  with pytest.raises(ValueError, match=r"Cannot build the CLIP tokenizer from .*merges\.txt"):
    hf.load_tokenizer_and_processor(out)
  (out / "preprocessor_config.json").write_text("{not json")
  (out / "merges.txt").write_text("\n".join(merges) + "\n")
  with pytest.raises(ValueError, match="preprocessor_config.json"):
    hf.load_tokenizer_and_processor(out)


def test_missing_and_unexpected_keys(params, tmp_path):
  import flax  # pylint: disable=g-import-not-at-top
  out = tmp_path / "ckpt"
  hf.save_clip(out, CONFIG, params)
  flat = _flat(params)
  del flat["visual_projection/kernel"]
  flat["extra_head/kernel"] = np.zeros((2, 2), np.float32)
  (out / hf.FLAX_WEIGHTS_NAME).write_bytes(flax.serialization.msgpack_serialize(
      traverse_util.unflatten_dict(flat, sep="/")))
  with pytest.raises(ValueError) as info:
    hf.load_clip(out)
  message = str(info.value)
  assert "missing: visual_projection/kernel" in message
  assert "unexpected: extra_head/kernel" in message
  assert str(out / hf.FLAX_WEIGHTS_NAME) in message


def test_wrong_pixel_shape(params):
  clip = CLIP(CONFIG)
  nchw = np.zeros((2, 3, 16, 16), np.float32)
  with pytest.raises(ValueError, match="NHWC"):
    clip.encode_image(params, None, nchw)
  with pytest.raises(ValueError, match="NHWC"):
    clip.encode_image(params, None, np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="input_ids"):
    clip.encode_text(params, None, np.zeros((2, 13), np.int32), np.ones((2, 13), np.int32))
