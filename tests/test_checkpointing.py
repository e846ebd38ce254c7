"""Damaged checkpoints: reported with the file that failed, the newest intact one is used."""
import json
import logging
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from ease_jax import checkpointing
from ease_jax import federated

FP = {"fed.rounds": 2, "fed.client_lr": 0.01}


def make_state(seed: int):
  """A run-like state: a flax ServerState (LoRA-ish params, optimizer trace, round) + history."""
  rng = np.random.default_rng(seed)
  trainable = {"a": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
               "b": {"c": jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16)}}
  state = federated.init_server(trainable, optax.sgd(1.0, momentum=0.9))
  state = state.replace(round=jnp.asarray(seed, jnp.int32))
  # Random floats do not compress: the largest data file holds them nearly verbatim.
  return dict(state=state, history_updates=rng.normal(size=(4, 3, 3000)).astype(np.float32),
              history_rounds=np.full((4, 3), seed, np.int32))


def assert_tree_equal(got, want):
  got_leaves, got_def = jax.tree.flatten(got)
  want_leaves, want_def = jax.tree.flatten(want)
  assert got_def == want_def
  for g, w in zip(got_leaves, want_leaves):
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype and g.shape == w.shape
    assert np.array_equal(g.reshape(-1).view(np.uint8), w.reshape(-1).view(np.uint8))


def snapshot(path: pathlib.Path) -> dict[str, bytes]:
  return {p.relative_to(path).as_posix(): p.read_bytes()
          for p in sorted(path.rglob("*")) if p.is_file()}


def largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


@pytest.fixture
def two_steps(tmp_path):
  directory = tmp_path / "checkpoints"
  ck = checkpointing.Checkpointer(directory, FP)
  ck.save(1, make_state(1))
  ck.save(2, make_state(2))
  ck.close()
  return directory


