"""benchmarks/accelerator.py: its budget guard, the CI smoke run and the B/32 geometry.

The guard is tested with a fake clock (no JAX work) and once through the real command line with
a budget too small for most measurements; the smoke run is the issue's CI command in a fresh
process (with a timeout), as it runs on the GPU machine.
"""
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import accelerator as acc  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

SKIP_NOTE = re.compile(r"^skipped: estimated \d+(\.\d+)? s > \d+(\.\d+)? s left$")


class FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def _fake(name, share, estimate, costs, clock):
  """A measurement whose rows each take `costs[i]` fake seconds, guarded like the real ones."""

  def plan(ctx):
    del ctx
    return [acc.Row(name, f"row{i}") for i in range(len(costs))]

  def run(ctx, rows, budget):
    del ctx
    for row, cost in zip(rows, costs):
      if not budget.fits(cost):
        row.skip(budget.note(cost))
        continue
      clock.now += cost
      row.done(seconds=cost)

  return acc.Measurement(name, share, plan, lambda ctx: estimate, run)


def _ctx(tmp_path, *argv):
  args = acc.parse_args(["--out", str(tmp_path), *argv])
  return acc.Context(args=args, out=tmp_path)


def test_budget_child_and_note():
  clock = FakeClock()
  budget = acc.Budget(100, clock)
  clock.now = 30
  assert budget.left() == 70
  assert budget.child(20).left() == 20 and budget.child(500).left() == 70
  assert budget.child(-5).left() == 0
  assert budget.fits(70) and not budget.fits(70.5)
  assert budget.note(95) == "skipped: estimated 95 s > 70 s left"
  assert budget.child(3).note(4.25) == "skipped: estimated 4.2 s > 3.0 s left"
  assert budget.child(0.5).note(0.625) == "skipped: estimated 0.62 s > 0.50 s left"


def test_timed_stops_repeats_at_the_cap():
  clock = FakeClock()

  def call():  # Every call takes one fake second.
    clock.now += 1
    return 7

  first, times, out, note = acc.timed(call, acc.Budget(3.5, clock), repeats=5)
  assert (first, times, out, note) == (1, [1, 1], 7, "2 of 5 repeats (time cap)")
  first, times, _, note = acc.timed(call, acc.Budget(0.5, clock), repeats=5)
  assert times == [first] and note == "warm-up call only (time cap)"
  _, times, _, note = acc.timed(call, acc.Budget(0.5, clock), repeats=5, warmup_counts=False)
  assert not times and note.startswith("skipped: the first call took 1.0 s")
  _, times, _, note = acc.timed(call, acc.Budget(100, clock), repeats=3)
  assert times == [1, 1, 1] and not note


def test_guard_skips_rows_and_measurements_that_do_not_fit(tmp_path):
  clock = FakeClock()
  ms = [_fake("first", 0.5, 1, [12, 12, 12], clock),   # cap 60 - 30 reserved: 2 rows fit
        _fake("second", 0.25, 40, [1], clock),          # cap 36 - 15 reserved < 40 estimated
        _fake("third", 0.25, 1, [5, 5], clock),         # what is left: both rows fit
        _fake("broken", 0.0, 0, [1], clock)]

  def broken(ctx, rows, budget):
    raise RuntimeError("device lost\nsecond line")

  ms[3] = acc.Measurement("broken", 0.0, ms[3].plan, ms[3].estimate, broken)
  ctx = _ctx(tmp_path)
  acc.run_measurements(ctx, ms, acc.Budget(60, clock))
  status = {r.label: (r.status, r.notes) for r in ctx.rows}
  assert status["first row0"] == status["first row1"] == ("done", [])
  assert status["first row2"] == ("skipped", ["skipped: estimated 12 s > 6.0 s left"])
  assert status["second row0"] == ("skipped", ["skipped: estimated 40 s > 21 s left"])
  assert status["third row0"][0] == status["third row1"][0] == "done"
  assert status["broken row0"] == ("error", ["error: broken: RuntimeError: device lost"])
  assert clock.now == 34
  # The written files: one table line and one JSON row per planned row; only the error fails.
  assert acc.check(ctx) == ["broken row0: error error: broken: RuntimeError: device lost"]
  data = json.loads((tmp_path / "accelerator.json").read_text())
  assert [r["status"] for r in data["rows"]] == [r.status for r in ctx.rows]
  assert data["skipped"][0] == "first row2: skipped: estimated 12 s > 6.0 s left"
  table = [l for l in (tmp_path / "accelerator.md").read_text().splitlines() if l.startswith("|")]
  assert len(table) == 2 + len(ctx.rows)


def test_check_rejects_bad_numbers_and_missing_rows(tmp_path):
  ctx = _ctx(tmp_path)
  ctx.rows = [acc.Row("peak", "a", required=("seconds", "tflops")), acc.Row("peak", "b"),
              acc.Row("peak", "c")]
  ctx.rows[0].done(seconds=1.0, tflops=float("nan"))
  ctx.rows[1].status = "skipped"  # ... without a note
  acc.write_outputs(ctx)
  problems = acc.check(ctx)
  assert problems == ["peak a: tflops = nan", "peak b: skipped without a note",
                      "peak c: planned"]


