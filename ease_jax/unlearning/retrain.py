"""Federated training before unlearning, and the retrain reference, both cached in the workdir.

The retrain reference is FedAvg from the same initialisation with the same seeds, rounds and
schedule, minus D_f (its texts removed, the leaving clients inactive). Both runs are
orbax-checkpointed by the driver, so a repeated call restores instead of retraining; their wall
time is the sum of the per-round training times in `metrics.jsonl` (valid across resumes), also
written to `timing.json`.
"""
from __future__ import annotations

import pathlib
from typing import Any

from absl import logging
import ml_collections

from ease_jax import builders
from ease_jax import jsonio
from ease_jax import training
from ease_jax.federated import driver
from ease_jax.unlearning import common
from ease_jax.unlearning import requests


def _cached_run(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
                workdir: pathlib.Path, identity: dict[str, Any], desc: str,
                plan: Any = None) -> tuple[driver.RunResult, dict[str, float]]:
  workdir.mkdir(parents=True, exist_ok=True)
  ident_path = workdir / "request.json"
  if ident_path.exists():
    saved = jsonio.read_json(ident_path)
    if saved != jsonio.to_jsonable(identity):
      raise ValueError(f"{workdir} holds a run for {saved}, not {identity}; use a new workdir.")
  else:
    jsonio.write_json_atomic(ident_path, identity)
  result = training.run_fedavg(setup, config, workdir, plan=plan,
                               options=training.run_options(setup, config, desc=desc))
  timing = common.round_timing(result.metrics)
  timing_path = workdir / "timing.json"
  if timing["rounds"] < config.fed.rounds:
    # Rows of restored rounds were lost (an emptied or damaged metrics.jsonl): the time they
    # recorded is gone, so keep the timing measured when they ran, if there is one.
    saved = jsonio.read_json(timing_path) if timing_path.exists() else None
    logging.warning("%s: metrics.jsonl holds %d of the run's %d rounds; %s", workdir,
                    timing["rounds"], config.fed.rounds,
                    "keeping the timing measured when they ran" if saved
                    else "its time is summed over those rounds only")
    if saved and saved.get("rounds", 0) > timing["rounds"]:
      return result, saved
  jsonio.write_json_atomic(timing_path, timing)
  return result, timing


def train(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
          workdir: str | pathlib.Path) -> tuple[driver.RunResult, dict[str, float]]:
  """FedAvg on all clients (the model to unlearn from), cached in `workdir/train`."""
  return _cached_run(setup, config, pathlib.Path(workdir) / "train", dict(kind="none"), "FedAvg")


def retrain_plan(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
                 request: requests.UnlearningRequest) -> Any:
  """The retrain reference's round inputs: the same seeds and schedule, without D_f."""
  return builders.round_plan(setup, config, request.retain_client_texts(setup),
                             request.retain_clients(setup))


def retrain(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
            request: requests.UnlearningRequest, workdir: str | pathlib.Path
            ) -> tuple[driver.RunResult, dict[str, float]]:
  """The retrain reference without D_f, cached in `workdir/retrain`."""
  return _cached_run(setup, config, pathlib.Path(workdir) / "retrain", request.fingerprint(),
                     "retrain", retrain_plan(setup, config, request))
