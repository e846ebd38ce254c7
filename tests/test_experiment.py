"""End to end through the real loading code: HF checkpoint folders, Karpathy data, the binaries."""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import flat_params
from ease_jax import builders
from ease_jax import configs
from ease_jax import evaluation
from ease_jax import hf
from ease_jax import jsonio
from ease_jax import model as model_lib
from ease_jax import training
from ease_jax.data import dataset as dataset_lib
from ease_jax.data import plants
from ease_jax.data import tokenizer as tok_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "experiments" / "configs").glob("*.py"))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem != "__init__"], ids=lambda p: p.stem)
def test_every_config_builds(path):
  config = configs.from_file(path)
  assert "fed" in config and "seeds" in config


def test_every_config_loads_from_outside_the_repo(tmp_path):
  """As the binaries load them: by path, from any working directory, `experiments` not on the
  path (a config that imported `experiments.configs` failed there)."""
  paths = [str(p) for p in CONFIGS if p.stem != "__init__"]
  code = ("import sys\nfrom ease_jax import configs\n"
          "for p in sys.argv[1:]:\n  assert 'fed' in configs.from_file(p), p\nprint('ok')")
  proc = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True,
                        timeout=300, cwd=tmp_path)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("flags, expected", [
    (["--config.seeds.init=7"], dict(seed=0, partition=0, init=7, sampling=0, unlearning=0)),
    (["--config.seed=2"], dict(seed=2, partition=2, init=2, sampling=2, unlearning=2)),
    (["--config.seeds.init=7", "--config.seed=1"],
     dict(seed=1, partition=1, init=7, sampling=1, unlearning=1)),
    (["--config.seed=1", "--config.seeds.partition=5"],
     dict(seed=1, partition=5, init=1, sampling=1, unlearning=1)),
], ids=["one_seed", "seed", "one_seed_then_seed", "seed_then_one_seed"])
def test_overriding_one_seed_sets_that_seed_only(flags, expected, monkeypatch):
  """The main config's seeds follow `seed`, but a flag that sets one of them sets that one only
  (a shared reference set all five, silently), in either order."""
  from absl import flags as absl_flags
  from ml_collections import config_flags
  values = absl_flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values)
  argv = ["prog", f"--config={ROOT / 'experiments' / 'configs' / 'unlearn_emoji.py'}", *flags]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv.
  values(argv)
  c = values.config
  got = dict(seed=c.seed, **{k: c.seeds[k] for k in ("partition", "init", "sampling",
                                                       "unlearning")})
  assert got == expected
  assert c.seeds.split == 0


def _benchmarks_module(name: str, monkeypatch=None):
  """A script module of `benchmarks/` (they import their neighbours by name). The probes set
  XLA_FLAGS on import (`runtime`): `monkeypatch` restores it after the test."""
  import importlib  # pylint: disable=g-import-not-at-top
  if monkeypatch is not None:
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(str(ROOT / "benchmarks"))


def test_probe_seed_override_drives_the_seeds():
  """`probe_plants.py seed=3` moves every seed that follows `seed`, like `--config.seed=3`."""
  probe_plants = _benchmarks_module("probe_plants")
  c = probe_plants.with_overrides(configs.from_file(probe_plants.CONFIG),
                                  ["seed=3", "seeds.init=4"])
  assert (c.seed, c.seeds.partition, c.seeds.init, c.seeds.data) == (3, 3, 4, 3)


def test_paired_redraws_take_twin_populations(monkeypatch):
  """`probe_heldout_audit.paired_redraw_miss_rates`: every draw's `in` and `out` populations
  hold the same seeds, with each member's own scores; each audited retrain is one whose seed
  was not drawn; the draws vary; the rate is the share of audited retrains over the bound. Too
  few seeds with both members, or a repeated seed, is an error."""
  probe_heldout_audit = _benchmarks_module("probe_heldout_audit", monkeypatch)
  rng = np.random.default_rng(0)
  in_seeds, out_seeds = np.arange(100, 108), np.arange(100, 110)  # 108, 109: retrains only
  # Column 0 carries the member's seed (in members with a +0.5 mark), so a row can be traced.
  ins = np.column_stack([in_seeds + 0.5, rng.normal(size=(8, 4))])
  retrains = np.column_stack([out_seeds, rng.normal(size=(10, 4))])
  calls = []

  def fake_audit(target, in_scores, out_scores, variance, fprs, in_seeds, out_seeds):
    np.testing.assert_array_equal(in_scores[:, 0], np.asarray(in_seeds) + 0.5)
    np.testing.assert_array_equal(out_scores[:, 0], out_seeds)
    calls.append((int(target[0]), sorted(in_seeds), sorted(out_seeds)))
    return {"lira_tpr@0.01": 0.5 if target[0] == 109 else 0.0}  # over the bound: 109 only

  monkeypatch.setattr(probe_heldout_audit.audit, "lira_audit", fake_audit)
  rates = probe_heldout_audit.paired_redraw_miss_rates(
      ins, in_seeds, retrains, out_seeds, 3, 6, np.random.default_rng(1), "shared")
  assert len(calls) == 6 * 7
  for audited_seed, drawn_in, drawn_out in calls:
    assert drawn_in == drawn_out and len(drawn_in) == 3 and set(drawn_in) <= set(range(100, 108))
    assert audited_seed not in drawn_out
  assert len({tuple(drawn) for _, drawn, _ in calls}) > 1  # a new draw each time
  np.testing.assert_allclose(rates, 1 / 7)  # 109 is never drawn, so audited in every draw
  with pytest.raises(ValueError, match="seeds have both members"):
    probe_heldout_audit.paired_redraw_miss_rates(
        ins[:3], in_seeds[:3], retrains, out_seeds, 3, 1, np.random.default_rng(1), "shared")
  with pytest.raises(ValueError, match="in_seeds repeats a seed"):
    probe_heldout_audit.paired_redraw_miss_rates(
        ins, np.r_[in_seeds[:7], 100], retrains, out_seeds, 3, 1, np.random.default_rng(1),
        "shared")


