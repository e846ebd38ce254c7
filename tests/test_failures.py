"""Failing clearly: config and request validation before any work, one-line errors with exit code
2 from the binaries, damaged checkpoints, non-finite client updates."""
import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import flat_params as flat
from conftest import assert_same_run, make_tiny_setup, run_fedavg, tiny_config
from ease_jax import builders
from ease_jax import cli
from ease_jax import configs
from ease_jax import federated
from ease_jax import hf
from ease_jax import jsonio
from ease_jax import training
from ease_jax import validation
from ease_jax.federated import driver
from test_experiment import _small_emoji_run

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "experiments" / "configs"


def _binary(name, *args, cwd=ROOT, timeout=300):
  return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _one_line_error(proc, *needles):
  """Exit code 2, and stderr's only non-empty line is the error naming the problem."""
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  assert "Traceback" not in proc.stderr and "np.str_" not in lines[0]
  return lines[0]


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("key,value,needle", [
    ("fed.client_lr", -0.01, "config.fed.client_lr must be > 0, got -0.01"),
    ("fed.client_lr", 0.0, "config.fed.client_lr must be > 0, got 0"),
    ("fed.rounds", 0, "config.fed.rounds must be >= 1"),
    ("fed.backend", "pmap", "config.fed.backend must be one of"),
    ("data.test_fraction", 1.5, "config.data.test_fraction must be < 1"),
    ("data.test_fraction", 0.0, "config.data.test_fraction must be > 0"),
    ("unlearning.fraction", 0.0, "config.unlearning.fraction must be > 0"),
    ("gsd.energy", 1.2, "config.gsd.energy must be <= 1"),
    ("bke.lr", -1.0, "config.bke.lr must be > 0"),
    ("pga.stop_quantile", 2.0, "config.pga.stop_quantile must be <= 1"),
    ("lora.rank", 0, "config.lora.rank must be >= 1"),
    ("fed.client_weight_decay", -0.1, "config.fed.client_weight_decay must be >= 0"),
    ("fed.client_weight_decay", 0.1,
     "config.fed.client_weight_decay (0.1) needs fed.client_optimizer='adamw', got 'adam'"),
    ("audit.population", 2, "config.audit.population must be 0 (no audit) or >= 4, got 2"),
    ("audit.forget_confidence", 1.0, "config.audit.forget_confidence must be 0 (the point "
     "estimate) or in [0.5, 1), got 1.0"),
    ("audit.forget_confidence", 0.3, "config.audit.forget_confidence must be 0 (the point "
     "estimate) or in [0.5, 1), got 0.3"),
    ("data.max_length", 1, "config.data.max_length must be 0 (the model's context length) or "
     ">= 2"),
    ("data.splits", ("train", "tset"), "config.data.splits has unknown value(s) ['tset']"),
    ("data.partition", "by_client", "config.data.partition must be one of 'iid', 'by_label', "
     "'dirichlet', got 'by_client'"),
])
def test_validation_names_the_key_and_the_range(key, value, needle):
  config = configs.from_file(CONFIGS / "unlearn_emoji.py")
  block, leaf = key.split(".")
  config[block][leaf] = value
  with pytest.raises(validation.ConfigError, match="^" + re.escape(needle)):
    validation.validate(config)


def _seed_in_population(c):
  c.seed = c.audit.first_seed + 1


def _seed_in_population_of_a_block_without_first_seed(c):
  # The members run from the default first seed (100), which the check must read too.
  c.audit = ml_collections.ConfigDict({k: v for k, v in c.audit.items() if k != "first_seed"})
  c.seed = 101


def _partial_participation(c):
  c.fed.clients_per_round = 4


