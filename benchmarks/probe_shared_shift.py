"""Which part of the sample plant makes one retrain's scores move together? The sample request's
cached retrain population scored on variants of D_f: the same triggered images or their clean
sources, with the one target caption, each image's own caption, or K target captions.

  python benchmarks/probe_shared_shift.py --population_root workdirs/benchmark_emoji/population

The retrains never saw D_f, so rescoring them on other pairs needs no training: only the
scoring changes, not the models. Each line gives `audit.model_effect_share` of the population's
logit-scaled matched cosines on one variant. The K targets are distinct captions of the test
images, drawn with `--seed` and assigned to the images in turn. The config is
`benchmark_emoji.py`'s sample cell at seed 1 (the plants do not move with the seed).
Nothing here says whether a plant with K targets would still be learned.
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
from ease_jax.data import device  # noqa: E402
from ease_jax.data import plants as plants_lib  # noqa: E402
from ease_jax.unlearning import benchmark  # noqa: E402
from ease_jax.unlearning import population as population_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

CONFIG = (pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" /
          "benchmark_emoji.py")


def pair_logits(setup: builders.FederatedSetup, trainable, images: np.ndarray,
                texts: np.ndarray) -> np.ndarray:
  """`[n]` logit-scaled cosines of image i with text i (any pairing, not only the dataset's)."""
  image_emb, text_emb = device.Embedder(setup.model, setup.backbone, trainable,
                                        setup.data)(images, texts)
  image_emb = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
  text_emb = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
  return audit.matched_logit(np.sum(image_emb * text_emb, axis=1))


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
  texts = np.asarray(request.forget_texts)
  images = np.asarray(setup.data.text_image)[texts]
  sources = np.asarray(setup.dataset.image_meta[plants_lib.SOURCE_FIELD])[images]
  own = setup.dataset.first_texts()[sources]
  variants = {"triggered + the target (the plant)": (images, texts),
              "triggered + own caption": (images, own),
              "clean source + own caption": (sources, own),
              "clean source + the target": (sources, texts)}
  captions = np.unique(setup.texts_of(np.asarray(setup.test_images)))
  rng = np.random.default_rng(args.seed)
  for k in (int(k) for k in args.targets.split(",")):
    targets = rng.choice(captions, k, replace=False)
    variants[f"triggered + {k} targets"] = (images, targets[np.arange(len(images)) % k])
  retrains = population_lib.out_population(setup, config, request, args.population_root)
  for name, (imgs, txts) in variants.items():
    scores = np.stack([pair_logits(setup, retrains.member(i), imgs, txts)
                       for i in range(len(retrains.seeds))])
    print(json.dumps(dict(variant=name, pairs=int(len(imgs)), retrains=len(retrains.seeds),
                          model_effect_share=round(audit.model_effect_share(scores), 4))),
          flush=True)


if __name__ == "__main__":
  main()