def test_small_budget_run_skips_with_notes_and_writes_valid_outputs(tmp_path):
  """The real command line, in this process: in 10 s the matmul peaks may run, the rest cannot
  (throughput is skipped as a whole, GSD row by row) and the outputs are still complete."""
  rc = acc.main(["--size", "tiny", "--quick", "--budget_s", "10", "--out", str(tmp_path)])
  assert rc == 0
  data = json.loads((tmp_path / "accelerator.json").read_text())
  assert data["check"] == {"ok": True, "problems": []}
  notes = [n for r in data["rows"] if r["status"] == "skipped" for n in r["notes"]]
  for row in data["rows"]:
    if row["measurement"] in ("throughput:tiny", "gsd"):
      assert row["status"] == "skipped" and SKIP_NOTE.match(row["notes"][0]), row
  assert sum(bool(SKIP_NOTE.match(n)) for n in notes) >= 5, notes


def test_quick_run_on_cpu(tmp_path):
  """The CI smoke run (`--size tiny --quick`), as a fresh process."""
  cmd = [sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--size", "tiny",
         "--quick", "--out", str(tmp_path)]
  try:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"quick run did not finish in 240 s:\n{e.stdout}\n{e.stderr}")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "check: ok" in proc.stdout
  data = json.loads((tmp_path / "accelerator.json").read_text())
  rows = {(r["measurement"], r["engine"]): r for r in data["rows"]}
  assert {m for m, _ in rows} == {"peak", "throughput:tiny", "gsd", "population"}
  for engine in ("vmap", "chunked", "loop", "torch"):
    row = rows[("throughput:tiny", engine)]
    assert row["status"] == "done" and row["values"]["pairs_s"] > 0, row
    assert row["derived"]["x_loop"] > 0 and row["derived"]["mfu_fp32"] > 0
  assert rows[("gsd", "batched_gsd (gram)")]["status"] == "done"
  for engine in ("one after another (2 runs)", "batched (2 runs)"):
    row = rows[("population", engine)]
    assert row["status"] == "done" and row["values"]["pairs_s"] > 0, row
  assert "the time of one after another" in " ".join(
      rows[("population", "batched (2 runs)")]["notes"])
  assert data["device"] and data["jax"] and data["peak_tflops"]["bf16"] > 0
  xla, ours = data["xla_flops_per_pair"]["tiny/batch4"], data["flops_per_pair"]["tiny/batch4"]
  assert abs(ours / xla - 1) < 0.05
  md = (tmp_path / "accelerator.md").read_text()
  assert sum(l.startswith("| ") for l in md.splitlines()) == len(data["rows"]) + 1


def test_b32_geometry_runs_a_round(tmp_path):
  """ViT-B/32 widths, 224 px and 77 tokens with one layer per tower: a vmapped round runs, with
  one delta per client and a finite loss (the run checks both), and the FLOP count matches."""
  rc = acc.main(["--size", "b32", "--b32_layers", "1", "--quick", "--only", "throughput",
                 "--engines", "vmap", "--out", str(tmp_path)])
  data = json.loads((tmp_path / "accelerator.json").read_text())
  assert rc == 0, data["check"]
  (row,) = data["rows"]
  assert row["status"] == "done" and row["size"] == "b32" and row["k"] == 4
  xla, ours = data["xla_flops_per_pair"]["b32/batch4"], data["flops_per_pair"]["b32/batch4"]
  assert abs(ours / xla - 1) < 0.02


def test_a_generated_benchmarks_section_keeps_the_text_written_by_hand(tmp_path):
  """Rerunning a benchmark's command rewrites only its generated text: notes written around the
  table survive, a section from before the marks keeps all of its old text, and the file is
  replaced whole (no temporary file left)."""
  import common  # pylint: disable=g-import-not-at-top
  path = tmp_path / "BENCHMARKS.md"
  path.write_text("# Benchmarks\n\n## Old\n\nold table\n\nold notes\n\n## Other\n\nother text\n")
  common.write_section("New", "table 1", path)
  text = path.read_text()
  assert text.endswith(f"## New\n\n{common.GENERATED_START}\ntable 1\n{common.GENERATED_END}\n")
  path.write_text(text + "\nhand-written notes\n")
  common.write_section("New", "table 2", path)
  text = path.read_text()
  assert "table 2" in text and "table 1" not in text and "hand-written notes" in text
  common.write_section("Old", "new table", path)
  text = path.read_text()
  old = text[text.index("## Old"):text.index("## Other")]
  assert old.index("new table") < old.index(common.KEPT_NOTE) < old.index("old table") < old.index(
      "old notes")
  assert "## Other\n\nother text\n" in text and text.count("## ") == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md"]