def test_centred_scores_subtract_each_stratums_held_out_mean(tmp_path, monkeypatch):
  """`probe_heldout_audit.centred_scorer` on the small planted federation's client request
  (clean pairs, client-backdoor copies and concept copies): the strata partition D_f; a
  backdoor's references are its probes with its target caption, the concept's its probes with
  their concept captions, the clean pairs' the non-member pairs; each score equals a brute-force
  logit-scaled matched cosine (`federated.embed`, numpy) minus its stratum's mean. Another
  audit score, the calibration, and a stratum without references are refused."""
  probe_heldout_audit = _benchmarks_module("probe_heldout_audit", monkeypatch)
  from ease_jax import audit, federated  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import base, common, requests  # pylint: disable=g-import-not-at-top
  config = _small_emoji_run(tmp_path, "unlearn_emoji.py", 0.85)
  setup = builders.build_setup(config)
  request = requests.client_request(setup, [0])
  nonmembers = common.mia_nonmembers(setup, config, request.forget_images)
  texts = np.asarray(request.forget_texts)
  strata = probe_heldout_audit.plant_strata(setup, texts, nonmembers)
  clean = plants.CLEAN
  assert {name for name, *_ in strata} == {clean, "client_backdoor", "concept"}
  masks = np.stack([mask for _, mask, _, _ in strata])
  np.testing.assert_array_equal(masks.sum(0), 1)  # every pair in exactly one stratum
  by_name = {name: (mask, images, refs) for name, mask, images, refs in strata}
  backdoor, concept = setup.plants["client_backdoor"], setup.plants["concept"]
  images_of = np.asarray(setup.dataset.text_image)
  np.testing.assert_array_equal(np.sort(images_of[texts[by_name["client_backdoor"][0]]]),
                                np.sort(backdoor.poison_images))
  np.testing.assert_array_equal(by_name["client_backdoor"][1], backdoor.probe_images)
  assert set(by_name["client_backdoor"][2].tolist()) == {backdoor.target_text}
  own = np.intersect1d(concept.poison_images, images_of[texts])
  assert len(own)  # client 0 holds concept copies
  np.testing.assert_array_equal(np.sort(images_of[texts[by_name["concept"][0]]]), own)
  np.testing.assert_array_equal(by_name["concept"][1], concept.probe_images)
  np.testing.assert_array_equal(by_name["concept"][2], concept.probe_texts)
  assert not plants.is_planted(setup.dataset, images_of[texts[by_name[clean][0]]]).any()
  np.testing.assert_array_equal(by_name[clean][1], images_of[nonmembers])
  np.testing.assert_array_equal(by_name[clean][2], nonmembers)
  trainable = builders.init_trainable(setup, config)
  # A non-zero adapter, so the scores are the adapted model's, not the backbone's.
  trainable = jax.tree.map(lambda x: x + 0.01 * np.sin(np.arange(x.size).reshape(x.shape)),
                           trainable)

  def logits(images, txts):
    ie, te = federated.embed(setup.model, setup.backbone, trainable, setup.data, images, txts)
    ie = ie / np.linalg.norm(ie, axis=1, keepdims=True)
    te = te / np.linalg.norm(te, axis=1, keepdims=True)
    return audit.matched_logit(np.sum(ie * te, axis=1))

  expected = logits(images_of[texts], texts)
  for mask, images, refs in by_name.values():
    expected[mask] -= logits(images, refs).mean()
  score = probe_heldout_audit.centred_scorer(setup, config, texts, nonmembers)
  np.testing.assert_allclose(score(trainable), expected, atol=1e-4)
  for key, value in (("score", "loss"), ("calibrate", True)):
    bad = base.config_with(config, {f"audit.{key}": value})
    with pytest.raises(ValueError, match="--centre takes audit.score=cosine"):
      probe_heldout_audit.centred_scorer(setup, bad, texts, nonmembers)
  with pytest.raises(ValueError, match="no held-out reference pairs"):
    probe_heldout_audit.plant_strata(setup, texts, nonmembers[:0])


def test_bound_audit_reads_each_model_level_p_without_its_seed(monkeypatch):
  """`probe_heldout_audit.bound_audit`'s model-level p of a left-out retrain is against the
  other retrains, of an extra retrain against all of them, of a trained member against the
  retrains without its twin (`audit.model_mean_test`); a shifted trained population is under
  the level and the counts say so."""
  probe_heldout_audit = _benchmarks_module("probe_heldout_audit", monkeypatch)
  from ease_jax import audit  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  mu = rng.normal(size=30)
  draw = lambda k, shift: mu + shift + rng.normal(0, 0.5, (k, 1)) + rng.normal(0, 0.7, (k, 30))
  seeds, extra_seeds = np.arange(100, 108), np.arange(110, 113)
  ins, outs, extra = draw(8, 4.0), draw(8, 0.0), draw(3, 0.0)
  row = probe_heldout_audit.bound_audit(ins, seeds, outs, seeds, "shared", 0.95, extra,
                                        extra_seeds)
  keep = lambda seed: outs[seeds != seed]
  expected = ([audit.model_mean_test(outs[j], keep(s))[1] for j, s in enumerate(seeds)]
              + [audit.model_mean_test(x, outs)[1] for x in extra])
  np.testing.assert_allclose(row["model_level_p"], expected, rtol=5e-3)  # 3 figures
  np.testing.assert_allclose(row["trained_model_level_p"], [
      audit.model_mean_test(ins[j], keep(s))[1] for j, s in enumerate(seeds)], rtol=5e-3)
  assert row["model_level_under"] == sum(p < 0.01 for p in expected)
  assert row["trained_model_level_not_under"] == 0
  assert row["model_level_strata_p"] == row["model_level_p"] and row["strata"] is None
  # By stratum: each model against the same retrains, within each stratum.
  strata = np.array(["a"] * 10 + ["b"] * 20)
  row = probe_heldout_audit.bound_audit(ins, seeds, outs, seeds, "shared", 0.95, extra,
                                        extra_seeds, strata=strata)
  expected = ([audit.stratified_mean_test(outs[j], keep(s), strata)["p"]
               for j, s in enumerate(seeds)]
              + [audit.stratified_mean_test(x, outs, strata)["p"] for x in extra])
  assert row["strata"] == ["a", "b"]
  np.testing.assert_allclose(row["model_level_strata_p"], expected, rtol=5e-3)
  np.testing.assert_allclose(row["trained_model_level_strata_p"], [
      audit.stratified_mean_test(ins[j], keep(s), strata)["p"] for j, s in enumerate(seeds)],
                             rtol=5e-3)
  assert row["model_level_strata_under"] == sum(p < 0.01 for p in expected)
  assert row["trained_model_level_strata_not_under"] == 0