@pytest.mark.parametrize("break_it,needle,fix", [
    # The audited models must not be members of the populations that judge them.
    (_seed_in_population, "config.seeds.init=101, seeds.sampling=101, seeds.data=101 falls in "
     "the audit populations' seeds 100..103", {"audit.first_seed": 200}),
    (_seed_in_population_of_a_block_without_first_seed, "config.seeds.init=101, "
     "seeds.sampling=101, seeds.data=101 falls in the audit populations' seeds 100..103",
     {"audit.first_seed": 200}),
    # Members sampling with their own seeds cannot be stepped together.
    (_partial_participation, "config.audit.population=4 needs fed.clients_per_round=0 (every "
     "client every round), got 4 of 8", {"audit.population": 0}),
], ids=["run_seed_in_population", "default_first_seed", "partial_participation"])
def test_population_cross_checks_name_the_keys_and_clear_once_fixed(break_it, needle, fix):
  config = configs.from_file(CONFIGS / "unlearn_emoji.py")
  break_it(config)
  with pytest.raises(validation.ConfigError, match=re.escape(needle)):
    validation.validate(config)
  for key, value in fix.items():
    block, leaf = key.split(".")
    config[block][leaf] = value
  validation.validate(config)


@pytest.mark.parametrize("plant,key,value,needle", [
    ("client_backdoor", "num_pairs", 0, "num_pairs must be >= 1"),
    ("client_backdoor", "target_caption", " ", "target_caption is empty"),
    ("client_backdoor", "clients", (0, 9), r"clients \[0, 9\] must name clients in 0..7"),
    ("client_backdoor", "trigger.size", 0, "trigger size and cell must be >= 1"),
    ("client_backdoor", "trigger.pattern", "dots", "trigger pattern must be one of"),
    ("client_backdoor", "trigger.opacity", 1.5, r"trigger opacity must be a number in \(0, 1\]"),
    ("sample_backdoor", "trigger.opacity", 0.0, r"trigger opacity must be a number in \(0, 1\]"),
    ("client_backdoor", "kind", "poison", "kind must be one of"),
    ("concept", "style", "sepia", "style must be one of"),
    ("concept", "template", "inverted", "must contain '{caption}'"),
    ("concept", "clients", (8,), r"clients \[8\] must name clients in 0..7"),
    # Misspelt or foreign keys in a config file's plant block kept their defaults, silently.
    ("concept", "source_feild", "skin_tone", r"unknown key\(s\) \['source_feild'\]"),
    ("concept", "trigger", {"size": 4}, r"unknown key\(s\) \['trigger'\] for a concept plant"),
    ("client_backdoor", "trigger.sise", 4, r"trigger has unknown key\(s\) \['sise'\]"),
])
def test_bad_plants_are_config_errors(plant, key, value, needle):
  config = configs.from_file(CONFIGS / "unlearn_emoji.py")
  node = config.plants[plant]
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(validation.ConfigError, match=f"config.plants.{plant}.*" + needle):
    validation.validate(config)


def test_a_misspelt_audit_tone_is_a_config_error():
  """A tone that is not a skin tone reported no tone row, silently."""
  config = configs.from_file(CONFIGS / "unlearn_emoji.py")
  config.audit.tones = ("medium_dark",)
  with pytest.raises(validation.ConfigError, match=r"audit.tones has unknown value\(s\) \['medium_dark'\]"):
    validation.validate(config)
  config.audit.tones = ()
  validation.validate(config)


@pytest.mark.parametrize("kind,plant,needle", [
    ("sample", "nope", "config.unlearning.plant='nope' is not a plant of config.plants"),
    ("sample", "concept", "'concept' is a concept plant; a sample request forgets a backdoor"),
    ("concept", "client_backdoor", "is a backdoor plant; a concept request forgets a concept"),
    # A client request reads only its clients: the plant was silently ignored.
    ("client", "client_backdoor", "names a plant, but a client request forgets whole clients"),
])
def test_a_request_naming_a_wrong_plant_is_a_config_error(kind, plant, needle):
  config = configs.from_file(CONFIGS / "unlearn_emoji.py")
  config.unlearning.kind, config.unlearning.plant = kind, plant
  with pytest.raises(validation.ConfigError, match=re.escape(needle)):
    validation.validate(config)


