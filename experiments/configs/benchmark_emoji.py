r"""The unlearning comparison on the embedded emoji default with planted knowledge: methods ×
three planted requests × seeds, with the per-example audit.

  python experiments/benchmark.py --config=experiments/configs/benchmark_emoji.py \
      --workdir=workdirs/benchmark_emoji

Starts from `unlearn_emoji.py` (model, data, the three plants, EASE's and the baselines'
blocks) and adds `benchmark`: the requests (each an `unlearning` block), the seeds and the
methods.

* client: client 1 leaves (it carries the "rocket" backdoor: 130 copies with a blended trigger).
* sample: exactly the 80 poisoned "volcano" pairs of clients 0, 2 and 3, who stay.
* concept: every pair of the planted concept (copies of every client's emoji with inverted
  colours, captioned "inverted <own caption>": a style the backbone never saw and retrain never
  sees). The skin-tone concept of earlier sessions (`dict(kind="concept", field="skin_tone",
  concepts=("medium-dark",))`) is not learned by the adapter (BENCHMARKS.md, "Planting
  knowledge"), so it cannot rank methods.

A benchmark seed sets LoRA init, client sampling, shuffles and the methods' randomness
(`benchmark.seed_keys`); the partition and the plants stay fixed, so one population of
`audit.population` retrains per request (and one trained with everything) serves every seed, as
one batched run each. `benchmark.variants` (optional) adds a method under other knobs, e.g.
`ease_retain90=dict(method="ease", overrides=dict(gsd=dict(retain_energy=0.9)))`.
"""
import pathlib

import ml_collections

from ease_jax import configs


def get_config() -> ml_collections.ConfigDict:
  c = configs.from_file(pathlib.Path(__file__).with_name("unlearn_emoji.py"))
  c.checkpoint_every = 4
  c.methods = ("ease",)  # Unused here (the unlearn binary's list); see benchmark.methods.
  # 10 members: at 6, held-out retrains of the concept request fell outside the population's
  # spread (forget quality p < 1e-3 on two of three seeds); on the tuning seed 0, 1 of 10 retrain
  # members was flagged against the other 9 (BENCHMARKS.md, "Planted comparison rerun: populations
  # of 10").
  c.audit.population = 10
  c.benchmark = ml_collections.ConfigDict(dict(
      # Evaluation seeds: the plants' targets and the federation's learning rate were chosen on
      # seed 0 (BENCHMARKS.md, "Planting knowledge"), so it is left out.
      seeds=(1, 2, 3),
      seed_keys=("init", "sampling", "data", "unlearning"),
      scenarios=("client", "sample", "concept"),
      methods=("ease", "finetune", "gradient_ascent", "pga", "federaser", "fedrecovery", "ccu",
               "mvi_causal"),
      mia_score="cosine",      # 'cosine' | 'loss' (ease_jax/mia.py)
      scenario_blocks=dict(
          client=dict(kind="client", clients=(1,)),
          sample=dict(kind="sample", plant="sample_backdoor"),
          concept=dict(kind="concept", plant="concept"),
      ),
  ))
  return c