def test_paired_difference_matches_scipys_paired_t_test():
  """The utility populations' summary: mean, std, standard error and the t-interval of the
  paired difference, against scipy's paired t-test; unpaired or too short input is an error."""
  common = _benchmarks_module("common")
  import scipy.stats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = rng.normal(12.0, 3.0, 24)
  b = a + rng.normal(1.5, 2.0, 24)
  got = common.paired_difference(a, b)
  ref = scipy.stats.ttest_rel(a, b)
  interval = ref.confidence_interval(0.95)
  assert got["n"] == 24 and got["mean"] == pytest.approx(np.mean(a - b))
  assert got["std"] == pytest.approx(np.std(a - b, ddof=1))
  assert got["se"] == pytest.approx(got["mean"] / ref.statistic)
  assert (got["lo"], got["hi"]) == pytest.approx((interval.low, interval.high))
  assert common.paired_difference(a, b, 0.5)["hi"] < got["hi"]
  for bad in ((a, b[:5]), (a[:1], b[:1]), (a.reshape(4, 6), b.reshape(4, 6))):
    with pytest.raises(ValueError, match="paired_difference needs two 1-D arrays"):
      common.paired_difference(*bad)


def test_config_file_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.py"):
    configs.from_file(tmp_path / "nope.py")
  (tmp_path / "empty.py").write_text("X = 1\n")
  with pytest.raises(ValueError, match="empty.py defines no get_config"):
    configs.from_file(tmp_path / "empty.py")


def test_unknown_config_key_is_a_clear_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "train.py"),
       "--config=" + str(ROOT / "experiments" / "configs" / "emoji_default.py"),
       "--config.fed.rundos=3", f"--workdir={tmp_path / 'w'}"],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert proc.returncode != 0
  assert "rundos" in proc.stderr
  assert not (tmp_path / "w").exists()


def _tiny_backbone(out_dir, image_size, context):
  tokenizer = tok_lib.load_tokenizer(dataset_lib.embedded_tokenizer_dir())
  config = model_lib.CLIPConfig(
      vision=model_lib.VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1,
                                    num_heads=2, image_size=image_size, patch_size=8),
      text=model_lib.TextConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                vocab_size=len(tokenizer), max_position_embeddings=context,
                                eos_token_id=tok_lib.eos_token_id(tokenizer)),
      projection_dim=16)
  params = model_lib.CLIP(config).init(jax.random.key(0))
  hf.save_clip(out_dir, config, jax.tree.map(np.asarray, params), tokenizer=tokenizer)
  return out_dir


def _small_run(config):
  config.fed.num_clients = 3
  config.fed.rounds = 2
  config.fed.batch_size = 8
  config.fed.history_size = 2
  config.eval.every = 1
  config.lora.rank = 2
  return config


def _small_emoji_run(tmp_path, config_file, public_fraction):
  """A short run of an emoji config on a tiny random checkpoint, with few client images (and,
  for the planted configs, small plants on the 3 clients: a backdoor on client 0, the sample
  plant on clients 1 and 2, the concept on all three; client 0 leaves; no population unless a
  test asks)."""
  ckpt = _tiny_backbone(tmp_path / "ckpt", image_size=32, context=24)
  config = _small_run(configs.from_file(ROOT / "experiments" / "configs" / config_file))
  config.model.checkpoint = str(ckpt)
  config.data.split = "random"
  config.data.public_fraction = public_fraction  # keep the client data small for speed
  if "plants" in config:
    config.plants.client_backdoor.clients = (0,)
    config.plants.client_backdoor.num_pairs = 12
    config.plants.sample_backdoor.clients = (1, 2)
    config.plants.sample_backdoor.num_pairs = 8
    config.plants.concept.num_pairs = 9
    config.unlearning.clients = (0,)
    config.audit.population = 0
  if "benchmark" in config:
    config.benchmark.scenario_blocks.client.clients = (0,)
  return config


def test_train_on_emoji_with_a_checkpoint_folder(tmp_path):
  config = _small_emoji_run(tmp_path, "emoji_default.py", 0.8)
  summary = training.train_and_summarize(config, tmp_path / "work")
  work = tmp_path / "work"
  rows = jsonio.read_jsonl(work / "metrics.jsonl")
  assert [r["round"] for r in rows] == [1, 2]
  assert "clients/mean_r1" in rows[-1] and "test/mean_r1" in rows[-1]
  assert (work / "r1_per_round.png").stat().st_size > 0
  on_disk = json.loads((work / "summary.json").read_text())
  assert on_disk["table"] == summary["table"]
  assert set(summary["pretrained"]) == set(summary["federated"])
  # Running again resumes the finished run instead of overwriting it.
  again = training.train_and_summarize(config, work)
  assert again["federated"] == pytest.approx(summary["federated"])


def _karpathy_fixture(root, num_images=12, captions_per_image=2):
  images = root / "images"
  images.mkdir(parents=True)
  rng = np.random.default_rng(0)
  entries = []
  for i in range(num_images):
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
    entries.append(dict(
        filename=f"{i}.jpg", imgid=i, split="train" if i < 10 else "test",
        sentences=[dict(raw=f"a {c} face number {i}", tokens=[]) for c in
                   ("smiling", "waving")[:captions_per_image]]))
  (root / "dataset_flickr30k.json").write_text(json.dumps(dict(images=entries,
                                                               dataset="flickr30k")))
  return root / "dataset_flickr30k.json", images


