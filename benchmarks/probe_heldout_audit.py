"""How often does the audit flag a retrain? Every retrain population member in turn as the
held-out retrain of issue 14's sanity bound (LiRA TPR@1%FPR ≤ 3%, forget quality p ≥ 0.05).

  python benchmarks/probe_heldout_audit.py --population_root workdirs/benchmark_emoji/population
  python benchmarks/probe_heldout_audit.py --population_root workdirs/benchmark_emoji/population \
      --extra_root workdirs/utility_population --extra_population 16 --requests sample,concept

The benchmark audits each seed's retrain reference against populations of `audit.population`
members (`population.scored_pair`, cached under the benchmark workdir's `population/`): one draw
per request and seed. This script reads the cached populations (nothing is trained when they
are complete) and audits each retrained member j against the other members, without j's twin
in the `in` population (the member with j's seed: the audited retrains have none there), as
`population.audit_row` audits a row. With `--extra_root`, the out members of a larger cached
population of the same federation (`utility_population.py --arms planted,without:<plant>`; a
sample or concept plant, whose request is `requests.plant_request`) that are in neither of
the benchmark's populations are audited too, against the full populations, as a benchmark
seed's retrain is. One JSON line per request: each audited retrain's TPR@1%FPR and forget
quality, and how many exceed the bound. The config is `benchmark_emoji.py` at `--seed` (its
seed sets the audit's non-member half) with the `dotted.key=value` overrides, e.g.
`audit.score=loss audit.calibrate=True` to audit the same cached members under another score
(an override of a training key trains other populations).

With extra retrains, `--redraws` also draws the benchmark's population size at random from
all the retrains (the population's and the extra ones; the `in` population stays the
benchmark's), audits the rest against each draw, and
reports the mean share over the bound and its spread over draws (`redrawn_miss_rate`): the
real-data counterpart of `probe_lira_bound.py`'s simulated rate. Those draws keep the
benchmark's `in` population, so most drawn retrains have no twin in it; with `--extra_in` the
extra seeds' trained members are trained too, and `paired_redraw_miss_rate` draws seeds that
have both members and takes both populations from them, as the benchmark's share their seeds.

The other half of the bound, that the trained model is flagged (TPR@1% ≥ 20%, p < 0.01), is
read on the trained members: each `in` member against the other `in` members and the retrains
without its twin (`trained_tpr_at_1pct`, `trained_forget_quality`). Beside it, for comparison,
the model-level test (`audit.model_mean_test`: the model's mean score against the retrains'
means) of every audited retrain and trained member (`model_level_p`, `trained_model_level_p`;
the counts at p < 0.01). The line also gives the
retrain population's `model_effect_share` (`audit.model_effect_share`): how much one
retrain's scores move together, which `probe_lira_bound.py` turns into the bound's miss rate.

`--centre` scores each D_f pair relative to the audited model itself: its logit-scaled matched
cosine minus the model's mean over held-out reference pairs of the pair's stratum
(`plant_strata`, `centred_scorer`): a plant's poison copies against the plant's probes (held-out
test images under the same trigger or style, with the plant's target caption or their concept
captions), clean pairs against the audit's non-member pairs. Any offset a model has on a whole
stratum cancels by construction; no model trained on a reference pair, so where the references
carry the same shift as D_f, what is left is how much more member-like D_f's own pairs are
than held-out pairs of the same kind.
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
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import benchmark  # noqa: E402
from ease_jax.unlearning import common  # noqa: E402
from ease_jax.unlearning import population as population_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

import probe_plants  # noqa: E402  (same folder: the override parser)

CONFIG = (pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" /
          "benchmark_emoji.py")
TPR_BOUND, P_BOUND = 0.03, 0.05  # Issue 14's "a held-out retrain seed is not flagged".
TRAINED_TPR, TRAINED_P = 0.20, 0.01  # ... and "the trained model is flagged".
MODEL_P = 0.01  # The model-level test's level (`audit.model_mean_test`), for comparison only.


def plant_strata(setup: builders.FederatedSetup, forget_texts: np.ndarray,
                 nonmember_texts: np.ndarray
                 ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
  """D_f's strata, each with held-out reference pairs that no model trained on:
  `(name, mask [n] over forget_texts, images [m], texts [m])`. A plant's poison copies take the
  plant's probes with its target caption (backdoor) or their own concept captions (concept);
  clean pairs (`plants.CLEAN`) take the `nonmember_texts` pairs. Every pair of D_f is in exactly one
  stratum."""
  dataset = setup.dataset
  plant_of = plants_lib.pair_strata(dataset, forget_texts)
  strata = []
  for name in np.unique(plant_of).tolist():
    if name == plants_lib.CLEAN:
      texts = np.asarray(nonmember_texts)
      images = np.asarray(dataset.text_image)[texts]
    elif name not in setup.plants:
      raise ValueError(f"D_f holds copies of plant {name!r}, which the setup does not know "
                       f"(its plants: {sorted(setup.plants)}).")
    else:
      plant = setup.plants[name]
      images = np.asarray(plant.probe_images)
      texts = (np.asarray(plant.probe_texts) if plant.kind == "concept"
               else np.full(len(images), plant.target_text))
    if not len(images):
      raise ValueError(f"D_f's {name} pairs have no held-out reference pairs to centre "
                       "them by.")
    strata.append((name, plant_of == name, images, texts))
  return strata


def centred_scorer(setup: builders.FederatedSetup, config, forget_texts: np.ndarray,
                   nonmember_texts: np.ndarray):
  """`score(trainable, embedder=None) -> [n]`: the logit-scaled matched cosines of D_f
  (`population.forget_scorer`'s), each minus the model's mean over its stratum's reference
  pairs (`plant_strata`). Centring cancels any offset a model has on a whole stratum by
  construction; what it tests is whether the held-out references carry the offset that D_f
  carries. Only for `audit.score='cosine'` without `audit.calibrate`: the loss needs a gallery,
  and the calibration standardises by the non-member pairs already."""
  a = common.block(config, "audit", population_lib.DEFAULTS)
  if a.score != "cosine" or a.calibrate:
    raise ValueError("--centre takes audit.score=cosine and audit.calibrate=False, got "
                     f"{a.score!r} and {a.calibrate!r}.")
  raw = population_lib.forget_scorer(setup, config, forget_texts)
  strata = plant_strata(setup, forget_texts, nonmember_texts)
  # Every stratum's references in one embedding pass: `stratum_of` maps each to its stratum.
  ref_images = np.concatenate([images for _, _, images, _ in strata])
  ref_texts = np.concatenate([texts for _, _, _, texts in strata])
  stratum_of = np.repeat(np.arange(len(strata)), [len(images) for _, _, images, _ in strata])
  batch_size = config.eval.get("batch_size", 256)

  def score(trainable, embedder=None) -> np.ndarray:
    embedder = federated.embedder_for(setup.model, setup.backbone, trainable, setup.data,
                                      embedder, batch_size)
    refs = population_lib.raw_scores(setup, trainable, ref_texts, "cosine", embedder,
                                     ref_images)
    means = np.bincount(stratum_of, refs) / np.bincount(stratum_of)
    s = raw(trainable, embedder)
    for (_, mask, _, _), mean in zip(strata, means):
      s[mask] -= mean
    return s

  return score


def audit_without_seed(target: np.ndarray, seed: int, in_scores: np.ndarray,
                       in_seeds: np.ndarray, out_scores: np.ndarray, out_seeds: np.ndarray,
                       variance: str, forget_confidence: float,
                       strata: np.ndarray | None = None) -> dict:
  """`population.audit_row` of a model with `seed` against the populations without their
  members of that seed: its twin in `in` and, for a retrain member, itself in `out` (a retrain
  from outside the populations, like a benchmark seed's, loses nothing)."""
  keep_in, keep_out = in_seeds != seed, out_seeds != seed
  return population_lib.audit_row(target, in_scores[keep_in], out_scores[keep_out], variance,
                                  in_seeds=in_seeds[keep_in], out_seeds=out_seeds[keep_out],
                                  forget_confidence=forget_confidence, strata=strata)


def share_over_bound(targets: np.ndarray, target_seeds: np.ndarray, in_scores: np.ndarray,
                     in_seeds: np.ndarray, out_scores: np.ndarray, out_seeds: np.ndarray,
                     variance: str) -> float:
  """The share of the audited `targets [k, n]` whose LiRA TPR@1% exceeds the bound against the
  populations. Twins leave the `in` fit: the population members' per fold
  (`audit.lira_folds`) and each target's own (an extra retrain, like a benchmark seed's, has
  none there)."""
  over = []
  for target, seed in zip(targets, target_seeds):
    keep = in_seeds != seed
    over.append(audit.lira_audit(target, in_scores[keep], out_scores, variance, fprs=(0.01,),
                                 in_seeds=in_seeds[keep], out_seeds=out_seeds
                                 )["lira_tpr@0.01"] > TPR_BOUND)
  return float(np.mean(over))


def redrawn_miss_rates(in_scores: np.ndarray, in_seeds: np.ndarray, retrains: np.ndarray,
                       retrain_seeds: np.ndarray, members: int, draws: int,
                       rng: np.random.Generator, variance: str) -> np.ndarray:
  """`[draws]` for each random draw of `members` of the `retrains [R, n]` as the retrain
  population: the share of the other R − members retrains over the bound
  (`share_over_bound`). The `in` population stays the benchmark's in every draw, so most drawn
  retrains have no twin in it (`paired_redraw_miss_rates` draws twins). The real-data
  counterpart of `probe_lira_bound.py`'s rate, which averages over population draws; the
  benchmark's one draw can sit anywhere in this spread."""
  rates = np.empty(draws)
  for d in range(draws):
    chosen = np.zeros(len(retrains), bool)
    chosen[rng.choice(len(retrains), members, replace=False)] = True
    rates[d] = share_over_bound(retrains[~chosen], retrain_seeds[~chosen], in_scores, in_seeds,
                                retrains[chosen], retrain_seeds[chosen], variance)
  return rates


def paired_redraw_miss_rates(in_scores: np.ndarray, in_seeds: np.ndarray, retrains: np.ndarray,
                             retrain_seeds: np.ndarray, members: int, draws: int,
                             rng: np.random.Generator, variance: str) -> np.ndarray:
  """`[draws]` as `redrawn_miss_rates`, but each draw picks `members` seeds that have both a
  trained and a retrained member and takes both populations from those seeds: twins, as the
  benchmark's populations are (its `in` and `out` members share the seeds
  `audit.first_seed`, ...). Audited: every retrain whose seed is not drawn."""
  for name, seeds in (("in_seeds", in_seeds), ("retrain_seeds", retrain_seeds)):
    if len(np.unique(seeds)) != len(seeds):
      raise ValueError(f"{name} repeats a seed: {sorted(seeds)}.")
  both = np.intersect1d(in_seeds, retrain_seeds)
  if len(both) <= members:
    raise ValueError(f"{len(both)} seeds have both members; a draw of {members} leaves none.")
  rates = np.empty(draws)
  for d in range(draws):
    drawn = rng.choice(both, members, replace=False)
    pick_in, pick_out = np.isin(in_seeds, drawn), np.isin(retrain_seeds, drawn)
    rates[d] = share_over_bound(retrains[~pick_out], retrain_seeds[~pick_out],
                                in_scores[pick_in], in_seeds[pick_in], retrains[pick_out],
                                retrain_seeds[pick_out], variance)
  return rates


def rate_summary(name: str, rates: np.ndarray) -> dict:
  """`{name: mean, name_5_50_95: quantiles, name_zero: share of draws with none over}`."""
  return {name: round(float(rates.mean()), 4),
          f"{name}_5_50_95": [round(float(q), 4) for q in np.quantile(rates, (0.05, 0.5, 0.95))],
          f"{name}_zero": round(float(np.mean(rates == 0)), 4)}


def bound_audit(ins: np.ndarray, in_seeds: np.ndarray, outs: np.ndarray, out_seeds: np.ndarray,
                variance: str, forget_confidence: float, extra: np.ndarray | None = None,
                extra_seeds: np.ndarray | None = None, extra_ins: np.ndarray | None = None,
                extra_in_seeds: np.ndarray | None = None, redraws: int = 0,
                redraw_seed: int = 0, strata: np.ndarray | None = None) -> dict:
  """Issue 14's sanity bound on scored populations (`ins`, `outs`: `[members, n]`): every
  retrain member audited as the held-out retrain against the others, every `extra [k, n]`
  retrain against the full populations (as a benchmark seed's retrain), every trained member
  as the audited model; with extra retrains and `redraws`, the miss rate over random
  populations (`redrawn_miss_rates`), and with `extra_ins` (trained members of extra seeds)
  over twin populations (`paired_redraw_miss_rates`); `strata [n]` (`plants.pair_strata`) for
  the model-level test by stratum. The JSON line's fields."""
  held_out = lambda target, seed: audit_without_seed(
      target, seed, ins, in_seeds, outs, out_seeds, variance, forget_confidence, strata)
  audited = [(int(s), "left out", held_out(outs[j], s)) for j, s in enumerate(out_seeds)]
  retrains, retrain_seeds = outs, out_seeds
  if extra is not None and len(extra):
    audited += [(int(s), "extra", held_out(x, s)) for x, s in zip(extra, extra_seeds)]
    retrains = np.concatenate([outs, extra])
    retrain_seeds = np.concatenate([out_seeds, extra_seeds])
  redraw = {}
  if len(retrains) > len(outs) and redraws:
    # Seeded by `redraw_seed`: the same scores give the same draws.
    rates = redrawn_miss_rates(ins, in_seeds, retrains, retrain_seeds, len(out_seeds), redraws,
                               np.random.default_rng(redraw_seed), variance)
    redraw.update(retrains=len(retrains),
                  model_effect_share_all=round(audit.model_effect_share(retrains), 4),
                  model_effect_share_all_95=[round(v, 3) for v in
                                             audit.model_effect_share_interval(retrains)],
                  redraws=redraws, **rate_summary("redrawn_miss_rate", rates))
    if extra_ins is not None and len(extra_ins):
      rates = paired_redraw_miss_rates(
          np.concatenate([ins, extra_ins]), np.concatenate([in_seeds, extra_in_seeds]),
          retrains, retrain_seeds, len(out_seeds), redraws,
          np.random.default_rng(redraw_seed), variance)
      redraw.update(rate_summary("paired_redraw_miss_rate", rates))
  trained = [held_out(ins[j], seed) for j, seed in enumerate(in_seeds)]
  # The model-level readings (pooled and by stratum, in every `audit_row`) beside the
  # per-example one: each model's p and the counts at MODEL_P.
  model_level = {}
  for test in ("model_level", "model_level_strata"):
    retrain_p = np.array([r[f"{test}_p"] for _, _, r in audited])
    trained_p = np.array([r[f"{test}_p"] for r in trained])
    model_level.update({f"{test}_p": [float(f"{p:.3g}") for p in retrain_p],
                        f"{test}_under": int((retrain_p < MODEL_P).sum()),
                        f"trained_{test}_p": [float(f"{p:.3g}") for p in trained_p],
                        f"trained_{test}_not_under": int((trained_p >= MODEL_P).sum())})
  trained_tpr = np.array([r["lira_tpr@0.01"] for r in trained])
  trained_fq = np.array([r["forget_quality"] for r in trained])
  tpr = np.array([r["lira_tpr@0.01"] for _, _, r in audited])
  fq = np.array([r["forget_quality"] for _, _, r in audited])
  return dict(
      forget_pairs=int(outs.shape[1]),
      # How much one retrain's scores move together (`probe_lira_bound.py` turns it into the
      # bound's miss rate).
      model_effect_share=round(audit.model_effect_share(outs), 4),
      seeds=[s for s, _, _ in audited], how=[h for _, h, _ in audited],
      tpr_at_1pct=[round(float(t), 4) for t in tpr],
      forget_quality=[round(float(p), 3) for p in fq],
      over_tpr_bound=int((tpr > TPR_BOUND).sum()), under_p_bound=int((fq < P_BOUND).sum()),
      audited=len(audited), trained_tpr_at_1pct=[round(float(t), 4) for t in trained_tpr],
      trained_forget_quality=[float(f"{p:.3g}") for p in trained_fq],
      trained_not_flagged=int(((trained_tpr < TRAINED_TPR) | (trained_fq >= TRAINED_P)).sum()),
      trained_audited=len(trained),
      strata=sorted(set(np.asarray(strata).tolist())) if strata is not None else None,
      **model_level, **redraw)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--population_root", required=True,
                      help="a benchmark workdir's population/ folder")
  parser.add_argument("--requests", default="client,sample,concept",
                      help="scenarios of benchmark.scenario_blocks")
  parser.add_argument("--seed", type=int, default=1, help="the benchmark seed's config")
  parser.add_argument("--extra_root", default="", help="a larger cached population's workdir")
  parser.add_argument("--extra_population", type=int, default=16)
  parser.add_argument("--extra_chunk", type=int, default=8)
  parser.add_argument("--extra_first_seed", type=int, default=-1,
                      help="the larger population's first member seed (-1: the config's, "
                           "audit.first_seed); members the benchmark's populations hold are "
                           "skipped either way")
  parser.add_argument("--redraws", type=int, default=200,
                      help="with --extra_root: random draws of the benchmark's population size "
                           "from all the retrains, each auditing the rest (0: none)")
  parser.add_argument("--extra_in", action="store_true",
                      help="with --extra_root: also train the extra seeds' trained members "
                           "(`in`, one population for every request), for the paired redraws "
                           "(`paired_redraw_miss_rates`)")
  parser.add_argument("--centre", action="store_true",
                      help="score D_f relative to each model's held-out pairs of the same "
                           "stratum (`centred_scorer`)")
  parser.add_argument("overrides", nargs="*", help="dotted.key=value")
  args = parser.parse_args()
  if args.extra_in and not (args.extra_root and args.redraws and args.extra_first_seed >= 0):
    # Its members serve the twin redraws only; from the config's first seed they would repeat
    # the benchmark's population.
    raise SystemExit("--extra_in needs --extra_root, --redraws > 0 and --extra_first_seed past "
                     "the population's seeds.")
  bench_config = configs.from_file(CONFIG)
  for name in args.requests.split(","):
    # The benchmark's own cell config and request (the partition and plants, so the setup, do
    # not move with the scenario).
    config = probe_plants.with_overrides(benchmark.scenario_config(bench_config, name, args.seed),
                                         args.overrides)
    setup = builders.build_setup(config)
    a = common.block(config, "audit", population_lib.DEFAULTS)
    request = requests.from_config(setup, config.unlearning, seed=config.seeds.unlearning)
    nonmembers = common.mia_nonmembers(setup, config, request.forget_images)
    score = (centred_scorer if args.centre else population_lib.forget_scorer)(
        setup, config, request.forget_texts, nonmembers)
    pops = population_lib.scored_pair(setup, config, request, args.population_root, score=score)
    ins, outs = pops["in_scores"], pops["out_scores"]
    in_seeds, out_seeds = np.asarray(pops["seeds"]), np.asarray(pops["out_seeds"])
    extra = extra_seeds = extra_ins = extra_in_seeds = None
    if args.extra_root and config.unlearning.plant:
      extra_config = base.config_with(config, {"audit.population": args.extra_population,
                                               "audit.chunk": args.extra_chunk})
      if args.extra_first_seed >= 0:
        extra_config = base.config_with(extra_config,
                                        {"audit.first_seed": args.extra_first_seed})
      extra, extra_seeds = population_lib.out_population(
          setup, extra_config, request, args.extra_root).scores(
              score, skip=np.concatenate([in_seeds, out_seeds]).tolist())
      if args.extra_in:
        extra_ins, extra_in_seeds = population_lib.in_population(
            setup, extra_config, args.extra_root).scores(score, skip=in_seeds.tolist())
    # Seeded by --seed: the same cache, --seed and extras give the same draws (the same for
    # every request).
    print(json.dumps(dict(
        request=name, score=a.score, calibrate=bool(a.calibrate), centre=args.centre,
        **bound_audit(ins, in_seeds, outs, out_seeds, a.variance, a.forget_confidence, extra,
                      extra_seeds, extra_ins, extra_in_seeds, args.redraws, args.seed,
                      request.audit_strata(setup)))),
          flush=True)


if __name__ == "__main__":
  main()
