"""The unlearning experiment: train, request, retrain, methods, evaluation, table and plots.

`run_unlearning(config, workdir)` is what `experiments/unlearn.py` runs:

  workdir/train/     FedAvg before unlearning (resumable, reused)
  workdir/retrain/   the retrain reference (resumable, reused; `timing.json` keeps its wall time)
  results.json, results.csv, r1_bars.png, reanchoring.png, drift.png, angles.png
"""
from __future__ import annotations

import csv
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from ease_jax import experiment
from ease_jax.unlearning import base
from ease_jax.unlearning import ease  # noqa: F401  (registers the EASE methods)
from ease_jax.unlearning import requests
from ease_jax.unlearning import retrain as retrain_lib

SPLITS = ("forget", "retain", "test")
KEYS = ("i2t_r1", "t2i_r1", "mean_r1")


def table_row(name: str, evals: dict[str, float], reference: dict[str, float] | None,
              wall_time_s: float | None, ref_time_s: float | None) -> dict[str, Any]:
  """One results row: R@1 per split, gap to the reference, time and speed-up."""
  row: dict[str, Any] = dict(method=name)
  for split in SPLITS:
    for k in KEYS:
      value = evals.get(f"{split}/{k}")
      if value is None:
        continue
      row[f"{split}/{k}"] = round(value, 2)
      if reference is not None:
        row[f"{split}/{k}_gap"] = round(value - reference[f"{split}/{k}"], 2)
  row["wall_time_s"] = None if wall_time_s is None else round(wall_time_s, 3)
  row["speedup_vs_retrain"] = (round(ref_time_s / wall_time_s, 1)
                               if wall_time_s and ref_time_s else None)
  return row


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  cols = ["method", "forget/i2t_r1", "forget/t2i_r1", "forget/mean_r1_gap", "retain/mean_r1",
          "retain/mean_r1_gap", "test/mean_r1", "test/mean_r1_gap", "wall_time_s",
          "speedup_vs_retrain"]
  width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
  line = lambda r: "  ".join(str(r.get(c, "")).rjust(width[c]) for c in cols)
  return "\n".join([line({c: c for c in cols})] + [line(r) for r in rows])


def _plots(workdir: pathlib.Path, rows: list[dict[str, Any]], curves: dict[str, list[dict]],
           reference: dict[str, float], gsd_diag: dict[str, Any] | None) -> None:
  from ease_jax import plotting  # pylint: disable=g-import-not-at-top
  bars = {r["method"]: {f"{s} R@1": r[f"{s}/mean_r1"] for s in SPLITS if f"{s}/mean_r1" in r}
          for r in rows}
  plotting.plot_bars(bars, workdir / "r1_bars.png", title="Mean R@1 after unlearning")
  if curves:
    merged: dict[int, dict[str, float]] = {}
    for name, curve in curves.items():
      for r in curve:
        m = merged.setdefault(r["round"], dict(round=r["round"]))
        if "forget/mean_r1" in r:
          m[f"{name} forget R@1"] = r["forget/mean_r1"]
        m[f"{name} drift"] = r.get("drift", 0.0)
    pts = [merged[k] for k in sorted(merged)]
    plotting.plot_curves(pts, [f"{n} forget R@1" for n in curves], workdir / "reanchoring.png",
                         title="Re-anchoring during PFL rounds", x_key="round",
                         reference={"retrain": reference["forget/mean_r1"]})
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
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  methods = list(config.methods)
  for name in methods:
    base.get_method(name)  # Fail before training on a typo.
  setup = experiment.build_setup(config)
  trained, train_timing = retrain_lib.train(setup, config, workdir)
  request = requests.from_config(setup, config.unlearning, seed=config.seeds.unlearning)
  subsets = request.eval_subsets(setup)
  reference_run, ref_timing = retrain_lib.retrain(setup, config, request, workdir)
  batch = config.eval.get("batch_size", 256)
  ref_eval = experiment.evaluate_splits(setup, reference_run.trainable, subsets, batch)
  ref_time = ref_timing["steady_time_s"]
  # `backbone`: the pretrained model alone (fresh adapters, B = 0), i.e. what FedAvg started
  # from; `original`: the federated model that received the request.
  backbone_eval = experiment.evaluate_splits(setup, experiment.init_trainable(setup, config),
                                             subsets, batch)
  rows = [table_row("retrain", ref_eval, ref_eval, ref_time, ref_time),
          table_row("backbone", backbone_eval, ref_eval, None, None),
          table_row("original", experiment.evaluate_splits(setup, trained.trainable, subsets,
                                                           batch), ref_eval, None, None)]
  ctx = base.UnlearningContext(setup=setup, config=config, request=request,
                               trained=trained.trainable, history=trained.history,
                               eval_subsets=subsets, workdir=workdir)
  details, curves, gsd_diag = {}, {}, None
  for name in methods:
    res = base.get_method(name)(ctx)
    evals = experiment.evaluate_splits(setup, res.trainable, subsets, batch)
    rows.append(table_row(name, evals, ref_eval, res.wall_time_s, ref_time))
    for tag, tree in res.continued.items():
      cont = experiment.evaluate_splits(setup, tree, subsets, batch)
      rows.append(table_row(f"{name}+{tag}", cont, ref_eval, None, None))
    if res.curves:
      curves[name] = res.curves
    details[name] = dict(diagnostics=res.diagnostics, curves=res.curves,
                         wall_time_s=res.wall_time_s, compile_time_s=res.compile_time_s)
    if gsd_diag is None and "angles_deg" in res.diagnostics:
      gsd_diag = res.diagnostics
  results = dict(
      request=dict(request.fingerprint(), description=request.description,
                   num_forget_images=int(len(request.forget_images))),
      subsets={k: int(len(v)) for k, v in subsets.items()},
      train_timing=train_timing, retrain_timing=ref_timing, table=rows, methods=details,
      config=config.to_dict())
  experiment.write_json_atomic(workdir / "results.json", experiment.to_jsonable(results))
  keys = list(dict.fromkeys(k for r in rows for k in r))
  with (workdir / "results.csv").open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
  _plots(workdir, rows, curves, ref_eval, gsd_diag)
  return results