def test_train_on_karpathy_format_with_hf_checkpoint(tmp_path):
  ckpt = _tiny_backbone(tmp_path / "ckpt", image_size=16, context=16)
  json_path, image_root = _karpathy_fixture(tmp_path / "flickr")
  config = _small_run(configs.from_file(ROOT / "experiments" / "configs" / "flickr30k_b32.py"))
  config.model.checkpoint = str(ckpt)
  config.data.json_path = str(json_path)
  config.data.image_root = str(image_root)
  config.data.min_client_size = 1
  config.fed.batch_size = 4
  setup = builders.build_setup(config)
  assert setup.dataset.num_images == 12 and setup.dataset.num_texts == 24
  # data.split='karpathy': the file's test images are the test split, never a client's.
  np.testing.assert_array_equal(setup.test_images, [10, 11])
  assert setup.dataset.images.shape[1:] == (16, 16, 3)
  # All captions of an image stay with the image's client.
  for imgs in setup.client_images:
    texts = setup.texts_of(imgs)
    assert set(setup.dataset.text_image[texts]) == set(imgs)
  summary = training.train_and_summarize(config, tmp_path / "work")
  assert 0.0 <= summary["federated"]["test/i2t_r1"] <= 100.0


def test_the_checkpoints_processor_sets_the_karpathy_geometry(tmp_path):
  """The binaries resize and crop photos as the checkpoint's preprocessor_config.json says (its
  shortest edge), and refuse a crop the model cannot take."""
  import transformers  # pylint: disable=g-import-not-at-top
  ckpt = _tiny_backbone(tmp_path / "ckpt", image_size=16, context=16)
  clip_config, params = hf.load_clip(ckpt)
  tokenizer = tok_lib.load_tokenizer(dataset_lib.embedded_tokenizer_dir())
  json_path, image_root = _karpathy_fixture(tmp_path / "flickr")
  config = configs.from_file(ROOT / "experiments" / "configs" / "flickr30k_b32.py")
  config.data.json_path, config.data.image_root = str(json_path), str(image_root)
  from ease_jax.data import karpathy  # pylint: disable=g-import-not-at-top
  for name, size, crop in (("wide", 30, 16), ("bad", 30, 12)):
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                                crop_size={"height": crop, "width": crop})
    hf.save_clip(tmp_path / name, clip_config, params, tokenizer=tokenizer,
                 image_processor=processor)
    config.model.checkpoint = str(tmp_path / name)
    if name == "bad":
      with pytest.raises(ValueError, match="crops images to 12x12 px but its model takes 16x16"):
        builders.build_setup(config)
      continue
    ds = builders.build_setup(config).dataset
    first = Image.open(image_root / "0.jpg")
    # Resized to a shortest edge of 30 (not 16), then center cropped: another part of the photo.
    np.testing.assert_array_equal(ds.images[0], karpathy.preprocess_image(first, 30, 16, 16))
    assert not np.array_equal(ds.images[0], karpathy.preprocess_image(first, 16, 16, 16))


def test_missing_image_in_karpathy_data_names_the_file(tmp_path):
  ckpt = _tiny_backbone(tmp_path / "ckpt", image_size=16, context=16)
  json_path, image_root = _karpathy_fixture(tmp_path / "flickr")
  (image_root / "3.jpg").unlink()
  config = configs.from_file(ROOT / "experiments" / "configs" / "flickr30k_b32.py")
  config.model.checkpoint = str(ckpt)
  config.data.json_path = str(json_path)
  config.data.image_root = str(image_root)
  with pytest.raises(FileNotFoundError, match="3.jpg"):
    builders.build_setup(config)


def test_too_many_clients_is_a_clear_error(tmp_path):
  ckpt = _tiny_backbone(tmp_path / "ckpt", image_size=16, context=16)
  json_path, image_root = _karpathy_fixture(tmp_path / "flickr")
  config = configs.from_file(ROOT / "experiments" / "configs" / "flickr30k_b32.py")
  config.model.checkpoint = str(ckpt)
  config.data.json_path = str(json_path)
  config.data.image_root = str(image_root)
  config.fed.num_clients = 50
  with pytest.raises(ValueError, match="50"):
    builders.build_setup(config)


def test_missing_backbone_folder_is_a_clear_error(tmp_path):
  config = configs.from_file(ROOT / "experiments" / "configs" / "emoji_default.py")
  config.model.checkpoint = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope"):
    builders.build_setup(config)


def test_a_checkpoint_whose_processor_scales_pixels_otherwise_is_refused(tmp_path):
  """Pixels are always scaled by `normalize_images` (CLIP's mean and std); a checkpoint whose
  preprocessor_config.json asks for other statistics would see inputs it was not trained on."""
  import transformers  # pylint: disable=g-import-not-at-top
  ckpt = _tiny_backbone(tmp_path / "ckpt", image_size=32, context=24)
  clip_config, params = hf.load_clip(ckpt)
  tokenizer = tok_lib.load_tokenizer(dataset_lib.embedded_tokenizer_dir())
  config = configs.from_file(ROOT / "experiments" / "configs" / "emoji_default.py")
  for name, processor, needle in (
      ("clip", transformers.CLIPImageProcessor(), None),  # transformers' CLIP defaults agree
      ("imagenet", transformers.CLIPImageProcessor(image_mean=[0.485, 0.456, 0.406],
                                                   image_std=[0.229, 0.224, 0.225]), "image_mean"),
      ("raw", transformers.CLIPImageProcessor(do_normalize=False), "do_normalize=False"),
      ("scaled", transformers.CLIPImageProcessor(rescale_factor=1 / 127.5), "rescale_factor")):
    folder = tmp_path / name
    hf.save_clip(folder, clip_config, params, tokenizer=tokenizer, image_processor=processor)
    config.model.checkpoint = str(folder)
    if needle is None:
      assert builders.load_backbone(config.model)[0] == clip_config
    else:
      with pytest.raises(ValueError, match=needle) as raised:
        builders.load_backbone(config.model)
      assert hf.PREPROCESSOR_NAME in str(raised.value) and name in str(raised.value)


