"""Federated training before unlearning, and the retrain reference, both cached in the workdir.

The retrain reference is `run_federated` from the same initialisation with the same seeds,
rounds and schedule, minus D_f (its texts removed, the leaving clients inactive). Both runs are
orbax-checkpointed by `run_federated`, so a repeated call restores instead of retraining; their
wall time is the sum of the per-round training times in `metrics.jsonl` (valid across resumes),
also written to `timing.json`.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections
import numpy as np

from ease_jax import experiment
from ease_jax.unlearning import requests


def round_timing(rows: list[dict[str, Any]]) -> dict[str, float]:
  """Wall time of a run from its metrics rows.

  `wall_time_s` sums the per-round times; the first round also compiles, so `steady_time_s`
  replaces it by the median of the others (the compile-free time, comparable with methods that
  report their compile time separately).
  """
  times = [float(r["round_time_s"]) for r in rows if "round_time_s" in r]
  if not times:
    return dict(wall_time_s=0.0, steady_time_s=0.0, rounds=0)
  median = float(np.median(times[1:])) if len(times) > 1 else times[0]
  steady = sum(times) - times[0] + min(times[0], median)
  return dict(wall_time_s=sum(times), steady_time_s=steady, rounds=len(times),
              round_time_median_s=median)


def _cached_run(setup: experiment.FederatedSetup, config: ml_collections.ConfigDict,
                workdir: pathlib.Path, identity: dict[str, Any], **kwargs
                ) -> tuple[experiment.RunResult, dict[str, float]]:
  workdir.mkdir(parents=True, exist_ok=True)
  ident_path = workdir / "request.json"
  if ident_path.exists():
    saved = json.loads(ident_path.read_text())
    if saved != identity:
      raise ValueError(f"{workdir} holds a run for {saved}, not {identity}; use a new workdir.")
  else:
    experiment.write_json_atomic(ident_path, identity)
  result = experiment.run_federated(setup, config, workdir, **kwargs)
  timing = round_timing(result.metrics)
  experiment.write_json_atomic(workdir / "timing.json", timing)
  return result, timing


def train(setup: experiment.FederatedSetup, config: ml_collections.ConfigDict,
          workdir: str | pathlib.Path) -> tuple[experiment.RunResult, dict[str, float]]:
  """FedAvg on all clients (the model to unlearn from), cached in `workdir/train`."""
  return _cached_run(setup, config, pathlib.Path(workdir) / "train", dict(kind="none"),
                     desc="FedAvg")


def retrain(setup: experiment.FederatedSetup, config: ml_collections.ConfigDict,
            request: requests.UnlearningRequest, workdir: str | pathlib.Path
            ) -> tuple[experiment.RunResult, dict[str, float]]:
  """The retrain reference without D_f, cached in `workdir/retrain`."""
  return _cached_run(setup, config, pathlib.Path(workdir) / "retrain", request.fingerprint(),
                     client_texts=request.retain_client_texts(setup),
                     active_clients=request.retain_clients(setup), desc="retrain")
