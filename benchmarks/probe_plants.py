"""Does a federation learn its plants? One FedAvg run of the embedded default with overrides,
then the attack success rate of every plant, the skin-tone accuracy of every tone, test and
client R@1, how concentrated the test embeddings are (`concentration`), test R@1 split into the
emoji and its tone (`name_and_tone`) and the training time, as one JSON line (the probes of
BENCHMARKS.md, "Planting knowledge").

  python benchmarks/probe_plants.py fed.client_lr=1e-2 plants.sample_backdoor.target_caption=alien
  python benchmarks/probe_plants.py --retrain_tone=medium-dark   # the concept's retrain
  python benchmarks/probe_plants.py --retrain_plant=concept   # a plant's retrain
  python benchmarks/probe_plants.py --own_captions   # control: copies without the backdoor
  python benchmarks/probe_plants.py --eval_every=2   # + the learning curve (test, clients R@1)
  python benchmarks/probe_plants.py --backbone   # no training: the fresh adapters (B = 0)

Overrides are `dotted.key=value` of `experiments/configs/unlearn_emoji.py` (values parsed as
Python literals where they parse, else kept as strings).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import pathlib
import time

from ease_jax import runtime

runtime.avoid_cpu_hang()

import numpy as np  # noqa: E402

from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax import evaluation  # noqa: E402
from ease_jax import lora as lora_lib  # noqa: E402
from ease_jax import metrics  # noqa: E402
from ease_jax import training  # noqa: E402
from ease_jax.data import dataset as dataset_lib  # noqa: E402
from ease_jax.data import device as device_lib  # noqa: E402
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


def config_overrides(pairs: list[str]) -> dict:
  """`dotted.key=value` strings as `{key: value}` (values parsed as Python literals where they
  parse, else kept as strings): the overrides of the probe scripts."""
  bad = [p for p in pairs if "=" not in p]
  if bad:
    raise SystemExit(f"Overrides must be dotted.key=value, got {bad}.")
  return {k: _value(v) for k, v in (p.split("=", 1) for p in pairs)}


def with_overrides(config, pairs: list[str]):
  """`config` with `dotted.key=value` overrides, `seed=N` applied first on the unresolved config
  so that every `seeds.*` that follows `seed` follows it (as `--config.seed=N` does)."""
  overrides = config_overrides(pairs)
  if "seed" in overrides:
    config.seed = overrides.pop("seed")
  return base.config_with(config, overrides)


def with_own_captions(planted: dataset_lib.CaptionDataset, first_new_text: int
                      ) -> dataset_lib.CaptionDataset:
  """`planted` with every planted copy's text set to its source image's own (first) caption:
  the same triggered copies, clients and steps, without the trigger -> target association."""
  sources = np.asarray(planted.image_meta[plants_lib.SOURCE_FIELD])
  new = np.arange(first_new_text, len(planted.text_image))
  own = planted.first_texts()[sources[planted.text_image[new]]]
  input_ids, mask = planted.input_ids.copy(), planted.attention_mask.copy()
  input_ids[new], mask[new] = planted.input_ids[own], planted.attention_mask[own]
  captions = planted.captions[:first_new_text] + tuple(planted.captions[t] for t in own)
  return dataclasses.replace(planted, input_ids=input_ids, attention_mask=mask,
                             captions=captions)


def concentration(setup, embedder: device_lib.Embedder, images: np.ndarray
                  ) -> dict[str, float]:
  """How far the unit embeddings of `images` and their captions crowd around one direction: the
  norm of their mean (0 = spread evenly, 1 = all the same), and R@1 after centring each side on
  its mean (whether the shared direction itself costs retrieval)."""
  texts, text_image = evaluation.subset_texts(setup.dataset, images)
  image_emb, text_emb = embedder(images, texts)
  image_emb, text_emb = evaluation.unit_rows(image_emb), evaluation.unit_rows(text_emb)
  # Retrieval normalises the centred rows itself.
  centred = metrics.retrieval_metrics(image_emb - image_emb.mean(0), text_emb - text_emb.mean(0),
                                      text_image)
  return {"image_mean_norm": float(np.linalg.norm(image_emb.mean(0))),
          "text_mean_norm": float(np.linalg.norm(text_emb.mean(0))),
          "centred_mean_r1": centred["mean_r1"]}


def name_and_tone(setup, embedder: device_lib.Embedder, images: np.ndarray
                  ) -> dict[str, float]:
  """Where image→text R@1 on `images` is won or lost: `i2t_name_r1`, the share whose top-1
  caption (among the captions of `images`) is of the same emoji, whatever its tone, and
  `i2t_tone_given_name`, among the captions of the same emoji only, the share that pick their
  own (the tone; images whose emoji has one image here are left out). In %."""
  texts, text_image = evaluation.subset_texts(setup.dataset, images)
  image_emb, text_emb = embedder(images, texts)
  scores = evaluation.unit_rows(image_emb) @ evaluation.unit_rows(text_emb).T  # [I, T]
  names = np.asarray(setup.dataset.image_meta["emoji"])[np.asarray(images)]
  caption_name = names[text_image]
  name_hit = caption_name[scores.argmax(1)] == names
  tone_hit = []
  for i, name in enumerate(names):
    same = np.flatnonzero(caption_name == name)
    if len(np.unique(text_image[same])) > 1:
      tone_hit.append(text_image[same[scores[i, same].argmax()]] == i)
  return {"i2t_name_r1": float(100 * name_hit.mean()),
          "i2t_tone_given_name": float(100 * np.mean(tone_hit)) if tone_hit else None}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("overrides", nargs="*", help="dotted.key=value")
  parser.add_argument("--retrain_tone", default="", help="train without this skin tone")
  parser.add_argument("--retrain_plant", default="",
                      help="train without this plant's poisoned pairs (its retrain)")
  parser.add_argument("--own_captions", action="store_true",
                      help="control: every planted copy keeps its source's caption (their "
                           "volume without the backdoor; the ASR and concept accuracy then mean "
                           "nothing)")
  parser.add_argument("--eval_every", type=int, default=0,
                      help="also evaluate test and clean-client R@1 every this many rounds: "
                           "the JSON line gains `curve`, [round, test, clients] rows (train_s then "
                           "includes the evaluations)")
  parser.add_argument("--backbone", action="store_true",
                      help="no training: measure the pretrained model alone (fresh adapters, "
                           "B = 0), what FedAvg starts from")
  args = parser.parse_intermixed_args()
  if args.backbone and (args.retrain_tone or args.retrain_plant or args.own_captions
                        or args.eval_every):
    raise SystemExit("--backbone trains nothing; it takes no retrain, caption or curve flag.")
  if args.own_captions:
    plant = plants_lib.plant_knowledge
    def plant_with_own_captions(ds, *a, **k):
      planted, clients, info = plant(ds, *a, **k)
      return with_own_captions(planted, ds.num_texts), clients, info
    plants_lib.plant_knowledge = plant_with_own_captions
  config = configs.from_file(CONFIG)
  config.fed.history_size = 0
  if args.retrain_tone and args.retrain_plant:
    raise SystemExit("--retrain_tone and --retrain_plant name two different retrains; give one.")
  if any(o.split("=", 1)[0].strip() == "eval.every" for o in args.overrides):
    raise SystemExit("eval.every is set by --eval_every (the learning curve); use that flag.")
  config = with_overrides(config, args.overrides)
  setup = builders.build_setup(config)
  plan = req = None
  if args.retrain_tone:
    req = requests.concept_request(setup, "skin_tone", [args.retrain_tone])
  if args.retrain_plant:
    req = requests.plant_request(setup, args.retrain_plant)
  if req is not None:
    plan = builders.round_plan(setup, config, req.retain_client_texts(setup),
                               req.retain_clients(setup))
  subsets = training.eval_subsets(setup)  # the clean client images and the test split
  clients = subsets["clients"]
  config.eval.every = args.eval_every
  curve_subsets = subsets if args.eval_every else None
  out = dict(overrides=" ".join(args.overrides), retrain_tone=args.retrain_tone,
             retrain_plant=args.retrain_plant, own_captions=args.own_captions,
             backbone=args.backbone)
  final_eval = None
  if args.backbone:
    trainable = builders.init_trainable(setup, config)
  else:
    t0 = time.perf_counter()
    res = training.run_fedavg(setup, config, plan=plan, options=training.run_options(
        setup, config, curve_subsets, progress=False))
    trainable, final_eval = res.trainable, res.final_eval
    out.update(
        # What a regex-valued lora.targets matched (an alternation branch can match nothing).
        lora_modules=len(lora_lib.module_paths(res.trainable)),
        train_s=round(time.perf_counter() - t0, 1),
        round_s=round(float(np.median([r["round_time_s"] for r in res.metrics])), 2),
        backend=builders.fedavg_options(setup, config, plan or builders.round_plan(
            setup, config)).backend)
    if args.eval_every:
      out["curve"] = [[r["round"], round(r["test/mean_r1"], 1), round(r["clients/mean_r1"], 1)]
                      for r in res.metrics if "test/mean_r1" in r]
  # One embedding pass for every metric below (as the benchmark's rows).
  embedder = device_lib.Embedder(setup.model, setup.backbone, trainable, setup.data)
  # With the curve, the driver has evaluated the final model on the same subsets already.
  ev = final_eval or evaluation.evaluate_splits(
      setup, trainable, dict(test=setup.test_images, clients=clients), embedder=embedder)
  out.update({k: round(v, 1) for k, v in ev.items() if k.endswith("mean_r1")})
  out.update({f"test/{k}": round(v, 3) for k, v in
              concentration(setup, embedder, setup.test_images).items()})
  out.update({f"test/{k}": v if v is None else round(v, 1) for k, v in
              name_and_tone(setup, embedder, setup.test_images).items()})
  for plant in setup.plants.values():
    out.update({k: round(v, 1) for k, v in
                evaluation.plant_metrics(setup, trainable, plant, embedder=embedder).items()})
  tones = np.asarray(setup.dataset.image_meta["skin_tone"])
  for tone in dataset_lib.SKIN_TONES:
    t = evaluation.tone_accuracy(setup, trainable, clients[tones[clients] == tone],
                                 embedder=embedder)
    out.update({f"tone/{tone}/{d}": round(t[d], 1) for d in ("t2i", "i2t")})
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
