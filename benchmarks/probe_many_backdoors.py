"""Would a sample plant of many small backdoors pass the audit's sanity bound? The embedded
federation with its one sample backdoor (80 pairs, one trigger, one target) replaced by
`--backdoors` backdoors of `--pairs` pairs each, every one with its own blended trigger and
target caption, on the same holders.

  python benchmarks/probe_many_backdoors.py --backdoors 32 --pairs 10          # learned?
  python benchmarks/probe_many_backdoors.py --backdoors 32 --pairs 20 --no_train --population 10 \
      --extra 20 --extra_in --utility --workdir workdirs/many_backdoors_32x20 \
      plants.sample_backdoor.trigger.opacity=0.5                               # the audit

Why (BENCHMARKS.md, "Why a retrain crosses the bound"): a backdoor's pairs share a trigger and a
target, and every retrain relates the two a little differently, so one retrain's scores on them
move together (`audit.model_effect_share` 0.29-0.36 on the sample plant) and about one retrain
in ten lands over LiRA TPR@1%FPR 3% against a population of any size. `probe_lira_bound.py`
says that about 32 independent backdoors over 320 pairs would bring that under 1%, if each
backdoor's share stays where it was and the backdoors are learned at all. This probe measures
both on real training:

1. One FedAvg run with the plants (`--seed`, a tuning seed by default) and one retrain without
   the small backdoors: each backdoor's attack success rate, both directions (held-out triggered
   probes, `evaluation.plant_metrics`), and test and clean-client R@1.
2. With `--population`, the audit of the request "forget every small backdoor's pairs": the
   `in` and `out` populations (`population.scored_pair`, as the benchmark's), the retrain
   population's share over all pairs and within each backdoor, each retrain member audited
   against the others as `probe_heldout_audit.py` does, and every trained member too (the
   bound's other half) (`probe_heldout_audit.bound_audit`). `--extra` more retrains (seeds
   after the population's) are audited against the full populations, as a benchmark seed's
   retrain is, and give the miss rate over random populations drawn from all the retrains;
   `--extra_in` trains those seeds' trained members too, for draws of twin populations.
   `--utility`: each trained member's clean R@1 against the retrain with its seed (paired).
   `--centre` scores each model relative to its own held-out probes of each backdoor
   (`probe_heldout_audit.centred_scorer`).

Triggers: two colours of an 8-colour palette in checker or stripes, or one colour solid, blended
over the whole image at the sample plant's opacity; the default plants' two triggers are left
out. Targets: captions of clean emoji images without a skin tone, other than the default
plants' targets.
Both are drawn from `--design_seed`. One JSON line per stage.
"""
from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import time

from ease_jax import runtime

runtime.avoid_cpu_hang()
runtime.one_cpu_device_per_core()

import numpy as np  # noqa: E402

from ease_jax import audit  # noqa: E402
from ease_jax import builders  # noqa: E402
from ease_jax import configs  # noqa: E402
from ease_jax import training  # noqa: E402
from ease_jax.data import plants as plants_lib  # noqa: E402
from ease_jax.unlearning import base  # noqa: E402
from ease_jax.unlearning import common  # noqa: E402
from ease_jax.unlearning import population as population_lib  # noqa: E402
from ease_jax.unlearning import requests  # noqa: E402

import common as bench_common  # noqa: E402  (same folder)
import probe_heldout_audit  # noqa: E402
import probe_plants  # noqa: E402
import utility_population  # noqa: E402

CONFIG = (pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs" /
          "unlearn_emoji.py")
PALETTE = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
           (255, 255, 255), (0, 0, 0))
REPLACED = "sample_backdoor"


def trigger_designs(config) -> list[dict]:
  """Every blended trigger of the palette the default plants do not use: solid colours, and
  checker and stripes of unordered colour pairs (the two orders differ by a phase only)."""
  base_trigger = dict(config.plants[REPLACED].trigger)
  taken = {(p.trigger.pattern, frozenset(map(tuple, p.trigger.colors)))
           for p in config.plants.values() if p.kind == "backdoor"}
  out = [dict(base_trigger, pattern="solid", colors=(c, c)) for c in PALETTE]
  for pattern in ("checker", "stripes"):
    for a, b in itertools.combinations(PALETTE, 2):
      if (pattern, frozenset((a, b))) not in taken:
        out.append(dict(base_trigger, pattern=pattern, colors=(a, b)))
  return out


def target_captions(setup, config) -> list[str]:
  """Captions of emoji with no skin tone (no ':'), other than the default plants' targets."""
  taken = {p.target_caption for p in config.plants.values() if p.kind == "backdoor"}
  ds = setup.dataset
  clean = plants_lib.clean_images(ds, np.arange(ds.num_images))
  caps = sorted({ds.captions[t] for t in ds.first_texts()[clean] if t >= 0})
  return [c for c in caps if ":" not in c and c not in taken]