def test_a_checkpoint_whose_tokenizer_disagrees_with_its_config_is_refused(tmp_path):
  """Another end-of-text id makes the text pooling read the start token of every caption (all
  captions embed alike), and ids past the embedding table embed as NaN: both refused by name."""
  ckpt = _tiny_backbone(tmp_path / "ckpt", image_size=32, context=24)
  clip_config, params = hf.load_clip(ckpt)
  tokenizer = tok_lib.load_tokenizer(dataset_lib.embedded_tokenizer_dir())
  config = configs.from_file(ROOT / "experiments" / "configs" / "emoji_default.py")
  text = clip_config.text
  eos = tok_lib.eos_token_id(tokenizer)
  for name, changed, needle in (
      ("eos", dataclasses.replace(text, eos_token_id=eos - 2), f"end-of-text id is {eos}"),
      ("vocab", dataclasses.replace(text, vocab_size=len(tokenizer) - 4),
       f"has {len(tokenizer)} tokens but config.json's text vocab_size is {len(tokenizer) - 4}")):
    other = dataclasses.replace(clip_config, text=changed)
    other_params = model_lib.CLIP(other).init(jax.random.key(0))
    hf.save_clip(tmp_path / name, other, jax.tree.map(np.asarray, other_params),
                 tokenizer=tokenizer)
    config.model.checkpoint = str(tmp_path / name)
    with pytest.raises(ValueError, match=needle):
      builders.load_backbone(config.model)
  # The legacy eos_token_id = 2 of old configs means "the largest id": not compared.
  legacy = dataclasses.replace(clip_config, text=dataclasses.replace(text, eos_token_id=2))
  hf.save_clip(tmp_path / "legacy", legacy, params, tokenizer=tokenizer)
  config.model.checkpoint = str(tmp_path / "legacy")
  assert builders.load_backbone(config.model)[0].text.eos_token_id == 2


def test_fine_tuning_temperature_override():
  config = configs.from_file(ROOT / "experiments" / "configs" / "emoji_default.py")
  config.model.logit_scale = 0.0  # the checkpoint's own
  original = float(builders.build_setup(config).backbone["logit_scale"])
  config.model.logit_scale = 3.0
  setup = builders.build_setup(config)
  np.testing.assert_allclose(float(setup.backbone["logit_scale"]), np.log(3.0), rtol=1e-6)
  assert not np.isclose(original, np.log(3.0))
  config.model.logit_scale = -1.0
  with pytest.raises(ValueError, match="model.logit_scale"):
    builders.build_setup(config)


def test_skin_tone_split_of_the_embedded_data():
  config = configs.from_file(ROOT / "experiments" / "configs" / "emoji_default.py")
  assert config.data.split == "skin_tone"
  setup = builders.build_setup(config)
  tones = setup.dataset.image_meta["skin_tone"]
  np.testing.assert_array_equal(setup.public_images, np.flatnonzero(tones == "none"))
  clients = np.concatenate(setup.client_images)
  held = np.concatenate([setup.test_images, clients])
  np.testing.assert_array_equal(np.sort(held), np.flatnonzero(tones != "none"))
  assert len(np.intersect1d(setup.test_images, clients)) == 0
  # Test split: test_fraction of the toned variants, stratified by the partition label.
  n_toned = int((tones != "none").sum())
  assert abs(len(setup.test_images) - config.data.test_fraction * n_toned) <= 6
  assert set(tones[setup.test_images]) == set(tones[tones != "none"])
  # The pretraining split must be the one the shipped backbone was trained on.
  shipped = json.loads((builders.embedded_backbone_dir() / "pretraining.json").read_text())
  assert shipped["split"]["kind"] == "skin_tone"
  assert shipped["split"]["num_public"] == len(setup.public_images)


def test_split_kind_errors():
  config = configs.from_file(ROOT / "experiments" / "configs" / "emoji_default.py")
  config.data.split = "by_colour"
  with pytest.raises(ValueError, match="Unknown data.split='by_colour'"):
    builders.build_setup(config)
  config.data.split = "skin_tone"
  config.data.skin_tone_variants = False
  config.data.label = "subgroup"
  with pytest.raises(ValueError, match="no skin-tone variants"):
    builders.build_setup(config)



def test_a_bad_partition_label_is_named_as_such():
  """The error named `data.label`, which was fine."""
  config = configs.from_file(ROOT / "experiments" / "configs" / "emoji_default.py")
  config.data.partition_label = "tone"
  with pytest.raises(ValueError, match=r"data.partition_label='tone' is not a field of emoji"):
    builders.build_setup(config)


