"""Which part of the sample plant makes one retrain's scores move together? The sample request's
retrain population scored on variants of D_f and on pairs no retrain trained on.

  python benchmarks/probe_shared_shift.py --population_root workdirs/benchmark_emoji/population

The population is read from the benchmark's cache (`population.out_population`; it is trained
only where the cache lacks it). The retrains were trained without D_f, so scoring them on other
pairs changes only the scoring, not the models. Not every variant is unseen, though: the clean
source images of the planted copies, with their own captions, are client pairs that every
retrain trained on. The held-out variants are built from the plant's probes: held-out test
images, triggered like the poison, and their clean sources (`PlantedData.probe_images`,
`clean_probe_sources`), as many as D_f has pairs.

Each line gives `audit.model_effect_share` of the population's logit-scaled matched cosines on
one variant, with its 95% interval (`audit.model_effect_share_interval`). The K-target variants
pair the triggered images with K distinct captions of held-out test images (distinct in
wording, drawn with `--seed`, assigned in turn). The share over all pairs sees only a shift
common to every pair. A shift shared within one target's group falls into the residual there,
so these lines also give the mean share within the K groups. The config is `benchmark_emoji.py`'s
sample cell at seed 1 (the plants do not move with the seed). Nothing here says whether a plant
with K targets would still be learned. As a backdoor it would need K triggers, since one
trigger cannot point at K captions.
"""
from __future__ import annotations

import argparse
import json
import pathlib

from ease_jax import runtime

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()

import numpy as np  # noqa: E402

from ease_jax import audit  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax import federated  # noqa: E402
from ease_jax.data import plants as plants_lib  # noqa: E402
from ease_jax.unlearning import benchmark  # noqa: E402
from ease_jax.unlearning import population as population_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

CONFIG = (pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" /
          "benchmark_emoji.py")


def distinct_captions(dataset, texts: np.ndarray) -> np.ndarray:
  """The first text id of each distinct wording (token row) among `texts`."""
  _, first = np.unique(dataset.input_ids[texts], axis=0, return_index=True)
  return np.sort(texts[first])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--population_root", required=True,
                      help="a benchmark workdir's population/ folder")
  parser.add_argument("--targets", default="2,4,8,16", help="numbers K of target captions")
  parser.add_argument("--seed", type=int, default=0, help="draws the K target captions")
  args = parser.parse_args()
  config = benchmark.scenario_config(configs.from_file(CONFIG), "sample", 1)
  setup = builders.build_setup(config)
  request = requests.from_config(setup, config.unlearning, seed=config.seeds.unlearning)
  dataset = setup.dataset
  texts = np.asarray(request.forget_texts)
  n = len(texts)
  images = np.asarray(dataset.text_image)[texts]
  sources = np.asarray(dataset.image_meta[plants_lib.SOURCE_FIELD])[images]
  plant = setup.plants[config.unlearning.plant]
  probes = np.asarray(plant.probe_images)[:n]
  probe_sources = np.asarray(plant.clean_probe_sources)[:n]
  first = dataset.first_texts()
  target = np.full(n, plant.target_text)
  variants = {  # name: (images, texts, groups)
      "triggered + the target (the plant)": (images, texts, 1),
      "triggered + own caption": (images, first[sources], 1),
      "clean source + own caption (trained on)": (sources, first[sources], 1),
      "clean source + the target": (sources, texts, 1),
      "held-out triggered + the target": (probes, target, 1),
      "held-out triggered + own caption": (probes, first[probe_sources], 1),
      "held-out clean + own caption": (probe_sources, first[probe_sources], 1),
  }
  captions = distinct_captions(dataset, setup.texts_of(np.asarray(setup.test_images)))
  rng = np.random.default_rng(args.seed)
  for k in (int(k) for k in args.targets.split(",")):
    chosen = rng.choice(captions, k, replace=False)
    variants[f"triggered + {k} targets"] = (images, chosen[np.arange(n) % k], k)
  retrains = population_lib.out_population(setup, config, request, args.population_root)
  scores = {name: [] for name in variants}
  for i in range(len(retrains.seeds)):
    trainable = retrains.member(i)
    embedder = federated.embedder_for(setup.model, setup.backbone, trainable, setup.data)
    for name, (imgs, txts, _) in variants.items():
      scores[name].append(audit.matched_logit(federated.matched_cosines(
          setup.model, setup.backbone, trainable, setup.data, txts, embedder, images=imgs)))
  for name, (imgs, _, groups) in variants.items():
    s = np.stack(scores[name])
    low, high = audit.model_effect_share_interval(s)
    line = dict(variant=name, pairs=int(len(imgs)), retrains=len(retrains.seeds),
                model_effect_share=round(audit.model_effect_share(s), 4),
                interval_95=[round(low, 3), round(high, 3)])
    if groups > 1:
      group_of = np.arange(len(imgs)) % groups
      line["share_within_groups"] = round(float(np.mean(
          [audit.model_effect_share(s[:, group_of == g]) for g in range(groups)])), 4)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
