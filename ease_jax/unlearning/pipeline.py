"""The unlearning experiment: one cell (train, request, retrain, methods), its table and plots.

`run_unlearning(config, workdir)` is what `experiments/unlearn.py` runs:

  workdir/train/     FedAvg before unlearning (resumable, reused)
  workdir/retrain/   the retrain reference (resumable, reused; `timing.json` keeps its wall time)
  results.json, results.csv, r1_bars.png, reanchoring.png, drift.png, angles.png
"""
from __future__ import annotations

import csv
import pathlib
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from ease_jax import audit
from ease_jax import jsonio
from ease_jax import validation
from ease_jax.unlearning import cell as cell_lib
from ease_jax.unlearning import methods as methods_lib
from ease_jax.unlearning import population as population_lib

SPLITS = cell_lib.SPLITS
KEYS = ("i2t_r1", "t2i_r1", "mean_r1")


AUDIT_KEYS = ("forget_quality", "forget_quality_point", "forget_quality_iid", "forget_quality_min",
              "lira_auc", "lira_tpr@0.01", "lira_tpr@0.001", "model_level_t", "model_level_p",
              "model_level_strata_p", "mia_auc")


def table_row(row: Mapping[str, Any], reference: Mapping[str, Any] | None) -> dict[str, Any]:
  """One displayed results row: R@1 per split and its gap to the reference (2 decimals), the
  planted knowledge (attack success rates, tone accuracy, and gaps; 1 decimal), the audit
  (forget quality p-value, LiRA AUC and TPR at 1% / 0.1% FPR), time and speed-up."""
  full = cell_lib.with_gaps(row, reference)
  out: dict[str, Any] = dict(method=row["method"])
  for split in SPLITS:
    for k in KEYS:
      key = f"{split}/{k}"
      if full.get(key) is None:
        continue
      out[key] = round(full[key], 2)
      if f"{key}_gap" in full:
        out[f"{key}_gap"] = round(full[f"{key}_gap"], 2)
  for key, value in full.items():
    if key.startswith(cell_lib.KNOWLEDGE_PREFIXES) and key.endswith(
        cell_lib.DIRECTIONS + tuple(f"{d}_gap" for d in cell_lib.DIRECTIONS)):
      out[key] = round(value, 1)
  # Each stratum's own model-level p after the audit's columns: which plant, or which leaving
  # client, a flagged model kept (`UnlearningRequest.audit_strata`).
  strata = [k for k in full if k.startswith(population_lib.STRATUM_PREFIX)]
  for key in (*AUDIT_KEYS, *strata):
    if full.get(key) is not None:
      out[key] = float(f"{full[key]:.3g}")
  wall = full.get("wall_time_s")
  out["wall_time_s"] = None if wall is None else round(wall, 3)
  speedup = full.get("speedup_vs_retrain")
  out["speedup_vs_retrain"] = None if speedup is None else round(speedup, 1)
  return out


def format_table(rows: Sequence[dict[str, Any]], knowledge: Sequence[str] = ()) -> str:
  """The printed table: forget / retain / test R@1 with gaps, the request's forgotten knowledge
  (`knowledge`: row keys), the audit, time; columns no row has are left out."""
  cols = ["method", "forget/i2t_r1", "forget/t2i_r1", "forget/mean_r1_gap", *knowledge,
          "retain/mean_r1", "retain/mean_r1_gap", "test/mean_r1", "test/mean_r1_gap",
          "forget_quality", "lira_auc", "lira_tpr@0.01", "wall_time_s", "speedup_vs_retrain"]
  cols = [c for c in cols if c == "method" or any(c in r for r in rows)]
  width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
  line = lambda r: "  ".join(str(r.get(c, "")).rjust(width[c]) for c in cols)
  return "\n".join([line({c: c for c in cols})] + [line(r) for r in rows])


PLOTS = ("r1_bars.png", "knowledge_bars.png", "scores.png", "reanchoring.png", "drift.png",
         "angles.png")