def test_unlearn_pipeline_on_emoji_with_a_checkpoint_folder(tmp_path):
  from ease_jax.unlearning import pipeline  # pylint: disable=g-import-not-at-top
  config = _small_emoji_run(tmp_path, "unlearn_emoji.py", 0.85)
  config.eval.every = 0
  config.methods = ("ease",)
  config.pfl.rounds = 1
  config.bke.steps = 2
  config.audit.population = 4
  results = pipeline.run_unlearning(config, tmp_path / "work")
  rows = {r["method"]: r for r in results["table"]}
  assert list(rows) == ["retrain", "backbone", "original", "ease", "ease+pfl"]
  assert rows["retrain"]["forget/mean_r1_gap"] == 0.0
  # What the request forgets is the backdoor of client 0, reported for every row.
  assert results["forgotten_knowledge"] == ["asr/client_backdoor/i2t", "asr/client_backdoor/t2i"]
  for r in rows.values():
    assert 0.0 <= r["asr/client_backdoor/i2t"] <= 100.0 and "asr/sample_backdoor/t2i" in r
    assert 0.0 <= r["concept/concept/i2t"] <= 100.0 and "concept/concept/t2i" in r
    assert 0.0 <= r["forget_quality"] <= 1.0 and 0.0 <= r["lira_auc"] <= 1.0
    assert 0.0 <= r["forget_quality_iid"] <= 1.0
  assert rows["retrain"]["asr/client_backdoor/i2t_gap"] == 0.0
  assert results["populations"]["seeds"] == [100, 101, 102, 103]
  assert 0.0 <= results["populations"]["model_effect_share"] <= 1.0
  # The backbone row is the pretrained model alone: evaluate it independently on the clean
  # images of client 0 (its planted copies are measured by the attack success rates).
  setup = builders.build_setup(config)
  clean = setup.client_images[0][~plants.is_planted(setup.dataset, setup.client_images[0])]
  assert len(clean) < len(setup.client_images[0])
  direct = evaluation.evaluate_images(setup.model, setup.backbone, None, setup.data,
                                      setup.dataset, clean)
  assert rows["backbone"]["forget/mean_r1"] == pytest.approx(direct["mean_r1"], abs=0.01)
  # The trained model and EASE's output, restored from the run's cache and rerun by hand: the
  # `original` and `ease` rows are theirs (not each other's, nor the backbone's).
  from ease_jax.unlearning import base, methods, requests  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import retrain as retrain_lib  # pylint: disable=g-import-not-at-top
  trained = retrain_lib.train(setup, config, tmp_path / "work")[0]
  direct = evaluation.evaluate_images(setup.model, setup.backbone, trained.trainable, setup.data,
                                      setup.dataset, clean)
  assert rows["original"]["forget/mean_r1"] == pytest.approx(direct["mean_r1"], abs=0.01)
  plant = setup.plants["client_backdoor"]
  asr = evaluation.plant_metrics(setup, trained.trainable, plant)
  assert rows["original"]["asr/client_backdoor/i2t"] == pytest.approx(
      asr["asr/client_backdoor/i2t"], abs=0.01)
  request = requests.from_config(setup, config.unlearning, seed=config.seeds.unlearning)
  ctx = base.UnlearningContext(setup=setup, config=config, request=request,
                               trained=trained.trainable, history=trained.history,
                               eval_subsets=request.eval_subsets(setup))
  ease = methods.get("ease")(ctx)
  for name, tree in (("ease", ease.trainable), ("ease+pfl", ease.continued["pfl"])):
    direct = evaluation.evaluate_images(setup.model, setup.backbone, tree, setup.data,
                                        setup.dataset, clean)
    assert rows[name]["forget/mean_r1"] == pytest.approx(direct["mean_r1"], abs=0.01), name
    assert np.abs(flat_params(tree) - flat_params(trained.trainable)).max() > 0, name
  # The audit columns: the cached populations scored again here and each model audited with the
  # members' seeds (twins leave the LiRA fits). A cell that dropped the seeds, swapped the two
  # populations or scored another model would read otherwise. (This tiny population's retrains
  # are so far apart that the bound and the point estimate coincide; `test_audit.py` checks the
  # confidence's way into the row.)
  from ease_jax import audit  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import common, population  # pylint: disable=g-import-not-at-top
  nonmembers = common.mia_nonmembers(setup, config, request.forget_images)
  pops = population.scored_pair(setup, config, request, tmp_path / "work" / "population",
                                nonmembers)
  score = population.forget_scorer(setup, config, request.forget_texts, nonmembers)
  a = common.block(config, "audit", population.DEFAULTS)
  for name, tree in (("original", trained.trainable), ("ease", ease.trainable)):
    target = score(tree)
    fq = audit.forget_quality(target, pops["out_scores"], confidence=a.forget_confidence)
    want = dict(forget_quality=fq["p"], forget_quality_point=fq["p_point"],
                forget_quality_iid=fq["p_iid"], forget_quality_min=fq["p_min"])
    want.update(audit.lira_audit(target, pops["in_scores"], pops["out_scores"], a.variance,
                                 in_seeds=pops["seeds"], out_seeds=pops["out_seeds"]))
    want["model_level_t"], want["model_level_p"] = audit.model_mean_test(target,
                                                                         pops["out_scores"])
    # The client request's D_f by stratum: its clean pairs and the plants' copies it holds.
    strata = request.audit_strata(setup)
    assert len(set(strata.tolist())) > 1
    by_stratum = audit.stratified_mean_test(target, pops["out_scores"], strata)
    want["model_level_strata_p"] = by_stratum["p"]
    shown = [k for k in pipeline.AUDIT_KEYS if k in want]  # the audit columns of the table
    assert len(shown) == 10
    # And each stratum's own p, after them.
    want.update({f"model_level_p/{k}": p for k, (_, p) in by_stratum["per_stratum"].items()})
    shown += [f"model_level_p/{k}" for k in by_stratum["per_stratum"]]
    assert [k for k in rows[name] if k.startswith("model_level_p/")] == shown[10:]
    for key in shown:  # at the table's precision (3 significant digits)
      value = want[key]
      assert rows[name].get(key) == (None if value is None else float(f"{value:.3g}")), (
          name, key)
  on_disk = json.loads((tmp_path / "work" / "results.json").read_text())
  assert [r["method"] for r in on_disk["table"]] == list(rows)
  assert (tmp_path / "work" / "results.csv").read_text().startswith("method,")
  for name in ("knowledge_bars.png", "scores.png", "reanchoring.png"):
    assert (tmp_path / "work" / name).stat().st_size > 0


def test_a_methods_code_version_keys_only_its_own_rows(tmp_path, monkeypatch):
  """A change of a method's code that moves its rows bumps its ROWS_VERSION: a resumed benchmark
  then recomputes that method's rows (and its variants'), and keeps every other row."""
  from ease_jax.unlearning import benchmark as benchmark_lib  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import methods  # pylint: disable=g-import-not-at-top
  config = configs.from_file(ROOT / "experiments" / "configs" / "benchmark_emoji.py")
  config.benchmark.methods = ("ease", "finetune", "ease_other")
  config.benchmark.variants = {"ease_other": {"method": "ease",
                                              "overrides": {"gsd": {"energy": 0.8}}}}
  before = benchmark_lib.row_keys(config)
  monkeypatch.setitem(methods.ROWS_VERSIONS, "ease", methods.ROWS_VERSIONS["ease"] + 1)
  after = benchmark_lib.row_keys(config)
  changed = {cell[2] for cell, key in after.items() if key != before[cell]}
  assert changed == {"ease", "ease_other"}


