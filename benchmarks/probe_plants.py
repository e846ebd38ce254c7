"""Does a federation learn its plants? One FedAvg run of the embedded default with overrides,
then the attack success rate of every plant, the skin-tone accuracy of every tone, test and
client R@1 and the training time, as one JSON line (the probes of BENCHMARKS.md, "Planting
knowledge").

  python benchmarks/probe_plants.py fed.client_lr=1e-2 plants.sample_backdoor.target_caption=alien
  python benchmarks/probe_plants.py --retrain_tone=medium-dark   # the concept's retrain

Overrides are `dotted.key=value` of `experiments/configs/unlearn_emoji.py` (values parsed as
Python literals where they parse, else kept as strings).
"""
from __future__ import annotations

import argparse
import ast
import json
import pathlib
import time

from ease_jax import runtime

runtime.avoid_cpu_hang()

import numpy as np  # noqa: E402

from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax import evaluation  # noqa: E402
from ease_jax import training  # noqa: E402
from ease_jax.data import dataset as dataset_lib  # noqa: E402
from ease_jax.data import plants as plants_lib  # noqa: E402
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" / (
    "unlearn_emoji.py")


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("overrides", nargs="*", help="dotted.key=value")
  parser.add_argument("--retrain_tone", default="", help="train without this skin tone")
  args = parser.parse_args()
  config = configs.from_file(CONFIG)
  config.fed.history_size = 0
  config = base.config_with(config, {k: _value(v) for k, v in
                                     (o.split("=", 1) for o in args.overrides)})
  setup = builders.build_setup(config)
  plan = None
  if args.retrain_tone:
    req = requests.concept_request(setup, "skin_tone", [args.retrain_tone])
    plan = builders.round_plan(setup, config, req.retain_client_texts(setup),
                               req.retain_clients(setup))
  t0 = time.perf_counter()
  res = training.run_fedavg(setup, config, plan=plan,
                            options=training.run_options(setup, config, progress=False))
  out = dict(overrides=" ".join(args.overrides), retrain_tone=args.retrain_tone,
             train_s=round(time.perf_counter() - t0, 1),
             round_s=round(float(np.median([r["round_time_s"] for r in res.metrics])), 2),
             backend=builders.fedavg_options(setup, config, plan or builders.round_plan(
                 setup, config)).backend)
  clients = setup.all_client_images
  clients = clients[~plants_lib.is_planted(setup.dataset, clients)]
  ev = evaluation.evaluate_splits(setup, res.trainable, dict(test=setup.test_images,
                                                             clients=clients))
  out.update({k: round(v, 1) for k, v in ev.items() if k.endswith("mean_r1")})
  for plant in setup.plants.values():
    out.update({k: round(v, 1) for k, v in
                evaluation.plant_metrics(setup, res.trainable, plant).items()})
  tones = np.asarray(setup.dataset.image_meta["skin_tone"])
  for tone in dataset_lib.SKIN_TONES:
    t = evaluation.tone_accuracy(setup, res.trainable, clients[tones[clients] == tone])
    out.update({f"tone/{tone}/{d}": round(t[d], 1) for d in ("t2i", "i2t")})
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