def test_validation_reports_every_problem_at_once_and_accepts_the_shipped_configs():
  for path in sorted(CONFIGS.glob("*.py")):
    if path.stem in ("__init__",) or "flickr" in path.stem or "mscoco" in path.stem:
      continue  # Those need local checkpoints and data (their paths are checked below).
    validation.validate(configs.from_file(path))
  config = configs.from_file(CONFIGS / "unlearn_emoji.py")
  config.fed.client_lr = -1.0
  config.fed.batch_size = 0
  config.methods = ("ease", "eraser9000")
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config)
  msg = str(e.value)
  assert "fed.client_lr" in msg and "fed.batch_size" in msg and "eraser9000" in msg
  flickr = configs.from_file(CONFIGS / "flickr30k_b32.py")
  flickr.model.checkpoint = "/nonexistent/clip"
  flickr.data.json_path = "/nonexistent/dataset_flickr30k.json"
  with pytest.raises(validation.ConfigError, match="json_path=/nonexistent.*does not exist"):
    validation.validate(flickr)


def test_bad_learning_rate_is_one_line_exit_2_before_any_work(tmp_path):
  work = tmp_path / "w"
  proc = _binary("train.py", f"--config={CONFIGS / 'emoji_default.py'}",
                 "--config.fed.client_lr=-0.01", f"--workdir={work}")
  _one_line_error(proc, "config.fed.client_lr must be > 0, got -0.01")
  assert not work.exists()


def test_unknown_client_is_rejected_before_training(tmp_path):
  work = tmp_path / "w"
  proc = _binary("unlearn.py", f"--config={CONFIGS / 'unlearn_emoji.py'}",
                 "--config.unlearning.clients=(99,)", f"--workdir={work}")
  _one_line_error(proc, "Unknown client id(s) [99]", "clients 0..7")
  assert not (work / "train").exists()


def test_bad_request_found_after_loading_leaves_no_workdir(tmp_path):
  """The benchmark checks its requests after loading the backbone (a JAX computation, which
  makes the compilation cache's folder): bad input found then still leaves no workdir."""
  work = tmp_path / "w"
  proc = _binary("benchmark.py", f"--config={CONFIGS / 'benchmark_emoji.py'}",
                 "--config.benchmark.scenario_blocks.client.clients=(99,)", f"--workdir={work}")
  _one_line_error(proc, "Unknown client id(s) [99]")
  assert not work.exists()
  # A workdir that existed stays, with what the run made in it.
  work.mkdir()
  proc = _binary("benchmark.py", f"--config={CONFIGS / 'benchmark_emoji.py'}",
                 "--config.benchmark.scenario_blocks.client.clients=(99,)", f"--workdir={work}")
  _one_line_error(proc, "Unknown client id(s) [99]")
  assert work.is_dir()


def test_unknown_config_key_is_one_line(tmp_path):
  proc = _binary("train.py", f"--config={CONFIGS / 'emoji_default.py'}",
                 "--config.fed.rundos=3", f"--workdir={tmp_path / 'w'}")
  _one_line_error(proc, "rundos")
  assert not (tmp_path / "w").exists()


def test_a_typo_inside_a_config_file_is_refused(tmp_path):
  """ml_collections refuses unknown keys on the command line only; one set in a config file was
  carried along and ignored (a 'population' typo would silently turn the audit's size back to
  the default)."""
  config = configs.from_file(CONFIGS / "unlearn_emoji.py")
  config.unlock()
  config.fed.rundos, config.audit.populaton, config.unlearning.client = 1, 0, (3,)
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config)
  for needle in ("config.audit.populaton is not a known key (did you mean 'population'?)",
                 "config.fed.rundos is not a known key (did you mean 'rounds'?)",
                 "config.unlearning.client is not a known key (did you mean 'clients'?)"):
    assert needle in str(e.value)
  # Every shipped config passes.
  for path in sorted(CONFIGS.glob("[!_]*.py")):
    assert validation.unknown_keys(configs.from_file(path)) == [], path.name