def _plots(workdir: pathlib.Path, rows: list[dict[str, Any]], curves: dict[str, list[dict]],
           reference: dict[str, float], gsd_diag: dict[str, Any] | None,
           knowledge: Sequence[str] = (), scores: Mapping[str, Any] | None = None) -> None:
  from ease_jax import plotting  # pylint: disable=g-import-not-at-top
  # A rerun into the same workdir writes only the plots its methods produce: the previous run's
  # others would sit beside the new results.json as if they were its.
  for name in PLOTS:
    (workdir / name).unlink(missing_ok=True)
  bars = {r["method"]: {f"{s} R@1": r[f"{s}/mean_r1"] for s in SPLITS if f"{s}/mean_r1" in r}
          for r in rows}
  plotting.plot_bars(bars, workdir / "r1_bars.png", title="Mean R@1 after unlearning")
  if knowledge:
    plotting.plot_bars({r["method"]: {k: r[k] for k in knowledge if k in r} for r in rows},
                       workdir / "knowledge_bars.png", ylabel="%",
                       title="Forgotten knowledge: attack success / tone accuracy")
  if scores:
    plotting.plot_distributions(scores, workdir / "scores.png", xlabel="per-example score on D_f",
                                title="Per-example scores: models vs the populations")
  if curves:
    merged: dict[int, dict[str, float]] = {}
    for name, curve in curves.items():
      for r in curve:
        m = merged.setdefault(r["round"], dict(round=r["round"]))
        if "forget/mean_r1" in r:
          m[f"{name} forget R@1"] = r["forget/mean_r1"]
        for k in knowledge:
          if k in r:
            m[f"{name} {k}"] = r[k]
        m[f"{name} drift"] = r.get("drift", 0.0)
    pts = [merged[k] for k in sorted(merged)]
    plotting.plot_curves(pts, [f"{n} {k}" for n in curves for k in ("forget R@1", *knowledge)],
                         workdir / "reanchoring.png", ylabel="R@1 / attack success (%)",
                         title="Re-anchoring during PFL rounds", x_key="round",
                         reference={f"retrain {k}": reference[k] for k in
                                    ("forget/mean_r1", *knowledge) if k in reference})
    plotting.plot_curves(pts, [f"{n} drift" for n in curves], workdir / "drift.png",
                         title="Drift ||P_u(θ_t − θ*)|| per PFL round", ylabel="drift")
  if gsd_diag and gsd_diag.get("angles_deg"):
    spectra = gsd_diag["angles_deg"]
    n = max(len(a) for a in spectra)
    pts = []
    for i in range(n):
      vals = [a[i] for a in spectra if len(a) > i]
      pts.append(dict(index=i, min=min(vals), mean=float(np.mean(vals)), max=max(vals)))
    plotting.plot_curves(pts, ["min", "mean", "max"], workdir / "angles.png",
                         title="Principal angles U_f vs U_R over modules", x_key="index",
                         ylabel="angle (deg)")


def run_unlearning(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                   progress: bool = True) -> dict[str, Any]:
  """The whole experiment; returns (and writes) the results."""
  del progress
  validation.require_blocks(config, ("unlearning", "methods"), "unlearning",
                            "experiments/configs/unlearn_emoji.py")
  validation.validate(config)  # Before anything is written or trained.
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  method_fns = {name: methods_lib.get(name) for name in config.methods}  # Fail before training.
  cell = cell_lib.Cell(config, workdir, workdir, mia_score=None)
  outcomes = cell.reference_outcomes()
  full_rows = [cell.row(o) for o in outcomes]
  for name, fn in method_fns.items():
    ran = cell.run_method(name, fn)
    outcomes += ran
    full_rows += [cell.row(o) for o in ran]
  reference = full_rows[0]
  rows = [table_row(r, reference) for r in full_rows]
  details = {o.method: dict(diagnostics=o.diagnostics, curves=o.curves,
                            wall_time_s=o.wall_time_s, compile_time_s=o.compile_time_s)
             for o in outcomes if o.method in method_fns}
  curves = {o.method: o.curves for o in outcomes if o.method in method_fns and o.curves}
  gsd_diag = next((o.diagnostics for o in outcomes if "angles_deg" in o.diagnostics), None)
  request = cell.request
  results = dict(
      request=dict(request.fingerprint(), description=request.description,
                   num_forget_images=int(len(request.forget_images))),
      forgotten_knowledge=cell.forgotten_knowledge,
      populations=(None if cell.populations is None else dict(
          seeds=list(cell.populations["seeds"]), in_time_s=cell.populations["in_time_s"],
          out_time_s=cell.populations["out_time_s"],
          # How much one retrain's scores on D_f move together: the higher, the further one
          # model's TPR@1% can stray from 1% with nothing wrong (`audit.model_effect_share`).
          model_effect_share=audit.model_effect_share(cell.populations["out_scores"]))),
      subsets={k: int(len(v)) for k, v in cell.subsets.items()},
      train_timing=cell.train_timing, retrain_timing=cell.retrain_timing, table=rows,
      methods=details, config=config.to_dict())
  jsonio.write_json_atomic(workdir / "results.json", jsonio.to_jsonable(results))
  keys = list(dict.fromkeys(k for r in rows for k in r))
  with (workdir / "results.csv").open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
  _plots(workdir, rows, curves, reference, gsd_diag, cell.forgotten_knowledge,
         cell.score_samples([o for o in outcomes if o.method in ("original", "retrain", "ease")]))
  return results