def test_a_pasted_triggers_opacity_keeps_the_benchmarks_row_keys():
  """`trigger.opacity` came after rows were written: at 1 (the pasted patch of every earlier
  row) the keys are those of the config without the key, so a resumed benchmark keeps its rows;
  a blended trigger keys every row anew."""
  from ease_jax.unlearning import benchmark as benchmark_lib  # pylint: disable=g-import-not-at-top
  config = configs.from_file(ROOT / "experiments" / "configs" / "benchmark_emoji.py")
  config.benchmark.methods = ("finetune",)
  blended_default = benchmark_lib.row_keys(config)
  for name in ("client_backdoor", "sample_backdoor"):
    assert config.plants[name].trigger.opacity == 0.3
    config.plants[name].trigger.opacity = 1.0
  with_key = benchmark_lib.row_keys(config)
  assert all(blended_default[cell] != key for cell, key in with_key.items())
  for name in ("client_backdoor", "sample_backdoor"):
    del config.plants[name].trigger["opacity"]
  assert benchmark_lib.row_keys(config) == with_key
  config.plants.client_backdoor.trigger.opacity = 0.3
  blended = benchmark_lib.row_keys(config)
  assert all(blended[cell] != key for cell, key in with_key.items())


def test_benchmark_resumes_after_an_interruption(tmp_path, monkeypatch):
  """An interrupted comparison, rerun, redoes no finished cell and ends with the same rows as an
  uninterrupted one; a method that raises is logged and retried by the rerun."""
  from ease_jax.unlearning import methods  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import benchmark  # pylint: disable=g-import-not-at-top
  config = _small_emoji_run(tmp_path, "benchmark_emoji.py", 0.85)
  config.eval.every = 0
  config.benchmark.seeds = (0,)
  config.benchmark.scenarios = ("client", "sample")
  config.benchmark.methods = ("fedrecovery", "finetune")
  # A random sample request (the planted one forgets only poisoned copies: no forget R@1).
  config.benchmark.scenario_blocks.sample = ml_collections.ConfigDict(
      dict(kind="sample", clients=(), fraction=0.1, plant=""))
  config.finetune.rounds = 1
  full = benchmark.run_benchmark(config, tmp_path / "full", progress=False)["rows"]
  cells = lambda rows: sorted((r["scenario"], r["method"]) for r in rows)
  assert cells(full) == sorted((s, m) for s in ("client", "sample")
                               for m in ("retrain", "original", "fedrecovery", "finetune"))

  finetune = methods.get("finetune")

  def killed_on_sample(ctx):
    if ctx.request.kind == "sample":
      raise KeyboardInterrupt  # Not an Exception: stops the whole benchmark, like Ctrl-C.
    return finetune(ctx)

  def broken(ctx):
    raise RuntimeError("transient failure")

  work = tmp_path / "resumed"
  monkeypatch.setitem(methods.METHODS, "finetune", killed_on_sample)
  monkeypatch.setitem(methods.METHODS, "fedrecovery", broken)
  with pytest.raises(KeyboardInterrupt):
    benchmark.run_benchmark(config, work, progress=False)
  first = benchmark.read_rows(work / "results.jsonl")
  # client: everything but the broken method; sample: retrain, original, then the kill.
  assert cells(first) == [("client", "finetune"), ("client", "original"), ("client", "retrain"),
                          ("sample", "original"), ("sample", "retrain")]
  errors = jsonio.read_jsonl(work / "errors.jsonl")
  assert [(e["scenario"], e["method"]) for e in errors] == [("client", "fedrecovery"),
                                                           ("sample", "fedrecovery")]
  monkeypatch.undo()  # The real methods again.
  resumed = benchmark.run_benchmark(config, work, progress=False)["rows"]
  assert cells(resumed) == cells(full)  # Each cell once: nothing finished was redone.
  assert resumed[:len(first)] == first
  by_cell = {(r["scenario"], r["method"]): r for r in full}
  for r in resumed:
    ref = by_cell[(r["scenario"], r["method"])]
    for key in ("forget/mean_r1", "retain/mean_r1", "test/mean_r1", "forget/i2t_rprec", "mia_auc"):
      assert r[key] == pytest.approx(ref[key], abs=1e-6), (r["scenario"], r["method"], key)
  for name in ("benchmark.md", "benchmark.csv", "benchmark.png"):
    assert (work / name).stat().st_size > 0
  assert "| fedrecovery |" in (work / "benchmark.md").read_text()

  # A method knob changed: the method rows are redone (each method hashes every method block),
  # the reference rows are not, and the table reports the new rows only; a leftover row of a
  # seed the config does not ask for is not reported either.
  jsonio.append_jsonl(work / "results.jsonl", dict(resumed[0], seed=9))
  written = len(benchmark.read_rows(work / "results.jsonl"))
  config.finetune.rounds = 2
  retuned = benchmark.run_benchmark(config, work, progress=False)
  redone = benchmark.read_rows(work / "results.jsonl")[written:]
  assert cells(redone) == [(s, m) for s in ("client", "sample")
                           for m in ("fedrecovery", "finetune")]
  assert cells(retuned["rows"]) == cells(full)
  assert [r["diagnostics"]["rounds"] for r in retuned["rows"] if r["method"] == "finetune"] == [
      2, 2]
  assert all(len(r["seeds"]) == 1 for r in retuned["table"])
  # Reporting under a config none of the rows was computed with refuses, and rewrites nothing.
  tables = (work / "benchmark.md").read_text()
  config.benchmark.seeds = (5,)
  with pytest.raises(ValueError, match="None of the .* rows .* was computed under this config"):
    benchmark.report(config, work)
  assert (work / "benchmark.md").read_text() == tables