@pytest.mark.parametrize("binary,config,needle", [
    ("benchmark.py", "unlearn_emoji.py", "the benchmark needs a config with 'benchmark'"),
    ("unlearn.py", "emoji_default.py", "unlearning needs a config with 'unlearning', 'methods'"),
    ("pretrain.py", "emoji_default.py", "pretraining needs a config with 'arch', 'pretrain'"),
])
def test_a_config_for_another_binary_is_one_line(tmp_path, binary, config, needle):
  work = tmp_path / "w"
  _one_line_error(_binary(binary, f"--config={CONFIGS / config}", f"--workdir={work}"), needle)
  assert not work.exists()


def test_missing_config_file_empty_workdir_and_ctrl_c_are_one_line(tmp_path):
  _one_line_error(_binary("train.py", f"--config={tmp_path / 'nope.py'}",
                          f"--workdir={tmp_path / 'w'}"), "--config: no config file", "nope.py")
  _one_line_error(_binary("train.py", f"--config={CONFIGS / 'emoji_default.py'}", "--workdir="),
                  "--workdir is empty")
  proc = subprocess.run([sys.executable, "-c", "from ease_jax import cli\n"
                         "def main(argv):\n  raise KeyboardInterrupt\n"
                         "cli.run(main)"], capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert proc.returncode == cli.INTERRUPTED_EXIT, proc.stderr[-2000:]
  assert proc.stderr.strip() == ("interrupted: what was checkpointed is kept; rerun the same "
                                 "command to resume.")


@pytest.mark.parametrize("body,needle", [
    ("def get_config(:\n  pass\n", "has a syntax error at line 1: invalid syntax"),
    ("def get_config():\n  x = 1\n  return x / 0\n",
     "raised ZeroDivisionError at line 3 (in get_config): division by zero"),
    # ml_collections re-raises these two as new exceptions with the traceback as their text.
    ("def get_config():\n  raise ValueError('bad lr')\n",
     "raised ValueError at line 2 (in get_config): bad lr"),
    ("def get_config():\n  return int([])\n", "raised TypeError at line 2 (in get_config)"),
    # The file exists; what its code opens does not.
    ("def get_config():\n  return open('/nonexistent/data.txt')\n",
     "failed to load: [Errno 2] No such file or directory: '/nonexistent/data.txt'"),
])
def test_a_config_file_that_fails_to_load_is_one_line(tmp_path, body, needle):
  """A config file's own error (a typo in its Python) named by file and line, not a traceback
  through absl and ml_collections; --verbose still shows the traceback."""
  path = tmp_path / "mine.py"
  path.write_text(body)
  args = (f"--config={path}", f"--workdir={tmp_path / 'w'}")
  _one_line_error(_binary("train.py", *args), needle, repr(str(path)))
  assert not (tmp_path / "w").exists()
  proc = _binary("train.py", *args, "--verbose")
  assert "Traceback" in proc.stderr and proc.returncode not in (0, cli.BAD_INPUT_EXIT)


def test_pretrain_refuses_outputs_it_would_destroy_before_training(tmp_path):
  """`--export_to` replaced whatever folder it named (a user's notes, or the workdir holding
  the backbone it had just trained); now such targets are refused before any training."""
  precious = tmp_path / "precious"
  precious.mkdir()
  (precious / "notes.txt").write_text("mine")
  args = (f"--config={CONFIGS / 'pretrain_emoji.py'}", "--config.pretrain.steps=2")
  work = tmp_path / "w"
  _one_line_error(_binary("pretrain.py", *args, f"--workdir={work}", f"--export_to={precious}"),
                  "does not hold an exported backbone")
  assert (precious / "notes.txt").read_text() == "mine"
  _one_line_error(_binary("pretrain.py", *args, f"--workdir={work}", f"--export_to={work}"),
                  "must lie outside --workdir")
  (work / "backbone").mkdir(parents=True)
  (work / "backbone" / "config.json").write_text("{}")
  _one_line_error(_binary("pretrain.py", *args, f"--workdir={work}"), "already holds a backbone")


def test_pretrain_refuses_settings_it_would_ignore(tmp_path):
  """Pretraining reads the emoji data, `arch`, `pretrain` and the split: `fed`, `lora` or
  `data.name` overrides validated and changed nothing."""
  from ease_jax import centralized  # pylint: disable=g-import-not-at-top
  config = configs.from_file(CONFIGS / "pretrain_emoji.py")
  assert centralized.ignored_settings(config) == []
  config.fed.rounds = 3
  config.data.name = "karpathy"
  config.data.public_fraction = 0.5  # Read by the split: allowed.
  with pytest.raises(validation.ConfigError,
                     match=r"would be ignored: data.name='karpathy', fed.rounds=3\.$"):
    centralized.pretrain_backbone(config, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_pretrain_writes_a_loadable_folder_with_its_summary(tmp_path):
  """A tiny pretraining end to end: the folder loads as a backbone, and its summary is in it
  (written before the folder was renamed into place, so never one without the other)."""
  from ease_jax import centralized  # pylint: disable=g-import-not-at-top
  config = configs.from_file(CONFIGS / "pretrain_emoji.py")
  config.arch.update(width=32, mlp_dim=64, heads=2, vision_layers=1, text_layers=1,
                     projection_dim=16)
  config.pretrain.update(steps=3, batch_size=16, warmup=1)
  summary = centralized.pretrain_backbone(config, tmp_path / "out")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
  assert json.loads((tmp_path / "out" / "pretraining.json").read_text()) == json.loads(
      jsonio.dumps(summary))
  clip_config, _ = hf.load_clip(tmp_path / "out")
  assert clip_config.vision.hidden_size == 32 and len(summary["loss_curve"]) >= 1
  config.model.checkpoint = str(tmp_path / "out")
  assert builders.load_backbone(config.model)[0] == clip_config


def test_verbose_shows_the_traceback(tmp_path):
  proc = _binary("train.py", f"--config={CONFIGS / 'emoji_default.py'}", "--verbose",
                 "--config.fed.client_lr=-0.01", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode != 0 and "Traceback" in proc.stderr
  assert "ConfigError" in proc.stderr


def test_unknown_concept_lists_plain_strings(tiny_setup):
  from ease_jax.unlearning import requests  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="body-parts") as e:
    requests.concept_request(tiny_setup, "subgroup", ["body-parts"])
  assert "np.str_" not in str(e.value) and "'concept0'" in str(e.value)


# --------------------------------------------------------------------------------- checkpoints


def _train_tiny(tmp_path, rounds=2):
  config = _small_emoji_run(tmp_path, "emoji_default.py", 0.85)
  config.fed.rounds = rounds
  config.checkpoint_every = 1
  return config


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory):
  """A finished 2-round run, and the same run uninterrupted for reference."""
  tmp = tmp_path_factory.mktemp("ckpt")
  config = _train_tiny(tmp)
  reference = training.train_and_summarize(config, tmp / "reference")
  return tmp, config, reference


@pytest.mark.parametrize("damage", ["meta", "state_metadata", "largest_data_file"])
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one(damaged_run, damage, caplog):
  tmp, config, reference = damaged_run
  work = tmp / f"work_{damage}"
  training.train_and_summarize(config, work)
  ckpts = work / "checkpoints"
  if damage == "meta":
    target = ckpts / "2" / "meta" / "metadata"
  elif damage == "state_metadata":
    target = ckpts / "2" / "state" / "_METADATA"
  else:
    target = max((p for p in (ckpts / "2" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  one = {p: p.read_bytes() for p in (ckpts / "1").rglob("*") if p.is_file()}
  target.write_bytes(target.read_bytes()[:max(1, target.stat().st_size // 2)])
  with caplog.at_level("WARNING"):
    again = training.train_and_summarize(config, work)
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
  assert "step 2" in warnings and "resuming from step 1" in warnings
  assert str(target) in warnings  # the damaged file itself, by its path
  # Round 2 was redone from checkpoint 1: the same numbers as the uninterrupted run.
  assert again["federated"] == pytest.approx(reference["federated"], abs=1e-6)
  rows = jsonio.read_jsonl(work / "metrics.jsonl")
  assert [r["round"] for r in rows] == [1, 2]
  assert all(p.read_bytes() == b for p, b in one.items())  # The intact checkpoint untouched.
  assert any((ckpts / "damaged").iterdir())  # The damaged one kept aside, not deleted.


def test_a_metrics_line_cut_by_a_kill_does_not_block_the_resume(damaged_run, caplog):
  """Killed while writing round 2's metrics line, before its checkpoint: the cut line is dropped,
  round 2 redone, and the numbers are the uninterrupted run's."""
  tmp, config, reference = damaged_run
  work = tmp / "work_cut_line"
  training.train_and_summarize(config, work)
  shutil.rmtree(work / "checkpoints" / "2")
  metrics = work / "metrics.jsonl"
  text = metrics.read_text()
  metrics.write_text(text[:text.rindex("\n", 0, len(text) - 1) + 1 + 14])  # row 2 cut
  with caplog.at_level("WARNING"):
    again = training.train_and_summarize(config, work)
  assert "cut off mid-write" in " ".join(r.getMessage() for r in caplog.records)
  assert again["federated"] == pytest.approx(reference["federated"], abs=1e-6)
  assert [r["round"] for r in jsonio.read_jsonl(metrics)] == [1, 2]


def test_json_lines_name_a_corrupt_line_and_append_after_a_cut_one(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_text('{"a": 1}\n{"a": 2, "b\n{"a": 3}\n')
  with pytest.raises(ValueError, match=r"rows.jsonl, line 2: not a JSON row"):
    jsonio.read_jsonl(path)
  path.write_text('{"a": 1}\n{"a": 2, "b')
  assert jsonio.read_jsonl(path) == [{"a": 1}]
  jsonio.append_jsonl(path, {"a": 3})  # the cut row goes; the new one gets a line of its own
  assert path.read_text() == '{"a": 1}\n{"a": 3}\n'
  # Bytes that are not UTF-8 (a damaged disk block) are named with the file, too.
  path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
  with pytest.raises(ValueError, match=r"rows.jsonl: not UTF-8"):
    jsonio.read_jsonl(path)
  (tmp_path / "one.json").write_bytes(b'{"a": "\xff"}')
  with pytest.raises(ValueError, match=r"one.json: not valid JSON"):
    jsonio.read_json(tmp_path / "one.json")


def test_json_written_is_strict_json_with_non_finite_numbers_as_null(tmp_path):
  row = {"loss": float("nan"), "auc": np.float32("inf"), "r1": jnp.asarray([1.5, jnp.nan]),
         "n": np.int64(3)}
  def strict(text):  # what jq or JavaScript accept: no NaN / Infinity tokens
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard token {c}"))
  jsonio.append_jsonl(tmp_path / "rows.jsonl", row)
  jsonio.write_json_atomic(tmp_path / "row.json", row)
  expected = {"loss": None, "auc": None, "r1": [1.5, None], "n": 3}
  assert strict((tmp_path / "rows.jsonl").read_text()) == expected
  assert strict((tmp_path / "row.json").read_text()) == expected


def test_every_checkpoint_damaged_stops_with_one_line(tmp_path):
  config = _train_tiny(tmp_path, rounds=1)
  overrides = [f"--config.{k}={v}" for k, v in (
      ("model.checkpoint", config.model.checkpoint), ("data.split", "random"),
      ("data.public_fraction", 0.85), ("fed.num_clients", 3), ("fed.rounds", 1),
      ("fed.batch_size", 8), ("fed.history_size", 2), ("lora.rank", 2), ("eval.every", 1),
      ("checkpoint_every", 1))]
  work = tmp_path / "w"
  args = (f"--config={CONFIGS / 'emoji_default.py'}", f"--workdir={work}", *overrides)
  first = _binary("train.py", *args)
  assert first.returncode == 0, first.stderr[-2000:]
  assert any((work / cli.COMPILATION_CACHE).iterdir())  # The binary caches its compilations.
  meta = work / "checkpoints" / "1" / "meta" / "metadata"
  meta.write_text(meta.read_text()[:5])

  def written():  # The compilation cache may gain entries; nothing else may change.
    return sorted(p.name for p in work.rglob("*") if cli.COMPILATION_CACHE not in p.parts)

  before = written()
  proc = _binary("train.py", *args)
  _one_line_error(proc, "damaged", "metadata")
  assert written() == before  # Nothing moved or deleted.


# ------------------------------------------------------------------------------- non-finite


@pytest.fixture(scope="module")
def nan_setup():
  """The tiny setup with client 1's first caption marked (all token ids 0): `_marker_loss` is NaN
  on any batch holding it, as a diverging client's would be."""
  config = tiny_config(rounds=2, history_size=2)
  setup = make_tiny_setup(config)
  bad_text = int(setup.client_texts()[1][0])
  ids = np.asarray(setup.data.input_ids).copy()
  ids[bad_text] = 0
  return config, dataclasses.replace(setup, data=setup.data.replace(input_ids=jnp.asarray(ids)))


def _marker_loss(setup):
  clip = federated.clip_objective(setup.model)

  def loss_fn(params, backbone, batch, context=None):
    marked = jnp.any(jnp.all(batch["input_ids"] == 0, axis=1) & batch["mask"])
    return clip(params, backbone, batch) * jnp.where(marked, jnp.nan, 1.0)

  return loss_fn


def test_nonfinite_client_is_dropped_and_the_model_averages_the_others(nan_setup):
  config, setup = nan_setup
  plan = builders.round_plan(setup, config)
  algo = builders.fedavg_algorithm(setup, config, plan, loss_fn=_marker_loss(setup))
  start = builders.init_trainable(setup, config)
  state, metrics = algo.apply(algo.init(start), jax.tree.map(jnp.asarray, plan.inputs(0)))
  assert int(metrics["clients_dropped"]) == 1 and not bool(metrics["round_failed"])
  assert bool(federated.all_finite(state.trainable))
  # Independently: each client's local update alone, the finite ones averaged by size.
  inputs = plan.inputs(0)
  steps = federated.local_steps(_marker_loss(setup), builders.make_optimizer("adam", 1e-2))
  deltas = [flat(jax.jit(steps)(start, setup.backbone, setup.data,
                                jax.tree.map(lambda x, c=c: jnp.asarray(x[c]),
                                             inputs.batches))[0])
            for c in range(len(inputs.client_ids))]
  finite = [np.all(np.isfinite(d)) for d in deltas]
  assert finite == [c != 1 for c in inputs.client_ids]
  w = np.where(finite, inputs.weights, 0.0)
  expected = flat(start) + np.average([np.nan_to_num(d) for d in deltas], axis=0, weights=w)
  assert_same_run(flat(state.trainable), expected)
  # The dropped update never reaches the history.
  rounds = np.asarray(state.history.rounds)
  assert rounds[1, 0] == -1 and (rounds[[0, 2, 3], 0] == 0).all()
  assert np.all(np.isfinite(np.asarray(state.history.updates)))


def test_nonfinite_fail_mode_stops_before_checkpointing(nan_setup, tmp_path):
  config, setup = nan_setup
  config = config.copy_and_resolve_references()
  config.fed.nonfinite = "fail"
  plan = builders.round_plan(setup, config)
  algo = builders.fedavg_algorithm(setup, config, plan, loss_fn=_marker_loss(setup))
  with pytest.raises(driver.RoundFailedError, match="round 1 failed"):
    run_fedavg(setup, config, tmp_path, plan=plan, algorithm=algo)
  assert not (tmp_path / "checkpoints" / "1").exists()
  assert jsonio.read_jsonl(tmp_path / "metrics.jsonl") == []


def test_every_client_nonfinite_fails_the_round_in_drop_mode_too(nan_setup):
  config, setup = nan_setup
  plan = builders.round_plan(setup, config)
  nan_everywhere = lambda p, b, batch, c=None: jnp.nan * federated.clip_objective(
      setup.model)(p, b, batch)
  algo = builders.fedavg_algorithm(setup, config, plan, loss_fn=nan_everywhere)
  start = builders.init_trainable(setup, config)
  state, metrics = algo.apply(algo.init(start), jax.tree.map(jnp.asarray, plan.inputs(0)))
  assert bool(metrics["round_failed"]) and int(metrics["clients_dropped"]) == 4
  np.testing.assert_array_equal(flat(state.trainable), flat(start))  # Left where it was,
  assert int(state.round) == 0                                          # its round counter too.
  with pytest.raises(driver.RoundFailedError, match="learning rate"):
    run_fedavg(setup, config, plan=plan, algorithm=algo)


def test_driver_refuses_to_checkpoint_a_nonfinite_state(tmp_path):
  """The driver's own guard, for an algorithm that does not flag its round: a state with one NaN
  entry (checked on the host, also when split over devices) stops the run before the checkpoint
  of that round; the rounds before it stay checkpointed."""
  def apply(state, inputs):
    x = state["x"] + 1.0
    return dict(x=jnp.where(inputs >= 2, x.at[3].set(jnp.nan), x)), {}

  algo = federated.FederatedAlgorithm(lambda start: start, apply)

  class Plan:
    inputs = staticmethod(lambda r: jnp.asarray(r))

  with pytest.raises(driver.RoundFailedError, match="state after round 3 is not finite"):
    driver.run(algo, Plan(), dict(x=jnp.zeros(5)), 4, tmp_path)
  assert (tmp_path / "checkpoints" / "2").exists()
  assert not (tmp_path / "checkpoints" / "3").exists()
  # No line for the failed round: metrics.jsonl ends at the last checkpoint.
  assert [r["round"] for r in jsonio.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_an_emptied_metrics_file_keeps_the_measured_timing(tmp_path, caplog):
  """The rounds restored from a checkpoint are not rerun, so their times live only in
  metrics.jsonl: emptied, the timing measured when they ran is kept (with a warning), not
  replaced by 0 s, which would make every speed-up against retrain meaningless."""
  from ease_jax.unlearning import retrain as retrain_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(rounds=2)
  setup = make_tiny_setup(config)
  _, measured = retrain_lib.train(setup, config, tmp_path)
  assert measured["rounds"] == 2 and measured["wall_time_s"] > 0
  (tmp_path / "train" / "metrics.jsonl").write_text("")
  _, again = retrain_lib.train(setup, config, tmp_path)
  assert again == measured
  assert jsonio.read_json(tmp_path / "train" / "timing.json") == measured
  assert "holds 0 of the run's 2 rounds" in caplog.text
  # A damaged identity file is named, not a bare JSON error.
  (tmp_path / "train" / "request.json").write_text('{\n "ki')
  with pytest.raises(ValueError, match=r"request.json: not valid JSON"):
    retrain_lib.train(setup, config, tmp_path)
