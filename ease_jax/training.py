"""Federated training runs from a config: FedAvg through the driver, and the train binary's body.

`run_fedavg(setup, config, workdir)` builds the round plan and the FedAvg algorithm from the
config (`builders`), and runs it with `federated.driver.run`: resumable from `workdir`, per-round
JSON lines, periodic evaluation. Methods that need another algorithm (EASE's PFL, fine-tuning,
retraining) pass their own `algorithm` / `plan`.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping

import ml_collections
import numpy as np

from ease_jax import builders
from ease_jax import checkpointing
from ease_jax import evaluation
from ease_jax import federated
from ease_jax import jsonio
from ease_jax import lora as lora_lib
from ease_jax import validation
from ease_jax.data import plants as plants_lib
from ease_jax.federated import driver

PyTree = Any


def run_options(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
                eval_subsets: Mapping[str, np.ndarray] | None = None, desc: str = "FedAvg",
                progress: bool = True) -> driver.RunOptions:
  """Driver options from the config: evaluation of `eval_subsets` every `eval.every` rounds,
  `checkpoint_every`, the run's fingerprint."""
  eval_fn = None
  if eval_subsets:
    batch = config.eval.get("batch_size", 256)
    eval_fn = lambda t: evaluation.evaluate_splits(setup, t, eval_subsets, batch)
  return driver.RunOptions(eval_fn=eval_fn, eval_every=config.eval.get("every", 0),
                           checkpoint_every=config.get("checkpoint_every", 1),
                           fingerprint=builders.run_fingerprint(config), desc=desc,
                           progress=progress)


def run_fedavg(setup: builders.FederatedSetup, config: ml_collections.ConfigDict,
               workdir: str | pathlib.Path | None = None, *, trainable: PyTree | None = None,
               num_rounds: int | None = None, plan: federated.RoundPlan | None = None,
               algorithm: federated.FederatedAlgorithm | None = None,
               options: driver.RunOptions | None = None) -> driver.RunResult:
  """FedAvg of the LoRA tree, resumable from `workdir`.

  Args:
    trainable: start point (default: a fresh LoRA from `seeds.init`).
    num_rounds: default `fed.rounds`.
    plan: the round inputs (default: every client's data, `builders.round_plan`).
    algorithm: default plain FedAvg of the CLIP loss (`builders.fedavg_algorithm`).
    options: driver options (default `run_options(setup, config)`: no evaluation).
  """
  plan = plan or builders.round_plan(setup, config)
  algorithm = algorithm or builders.fedavg_algorithm(setup, config, plan)
  trainable = builders.init_trainable(setup, config) if trainable is None else trainable
  return driver.run(algorithm, plan, algorithm.init(trainable),
                    config.fed.rounds if num_rounds is None else num_rounds, workdir,
                    options or run_options(setup, config))


def eval_subsets(setup: builders.FederatedSetup) -> dict[str, np.ndarray]:
  """The train binary's retrieval subsets: every clean client image, and the test split.
  Planted copies are measured by their plants' metrics, not by retrieval (copies of one target
  caption would crowd the clients' gallery), as in `requests.UnlearningRequest.eval_subsets`."""
  return {"clients": plants_lib.clean_images(setup.dataset, setup.all_client_images),
          "test": setup.test_images}


def train_and_summarize(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                        ) -> dict[str, Any]:
  """The `train` binary: pretrained-backbone baseline, federated training, summary and plot."""
  from ease_jax import plotting  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  validation.validate(config)
  if (workdir / "summary.json").exists() and not (workdir / "checkpoints").exists():
    raise FileExistsError(f"{workdir} holds a summary.json but no checkpoints; refusing to "
                          "overwrite it. Use a new --workdir.")
  setup = builders.build_setup(config)
  subsets = eval_subsets(setup)
  batch = config.eval.get("batch_size", 256)
  pretrained = evaluation.evaluate_splits(setup, None, subsets, batch)
  result = run_fedavg(setup, config, workdir, options=run_options(setup, config, subsets))
  keys = ("i2t_r1", "t2i_r1", "mean_r1", "i2t_r5", "t2i_r5", "i2t_r10", "t2i_r10",
          "i2t_rprec", "t2i_rprec")
  table = {f"{split}/{k}": dict(pretrained=round(pretrained[f"{split}/{k}"], 2),
                                federated=round(result.final_eval[f"{split}/{k}"], 2))
           for split in subsets for k in keys}
  summary = dict(
      config=checkpointing.fingerprint(config.to_dict()), pretrained=pretrained,
      federated=result.final_eval, table=table, rounds=config.fed.rounds,
      num_clients=setup.num_clients, client_sizes=[int(len(c)) for c in setup.client_images],
      train_time_s_this_process=result.wall_time_s,
      lora_params=lora_lib.num_params(result.trainable))
  jsonio.write_json_atomic(workdir / "summary.json", summary)
  plotting.plot_curves(result.metrics, ["clients/mean_r1", "test/mean_r1"],
                       workdir / "r1_per_round.png", title="FedAvg LoRA: mean R@1 per round",
                       reference={"clients, pretrained": pretrained["clients/mean_r1"],
                                  "test, pretrained": pretrained["test/mean_r1"]})
  return summary