def _truncate(path: pathlib.Path, size=None):
  os.truncate(path, path.stat().st_size // 2 if size is None else size)


def _flip_byte(path: pathlib.Path):
  data = bytearray(path.read_bytes())
  data[len(data) * 2 // 3] ^= 0x10
  path.write_bytes(bytes(data))


def _drop_a_sha256(step_dir: pathlib.Path):
  meta_file = step_dir / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["integrity"]["leaves"]["state/round"]["sha256"]
  meta_file.write_text(json.dumps(meta))


DAMAGES = {
    "truncated_meta": (lambda d: _truncate(d / "meta" / "metadata"),
                       lambda d: d / "meta" / "metadata", "not valid JSON"),
    "truncated_state_metadata": (lambda d: _truncate(d / "state" / "_METADATA"),
                                 lambda d: d / "state" / "_METADATA", "not valid JSON"),
    "truncated_largest_data_file": (lambda d: _truncate(largest_data_file(d)),
                                    largest_data_file, "truncated"),
    "deleted_data_file": (lambda d: largest_data_file(d).unlink(), None, "missing"),
    "flipped_byte_in_data_file": (lambda d: _flip_byte(largest_data_file(d)), largest_data_file,
                                  "not matching the sha256 recorded at save"),
    "integrity_record_without_a_sha256": (_drop_a_sha256, lambda d: d / "meta" / "metadata",
                                          "unreadable integrity record"),
}


def test_layout_written_by_orbax(two_steps):
  """What the damage tests rely on: orbax 0.12.8's files for one step."""
  files = set(snapshot(two_steps / "2"))
  assert {"_CHECKPOINT_METADATA", "meta/metadata", "state/_METADATA", "state/manifest.ocdbt",
          checkpointing.FILES_MANIFEST} <= files
  assert any(f.startswith("state/ocdbt.process_0/d/") for f in files)
  meta = json.loads((two_steps / "2" / "meta" / "metadata").read_text())
  assert meta["step"] == 2 and meta["fingerprint"] == FP
  assert set(meta["integrity"]["leaves"]) == {
      "history_rounds", "history_updates", "state/opt_state/0/trace/a",
      "state/opt_state/0/trace/b/c", "state/round", "state/trainable/a", "state/trainable/b/c"}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_falls_back_to_intact_step(two_steps, damage, caplog):
  corrupt, blamed, reason = DAMAGES[damage]
  step2 = two_steps / "2"
  blamed_file = blamed(step2) if blamed else largest_data_file(step2)
  corrupt(step2)
  damaged_files = snapshot(step2)
  step1_before = snapshot(two_steps / "1")

  ck = checkpointing.Checkpointer(two_steps, FP)
  with caplog.at_level(logging.WARNING):
    restored = ck.restore_latest(make_state(0))
  assert restored.step == 1 and restored.verified
  assert_tree_equal(restored.state, make_state(1))
  assert restored.meta["step"] == 1
  (skipped,) = restored.skipped
  assert skipped.step == 2
  assert skipped.file == str(blamed_file), skipped
  assert reason in skipped.reason
  # Moved aside, intact: the damaged folder as it was, step 1 untouched.
  moved = pathlib.Path(skipped.moved_to)
  assert moved.parent == two_steps / checkpointing.DAMAGED_DIR and not step2.exists()
  assert snapshot(moved) == damaged_files
  assert snapshot(two_steps / "1") == step1_before
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert all(s in warnings[0] for s in ("step 2", str(blamed_file), str(moved),
                                        "resuming from step 1")), warnings[0]

  # The damaged step blocks nothing: orbax no longer sees it, step 2 is saved afresh.
  assert ck.latest_step() == 1
  ck.save(2, make_state(2))
  again = ck.restore_latest(make_state(0))
  assert again.step == 2 and not again.skipped
  assert_tree_equal(again.state, make_state(2))
  # max_to_keep=2 cleans steps up but never the damaged folder.
  ck.save(3, make_state(3))
  assert ck.all_steps() == [2, 3]
  assert snapshot(moved) == damaged_files
  ck.close()
  reopened = checkpointing.Checkpointer(two_steps, FP)
  assert reopened.all_steps() == [2, 3]
  assert_tree_equal(reopened.restore_latest(make_state(0)).state, make_state(3))
  reopened.close()


def noisy_state(seed: int):
  """Many arrays: when one read fails, orbax leaves the others in flight (the noise)."""
  rng = np.random.default_rng(seed)
  return {**make_state(seed),
          "more": {f"h{i:02d}": rng.normal(size=(4, 3, 3000)).astype(np.float32)
                   for i in range(16)}}


def test_damaged_restore_makes_no_noise_on_stderr(tmp_path, capfd, caplog, monkeypatch):
  """A failed orbax restore closes its event loop while tensorstore still has reads in flight;
  each then reports 'RuntimeError: Event loop is closed' through sys.unraisablehook (a bare
  traceback on stderr; under pytest a warning instead), so a recording hook stands in for the
  interpreter's."""
  directory = tmp_path / "checkpoints"
  ck = checkpointing.Checkpointer(directory, FP)
  ck.save(1, noisy_state(1))
  ck.save(2, noisy_state(2))
  _truncate(largest_data_file(directory / "2"))
  unraisable = []
  monkeypatch.setattr("sys.unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))
  capfd.readouterr()
  orphans = checkpointing._ORPHANS.count  # pylint: disable=protected-access
  for _ in range(5):  # The noise depends on timing: provoke it (restore moves nothing).
    with pytest.raises(checkpointing.CheckpointCorruptError, match="truncated"):
      ck.restore(noisy_state(0), 2)
    if checkpointing._ORPHANS.count > orphans:  # pylint: disable=protected-access
      break
  assert checkpointing._ORPHANS.count > orphans  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    restored = ck.restore_latest(noisy_state(0))
  time.sleep(0.5)  # Stray callbacks would have fired by now.
  err = capfd.readouterr().err
  assert restored.step == 1
  assert_tree_equal(restored.state, noisy_state(1))
  assert "Traceback" not in err and "Event loop is closed" not in err, err
  assert not unraisable, unraisable
  assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.WARNING]
  # The manager still works after the failed reads.
  ck.save(2, noisy_state(2))
  assert_tree_equal(ck.restore_latest(noisy_state(0)).state, noisy_state(2))
  ck.close()
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Event loop is closed" not in err, err
  assert not unraisable, unraisable


def test_every_checkpoint_damaged_raises_and_keeps_everything(two_steps):
  _truncate(two_steps / "2" / "meta" / "metadata")
  data_file = largest_data_file(two_steps / "1")
  _truncate(data_file)
  before = snapshot(two_steps)
  ck = checkpointing.Checkpointer(two_steps, FP)
  with pytest.raises(checkpointing.CheckpointCorruptError) as info:
    ck.restore_latest(make_state(0))
  message = str(info.value)
  assert "\n" not in message
  assert "step 2: " + str(two_steps / "2" / "meta" / "metadata") in message
  assert "step 1: " + str(data_file) in message
  assert "Nothing was moved or deleted" in message
  assert [d.step for d in info.value.damaged] == [2, 1]
  assert snapshot(two_steps) == before
  assert ck.all_steps() == [1, 2]
  ck.close()


def test_fingerprint_mismatch_is_not_a_fallback(two_steps):
  _truncate(largest_data_file(two_steps / "2"))
  before = snapshot(two_steps)
  ck = checkpointing.Checkpointer(two_steps, {**FP, "fed.client_lr": 0.5})
  with pytest.raises(checkpointing.CheckpointMismatchError, match="fed.client_lr"):
    ck.restore_latest(make_state(0))
  with pytest.raises(checkpointing.CheckpointMismatchError, match="fed.client_lr"):
    ck.restore(make_state(0), 1)
  assert snapshot(two_steps) == before
  ck.close()


def test_another_state_layout_is_a_mismatch_not_damage(two_steps):
  """Orbax itself would restore the saved shape whatever `like` says."""
  before = snapshot(two_steps)
  like = make_state(0)
  like["history_updates"] = np.zeros((4, 3, 100), np.float32)
  ck = checkpointing.Checkpointer(two_steps, FP)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"history_updates: checkpoint=float32\[4, 3, 3000\] vs "
                           r"now=float32\[4, 3, 100\]"):
    ck.restore_latest(like)
  like = make_state(0)
  like["history_rounds"] = like["history_rounds"].astype(np.int64)
  with pytest.raises(checkpointing.CheckpointMismatchError, match="history_rounds"):
    ck.restore(like, 2)
  assert snapshot(two_steps) == before
  ck.close()


def test_single_step_restore_and_read_meta_name_the_file(two_steps):
  meta_file = two_steps / "2" / "meta" / "metadata"
  _truncate(meta_file)
  before = snapshot(two_steps)
  ck = checkpointing.Checkpointer(two_steps, FP)
  with pytest.raises(checkpointing.CheckpointCorruptError, match=str(meta_file)):
    ck.restore(make_state(0), 2)
  with pytest.raises(checkpointing.CheckpointCorruptError, match=str(meta_file)):
    ck.read_meta()
  state, meta = ck.restore(make_state(0), 1)
  assert_tree_equal(state, make_state(1))
  assert meta["step"] == 1
  assert snapshot(two_steps) == before
  ck.close()


def test_a_file_where_the_checkpoint_folder_should_be_is_an_error_before_any_work(tmp_path):
  (tmp_path / "checkpoints").write_text("not a folder")
  with pytest.raises(NotADirectoryError, match=r"checkpoints' is a file"):
    checkpointing.Checkpointer(tmp_path / "checkpoints", FP)
  (tmp_path / "ok").mkdir()
  (tmp_path / "ok" / checkpointing.DAMAGED_DIR).write_text("")
  with pytest.raises(NotADirectoryError, match=checkpointing.DAMAGED_DIR):
    checkpointing.Checkpointer(tmp_path / "ok", FP)


def test_restore_latest_on_empty_directory_is_none(tmp_path):
  ck = checkpointing.Checkpointer(tmp_path / "checkpoints", FP)
  assert ck.latest_step() is None
  assert ck.restore_latest(make_state(0)) is None
  ck.save(1, make_state(1))
  restored = ck.restore_latest(make_state(0))
  assert restored.step == 1 and restored.skipped == ()
  assert_tree_equal(restored.state, make_state(1))
  ck.close()


def test_checkpoint_without_checksums_restores_unverified(tmp_path):
  """As written before integrity records: orbax items only, meta = fingerprint + step."""
  directory = tmp_path / "checkpoints"
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True),
                                  item_names=("state", "meta"))
  state = jax.tree.map(np.asarray, make_state(1))
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave({"fingerprint": FP, "step": 1})))
  manager.wait_until_finished()
  manager.close()
  ck = checkpointing.Checkpointer(directory, FP)
  restored = ck.restore_latest(make_state(0))
  assert restored.step == 1 and not restored.verified
  assert_tree_equal(restored.state, make_state(1))
  like = make_state(0)
  like["history_updates"] = np.zeros((4, 3, 100), np.float32)
  with pytest.raises(checkpointing.CheckpointMismatchError, match="history_updates"):
    ck.restore_latest(like)
  ck.close()