def test_benchmark_writes_a_methods_children_before_it(tmp_path, monkeypatch):
  """A kill between a method's continued-model row (`name+tag`) and its own row must leave the
  method undone, so that the rerun redoes both rather than never writing the child."""
  from ease_jax.unlearning import base  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import benchmark  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import methods  # pylint: disable=g-import-not-at-top
  config = _small_emoji_run(tmp_path, "benchmark_emoji.py", 0.85)
  config.eval.every = 0
  config.audit.population = 0
  config.benchmark.seeds, config.benchmark.scenarios = (0,), ("client",)
  config.benchmark.methods = ("finetune",)
  monkeypatch.setitem(methods.METHODS, "finetune", lambda ctx: base.MethodResult(
      ctx.trained, 0.0, continued={"again": ctx.trained}))
  append = jsonio.append_jsonl

  def killed_before_the_parent(path, row):
    if row.get("method") == "finetune":
      raise KeyboardInterrupt
    append(path, row)

  monkeypatch.setattr(benchmark.jsonio, "append_jsonl", killed_before_the_parent)
  with pytest.raises(KeyboardInterrupt):
    benchmark.run_benchmark(config, tmp_path / "work", progress=False)
  written = [r["method"] for r in benchmark.read_rows(tmp_path / "work" / "results.jsonl")]
  assert written == ["retrain", "original", "finetune+again"]
  monkeypatch.setattr(benchmark.jsonio, "append_jsonl", append)
  rows = benchmark.run_benchmark(config, tmp_path / "work", progress=False)["rows"]
  assert [r["method"] for r in rows][-2:] == ["finetune+again", "finetune"]
  assert [r["method"] for r in benchmark.aggregate(rows, ["client"])] == [
      "retrain", "original", "finetune+again", "finetune"]


def test_avoid_cpu_hang_sets_the_flag_once(monkeypatch):
  from ease_jax import runtime  # pylint: disable=g-import-not-at-top
  flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  runtime.avoid_cpu_hang()
  runtime.avoid_cpu_hang()
  assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {flag}"
  # The user's choice wins.
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=true")
  runtime.avoid_cpu_hang()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
  monkeypatch.delenv("XLA_FLAGS")
  runtime.avoid_cpu_hang()
  assert os.environ["XLA_FLAGS"] == flag


_CACHE_PROBE = """
import os, pathlib, sys
from ease_jax import cli
import jax, jax.numpy as jnp
work = pathlib.Path(sys.argv[1])
folder = cli.cache_compilations(work)
print(folder)
print(work.exists())  # Nothing written before the first compilation.
print(float(jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.float32(0.5))))
print(sorted(os.listdir(folder)) != [])
"""


@pytest.mark.parametrize("env_cache", [False, True])
def test_cache_compilations_in_the_workdir(tmp_path, env_cache):
  """`cli.cache_compilations`: the workdir's `jax_cache` (made only at the first computation),
  or the folder `JAX_COMPILATION_CACHE_DIR` names; even a tiny program is kept (the methods'
  many small ones add up). (That the binaries call it:
  test_failures.py, `test_every_checkpoint_damaged_stops_with_one_line`.)"""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  expected = tmp_path / "w" / "jax_cache"
  if env_cache:
    expected = tmp_path / "user_cache"
    env["JAX_COMPILATION_CACHE_DIR"] = str(expected)
  proc = subprocess.run([sys.executable, "-c", _CACHE_PROBE, str(tmp_path / "w")], env=env,
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  folder, existed, value, stored = proc.stdout.split()
  assert (folder, existed, stored) == (str(expected), "False", "True")
  assert float(value) == pytest.approx(3.0 * np.sin(0.5), rel=1e-6)
  assert (tmp_path / "w").exists() != env_cache


def test_cache_compilations_skips_a_workdir_it_cannot_make(tmp_path):
  """A workdir that is a file, or lies under one: no cache ('' returned, nothing set), so the
  binary's own error is the only one."""
  from ease_jax import cli  # pylint: disable=g-import-not-at-top
  (tmp_path / "a_file").write_text("x")
  saved = jax.config.jax_compilation_cache_dir  # The conftest's; cleared only for the calls.
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    for workdir in (tmp_path / "a_file", tmp_path / "a_file" / "w"):
      assert cli.cache_compilations(workdir) == ""
      assert jax.config.jax_compilation_cache_dir is None
    assert cli.cache_compilations(tmp_path / "new" / "w") == str(tmp_path / "new" / "w" /
                                                                 "jax_cache")
  finally:
    jax.config.update("jax_compilation_cache_dir", saved)
  assert not (tmp_path / "new").exists()


def test_a_rerun_leaves_no_plot_of_the_previous_run(tmp_path):
  """A rerun whose methods make no GSD (e.g. only finetune) left the previous run's angles.png
  beside the new results."""
  from ease_jax.unlearning import pipeline  # pylint: disable=g-import-not-at-top
  (tmp_path / "angles.png").write_bytes(b"stale")
  (tmp_path / "results.json").write_text("{}")
  pipeline._plots(tmp_path, [{"method": "finetune", "test/mean_r1": 1.0}], {}, {}, None)
  assert not (tmp_path / "angles.png").exists()
  assert (tmp_path / "r1_bars.png").stat().st_size > 0
  assert (tmp_path / "results.json").read_text() == "{}"  # Only plots are cleared.


def test_score_distributions_leave_non_finite_scores_out(tmp_path):
  from ease_jax import plotting  # pylint: disable=g-import-not-at-top
  plotting.plot_distributions({"a": [0.1, np.nan, 0.3, np.inf], "b": [0.2, 0.25]},
                              tmp_path / "s.png")
  assert (tmp_path / "s.png").stat().st_size > 0
  plotting.plot_distributions({"a": [np.nan]}, tmp_path / "none.png")  # Nothing to draw.
  assert not (tmp_path / "none.png").exists()