def plant_names(taken: list[str], count: int) -> list[str]:
  """`count` names "small_<letter>". A plant's random stream is keyed by its name's code-point
  sum (`plants.plant_knowledge`), so the names differ in one letter each (never a permutation of
  digits) and skip the letters whose sum equals a default plant's."""
  word = lambda name: sum(map(ord, name))
  used = {word(n) for n in taken}
  names = [n for n in ("small_" + ch for ch in
                       "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
           if word(n) not in used]
  if count > len(names):
    raise SystemExit(f"--backdoors must be at most {len(names)}, got {count}.")
  return names[:count]


def many_backdoors_config(config, backdoors: int, pairs: int, design_seed: int):
  """`config` with `plants.sample_backdoor` replaced by `backdoors` plants of `pairs` pairs on the
  same holders, each its own trigger and target."""
  if backdoors < 1:
    raise SystemExit(f"--backdoors must be >= 1, got {backdoors}.")
  c = base.config_with(config, {})
  spec = dict(c.plants[REPLACED])
  # The unchanged federation's setup, for its captions only (a few seconds).
  setup = builders.build_setup(config)
  rng = np.random.default_rng(design_seed)
  triggers, targets = trigger_designs(c), target_captions(setup, c)
  if backdoors > min(len(triggers), len(targets)):
    raise SystemExit(f"only {len(triggers)} triggers and {len(targets)} targets to draw from.")
  chosen_t = rng.choice(len(triggers), backdoors, replace=False)
  chosen_c = rng.choice(len(targets), backdoors, replace=False)
  plants = {k: dict(v) for k, v in c.plants.items() if k != REPLACED}
  for i, name in enumerate(plant_names(list(plants), backdoors)):
    plants[name] = dict(spec, num_pairs=pairs, trigger=triggers[chosen_t[i]],
                        target_caption=targets[chosen_c[i]])
  c.plants = plants
  return c


def small_plants(setup) -> list[str]:
  return [n for n in setup.plants if n.startswith("small_")]


def small_asr(setup, row: dict, direction: str) -> np.ndarray:
  """`[backdoors]` each small backdoor's attack success rate in `direction` from a `model_row`."""
  return np.asarray([row[f"asr/{n}/{direction}"] for n in small_plants(setup)])


def forget_request(setup) -> requests.UnlearningRequest:
  """Every small backdoor's pairs at once."""
  return requests.plants_request(setup, small_plants(setup))


def learned(setup, config, plan=None) -> dict:
  """One FedAvg run (the retrain's when `plan` is given): each small backdoor's ASR, R@1."""
  t0 = time.perf_counter()
  res = training.run_fedavg(setup, config, plan=plan, options=training.run_options(
      setup, config, None, progress=False))
  train_s = time.perf_counter() - t0
  row = utility_population.model_row(setup, res.trainable, with_plants=True)
  out = dict(train_s=round(train_s, 1), **{k: round(v, 1) for k, v in row.items()
                                            if not k.startswith("asr/small_")})
  for d in ("i2t", "t2i"):
    v = small_asr(setup, row, d)
    out.update({f"small/{d}/mean": round(float(v.mean()), 1),
                f"small/{d}/min": round(float(v.min()), 1),
                f"small/{d}/max": round(float(v.max()), 1),
                f"small/{d}/median": round(float(np.median(v)), 1),
                f"small/{d}/at_least_50": int((v >= 50).sum()),
                f"small/{d}/each": [round(float(x), 1) for x in v]})
  return out


def audited(setup, config, request, workdir: pathlib.Path, extra: int, extra_in: bool,
            redraws: int, redraw_seed: int, centre: bool = False) -> dict:
  """The audit's sanity bound on populations of the many-backdoor request
  (`probe_heldout_audit.bound_audit`), and the retrains' share within each backdoor. `extra`
  more retrains (and with `extra_in` the trained members of their seeds) are trained under
  `workdir/extra`, from the seed after the population's. `centre`: each model's scores
  relative to its own held-out probes of each backdoor (`probe_heldout_audit.centred_scorer`)."""
  a = common.block(config, "audit", population_lib.DEFAULTS)
  nonmembers = common.mia_nonmembers(setup, config, request.forget_images)
  score = (probe_heldout_audit.centred_scorer if centre else population_lib.forget_scorer)(
      setup, config, request.forget_texts, nonmembers)
  pops = population_lib.scored_pair(setup, config, request, workdir, score=score)
  ins, outs = pops["in_scores"], pops["out_scores"]
  in_seeds, out_seeds = np.asarray(pops["seeds"]), np.asarray(pops["out_seeds"])
  retrains, more = outs, {}
  if extra:
    extra_config = base.config_with(config, {"audit.population": extra,
                                             "audit.first_seed": int(out_seeds.max()) + 1})
    more["extra"], more["extra_seeds"] = population_lib.out_population(
        setup, extra_config, request, workdir / "extra").scores(score)
    retrains = np.concatenate([outs, more["extra"]])
    if extra_in:
      more["extra_ins"], more["extra_in_seeds"] = population_lib.in_population(
          setup, extra_config, workdir / "extra").scores(score)
  # Which small backdoor each forget pair belongs to.
  group = plants_lib.pair_strata(setup.dataset, request.forget_texts)
  within = [audit.model_effect_share(retrains[:, group == n]) for n in small_plants(setup)]
  return dict(
      centre=centre, in_time_s=round(pops["in_time_s"], 1),
      out_time_s=round(pops["out_time_s"], 1),
      model_effect_share_within=round(float(np.mean(within)), 4),
      model_effect_share_within_5_50_95=[round(float(q), 3)
                                         for q in np.quantile(within, (0.05, 0.5, 0.95))],
      **probe_heldout_audit.bound_audit(ins, in_seeds, outs, out_seeds, a.variance,
                                        a.forget_confidence, redraws=redraws,
                                        redraw_seed=redraw_seed, strata=group, **more))


def utility(setup, config, request, workdir: pathlib.Path) -> dict:
  """What the small backdoors cost the clean data: each `in` member (trained with them) against
  the `out` member of its seed (retrained without them), paired (`utility_population`), and
  the `in` members' attack success rates, averaged over the backdoors."""
  in_pop, out_pop = population_lib.train_pair(setup, config, request, workdir)
  with_plants = utility_population.member_rows(setup, in_pop, with_plants=True)
  without = utility_population.member_rows(setup, out_pop, with_plants=False)
  out = dict(members=len(with_plants))
  for metric in utility_population.METRICS:
    out[f"in/{metric}"] = [round(r[metric], 1) for r in with_plants]
    out[f"out/{metric}"] = [round(r[metric], 1) for r in without]
    out[f"in-out/{metric}"] = {k: round(v, 3) for k, v in bench_common.paired_difference(
        [r[metric] for r in with_plants], [r[metric] for r in without]).items()}
  for d in ("i2t", "t2i"):
    out[f"small/{d}/mean_per_member"] = [round(float(small_asr(setup, r, d).mean()), 1)
                                         for r in with_plants]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backdoors", type=int, default=32)
  parser.add_argument("--pairs", type=int, default=10, help="pairs per backdoor")
  parser.add_argument("--seed", type=int, default=0, help="the run's seed (0: a tuning seed)")
  parser.add_argument("--design_seed", type=int, default=0, help="draws triggers and targets")
  parser.add_argument("--no_train", action="store_true", help="skip stage 1")
  parser.add_argument("--population", type=int, default=0, help="members per population (0: "
                      "no audit)")
  parser.add_argument("--chunk", type=int, default=5, help="members per batched computation")
  parser.add_argument("--extra", type=int, default=0, help="more retrains to audit")
  parser.add_argument("--extra_in", action="store_true",
                      help="with --extra: the extra seeds' trained members too (twin redraws)")
  parser.add_argument("--redraws", type=int, default=200,
                      help="with --extra: random populations drawn from all the retrains")
  parser.add_argument("--utility", action="store_true",
                      help="with --population: each member's clean R@1, trained against "
                           "retrained (paired by seed)")
  parser.add_argument("--centre", action="store_true",
                      help="with --population: score each model's pairs relative to its own "
                           "held-out probes of each backdoor (`probe_heldout_audit.centred_"
                           "scorer`)")
  parser.add_argument("--workdir", default="", help="the populations' cache")
  parser.add_argument("overrides", nargs="*", help="dotted.key=value")
  args = parser.parse_args()
  if args.population and not args.workdir:
    raise SystemExit("--population needs --workdir (the populations' cache).")
  if (args.extra or args.utility or args.centre) and not args.population:
    raise SystemExit("--extra, --utility and --centre need --population.")
  if args.extra_in and not (args.extra and args.redraws):
    raise SystemExit("--extra_in serves the twin redraws only: it needs --extra and --redraws.")
  config = probe_plants.with_overrides(configs.from_file(CONFIG),
                                       [f"seed={args.seed}"] + args.overrides)
  config = many_backdoors_config(config, args.backdoors, args.pairs, args.design_seed)
  config.fed.history_size = 0
  setup = builders.build_setup(config)
  request = forget_request(setup)
  head = dict(backdoors=args.backdoors, pairs=args.pairs, seed=args.seed,
              design_seed=args.design_seed, overrides=" ".join(args.overrides),
              targets=[setup.plants[n].spec.target_caption for n in small_plants(setup)])
  if not args.no_train:
    print(json.dumps(dict(head, stage="trained", **learned(setup, config))), flush=True)
    plan = builders.round_plan(setup, config, request.retain_client_texts(setup),
                               request.retain_clients(setup))
    print(json.dumps(dict(head, stage="retrain", **learned(setup, config, plan))), flush=True)
  if args.population:
    pop_config = base.config_with(config, {"audit.population": args.population,
                                           "audit.chunk": args.chunk})
    print(json.dumps(dict(head, stage="audit", **audited(
        setup, pop_config, request, pathlib.Path(args.workdir), args.extra, args.extra_in,
        args.redraws, args.seed, args.centre))), flush=True)
    if args.utility:
      print(json.dumps(dict(head, stage="utility", **utility(
          setup, pop_config, request, pathlib.Path(args.workdir)))), flush=True)


if __name__ == "__main__":
  main()