def test_save_refuses_a_step_orbax_would_skip(two_steps):
  ck = checkpointing.Checkpointer(two_steps, FP)
  with pytest.raises(ValueError, match="not written"):
    ck.save(2, make_state(5))
  assert_tree_equal(ck.restore_latest(make_state(0)).state, make_state(2))
  ck.close()


def test_newest_step_with_another_layout_is_skipped_when_an_older_one_matches(tmp_path):
  directory = tmp_path / "checkpoints"
  ck = checkpointing.Checkpointer(directory, FP)
  ck.save(1, make_state(1))
  odd = make_state(2)
  odd["history_updates"] = odd["history_updates"][:, :, :10]
  ck.save(2, odd)
  step1 = snapshot(directory / "1")
  restored = ck.restore_latest(make_state(0))
  assert restored.step == 1
  assert_tree_equal(restored.state, make_state(1))
  (skipped,) = restored.skipped
  assert skipped.step == 2 and "state layout differs" in skipped.reason
  assert "history_updates: checkpoint=float32[4, 3, 10] vs now=float32[4, 3, 3000]" in skipped.reason
  assert pathlib.Path(skipped.moved_to).is_dir()
  assert snapshot(directory / "1") == step1
  ck.close()


def test_a_save_cut_by_a_kill_leaves_no_folder_behind(two_steps):
  """Orbax writes a step into `<step>.orbax-checkpoint-tmp-<time>` and renames it when done; a
  kill in between leaves that folder. The next run's checkpointer removes it, keeps the intact
  steps and resumes from the newest."""
  leftover = two_steps / "3.orbax-checkpoint-tmp-1700000000000000"
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "partial").write_bytes(b"\0" * 1000)
  ck = checkpointing.Checkpointer(two_steps, FP)
  restored = ck.restore_latest(make_state(0))
  ck.close()
  assert restored.step == 2
  assert_tree_equal(restored.state, make_state(2))
  assert not leftover.exists()
  assert sorted(p.name for p in two_steps.iterdir() if not p.name.startswith(".")) == ["1", "2"]
