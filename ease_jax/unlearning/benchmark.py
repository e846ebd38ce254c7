"""The comparison benchmark: methods × scenarios × seeds against the retrain reference.

`run_benchmark(config, workdir)` is what `experiments/benchmark.py` runs. Layout of the workdir:

  seed{s}/train/                 FedAvg before unlearning (shared by the scenarios of a seed)
  seed{s}/{scenario}/retrain/    the retrain reference of that request
  results.jsonl                  one row per finished (scenario, seed, method) cell
  benchmark.md, benchmark.csv    mean ± std over seeds (sample std, ddof = 1); p-values as
                                 their median and range over seeds
  benchmark.png                  Δ forget R@1 vs Δ retain R@1 to retrain, per scenario

Resumable: the federated runs resume from their orbax checkpoints, and cells already in
`results.jsonl` are skipped, so an interrupted benchmark continues where it stopped. Each row
carries the key of the config that computed it (`row_keys`): a row computed under other method
knobs is neither skipped nor reported, it is redone. The trained, retrained and population models
come from their own fingerprinted caches, never mixed in: a `train/` folder written under other
federation settings (`fed`, `lora`, `data`, `model`, the training seeds, the plants) is refused
with the keys that differ (`CheckpointMismatchError`), a `retrain/` folder of another request
is refused by name, and populations live in folders named by their hash (other settings train
new ones). Each row
holds the retrieval metrics (forget / retain / test, R@{1,5,10} both directions, R-precision),
the membership-inference AUC on D_f vs matched held-out non-members, wall and compile time.
Gaps to retrain, speed-ups and the aggregates are computed from the rows (`aggregate`).
"""
from __future__ import annotations

import csv
import pathlib
import time
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from ease_jax import builders
from ease_jax import checkpointing
from ease_jax import configs
from ease_jax import jsonio
from ease_jax import mia
from ease_jax import validation
from ease_jax.unlearning import base
from ease_jax.unlearning import cell as cell_lib
from ease_jax.unlearning import common
from ease_jax.unlearning import methods as methods_lib
from ease_jax.unlearning import population as population_lib

SPLITS = cell_lib.SPLITS
SEED_KEYS = ("partition", "init", "sampling", "data", "unlearning")
# (column, row key) of the aggregated metrics, in table order.
METRICS = (
    [f"{s}/{d}_r1" for s in SPLITS for d in ("i2t", "t2i")]
    + [f"{s}/i2t_rprec" for s in SPLITS]
    + [f"{s}/mean_r1" for s in SPLITS]
    + [f"{s}/mean_r1_gap" for s in SPLITS]
    + ["mia_auc", "mia_auc_gap", "wall_time_s", "speedup_vs_retrain"]
    + ["lira_auc", "lira_tpr@0.01", "lira_tpr@0.001", "lira_model_effect_share"])
# The model-level tests' p-values (`audit.model_mean_test`, `audit.stratified_mean_test`), by
# their column heads: reported beside the criteria, not among them.
MODEL_LEVEL_HEADS = dict(model_level_p="model-level p",
                         model_level_strata_p="model-level p by stratum (Bonferroni)")
# The audit's p-values, summarised over seeds by their median and range (`<key>_over_seeds`),
# never a mean: the audit decides per seed (forget quality: flagged at p < 0.01 on every seed
# iff the largest is; cleared at p >= 0.05 iff the smallest is), and a mean of p-values is
# neither.
P_VALUES = ("forget_quality", "forget_quality_point", "forget_quality_iid",
            "forget_quality_min") + tuple(MODEL_LEVEL_HEADS)


def scenario_config(config: ml_collections.ConfigDict, scenario: str, seed: int
                    ) -> ml_collections.ConfigDict:
  """The config of one cell: every run seed set to `seed`, `unlearning` = the scenario block."""
  if scenario not in config.benchmark.scenario_blocks:
    raise ValueError(f"Unknown scenario {scenario!r}; defined: "
                     f"{sorted(config.benchmark.scenario_blocks)}.")
  # `benchmark.seed_keys`: which seeds a benchmark seed sets (a planted federation keeps its
  # partition, so one population of retrains serves every seed).
  keys = tuple(config.benchmark.get("seed_keys", SEED_KEYS))
  overrides: dict[str, Any] = {f"seeds.{k}": int(seed) for k in keys}
  if "seed" in config:
    overrides["seed"] = int(seed)
  # The scenario's block over the request defaults, not over `config.unlearning`: a sample
  # scenario must not inherit the main request's leaving clients or plant.
  overrides["unlearning"] = dict(configs.UNLEARNING_DEFAULTS,
                                 **config.benchmark.scenario_blocks[scenario])
  return base.config_with(config, overrides)


def _dotted(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_dotted(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _variants(b: ml_collections.ConfigDict) -> dict[str, Any]:
  variants = b.get("variants")
  return variants.to_dict() if hasattr(variants, "to_dict") else dict(variants or {})


def resolve_methods(config: ml_collections.ConfigDict) -> dict[str, base.Method]:
  """`config.benchmark.methods` by name: registered methods, or `benchmark.variants` entries.

  A variant is `name: {method: <registered name>, overrides: {block: {key: value}}}`, e.g.
  `ease_retain90: {method: 'ease', overrides: {gsd: {retain_energy: 0.9}}}`: the same method
  under other knobs, in the same table. Unknown names and override keys (checked against
  `config`) fail here, before any training.
  """
  b = config.benchmark
  variants = _variants(b)
  out = {}
  for name in b.methods:
    if name in variants:
      v = variants[name]
      unknown = sorted(set(v) - {"method", "overrides"})
      if unknown or "method" not in v:
        raise ValueError(f"benchmark.variants.{name} needs 'method' and optional 'overrides'; "
                         f"got keys {sorted(v)}.")
      overrides = _dotted(v.get("overrides") or {})
      base.config_with(config, overrides)  # KeyError naming an unknown key.
      out[name] = base.with_overrides(methods_lib.get(v["method"]), overrides)
    else:
      out[name] = methods_lib.get(name)
  return out


BENCHMARK_RULES = {
    "benchmark.seeds": validation.int_tuple(0),
    "benchmark.scenarios": validation.str_tuple(),
    "benchmark.methods": validation.str_tuple(),
    "benchmark.mia_score": validation.one_of(*mia.SCORES),
    "benchmark.seed_keys": validation.str_tuple(),
    "benchmark.variants": validation.anything,         # checked by `resolve_methods`
    "benchmark.scenario_blocks": validation.anything,  # checked as each cell's `unlearning`
}


def check_cells(config: ml_collections.ConfigDict) -> dict[int, builders.FederatedSetup]:
  """Validates the benchmark block and every (scenario, seed) cell's config and request; returns
  each seed's setup (built once, reused by the run)."""
  validation.require_blocks(config, ("benchmark", "unlearning"), "the benchmark",
                            "experiments/configs/benchmark_emoji.py")
  validation.validate(config, [BENCHMARK_RULES])
  from ease_jax.unlearning import requests  # pylint: disable=g-import-not-at-top
  setups = {}
  for seed in config.benchmark.seeds:
    for scenario in config.benchmark.scenarios:
      cfg = scenario_config(config, scenario, seed)
      validation.validate(cfg)
      if seed not in setups:
        setups[seed] = builders.build_setup(cfg)
      requests.from_config(setups[seed], cfg.unlearning, seed=cfg.seeds.unlearning)
  return setups


def read_rows(path: pathlib.Path) -> list[dict[str, Any]]:
  """The finished cells' rows (a row cut by a kill is dropped, and that cell redone)."""
  return jsonio.read_jsonl(path) if path.exists() else []


def row_keys(config: ml_collections.ConfigDict) -> dict[tuple[str, int, str], str]:
  """`(scenario, seed, method) -> key` of every row the config asks for: a hash of the cell's
  config without the `benchmark` block (which lists cells, not how they are computed), plus
  the MIA score; a method's row also hashes every method's block, its variant overrides and
  its code version (`methods.ROWS_VERSIONS`, above 1 only).
  The reference rows (retrain, original) do not depend on the method blocks, so tuning one
  method keeps them. A child row (`ease+pfl`) shares its parent's key."""
  b = config.benchmark
  variants = _variants(b)
  method_blocks = set(methods_lib.CONFIG_BLOCKS)
  keys = {}
  for seed in b.seeds:
    for scenario in b.scenarios:
      cfg = scenario_config(config, scenario, seed).to_dict()
      cfg.pop("benchmark", None)
      common = {k: v for k, v in cfg.items() if k not in method_blocks}
      common["benchmark.mia_score"] = b.mia_score
      blocks = {k: v for k, v in cfg.items() if k in method_blocks}
      for method in ("retrain", "original", *b.methods):
        ident = dict(common, method=method)
        if method not in ("retrain", "original"):
          ident.update(method_blocks=blocks, variant=variants.get(method))
          registered = (variants.get(method) or {}).get("method", method)
          version = methods_lib.ROWS_VERSIONS.get(registered, 1)
          if version > 1:  # Left out at 1: the keys of rows written before versions stay.
            ident["rows_version"] = version
        keys[(scenario, int(seed), method)] = checkpointing.fingerprint_hash(
            checkpointing.fingerprint(jsonio.to_jsonable(ident)))
  return keys


def current_rows(rows: Sequence[dict[str, Any]], keys: Mapping[tuple[str, int, str], str]
                 ) -> list[dict[str, Any]]:
  """The rows that the config of `keys` (`row_keys`) would compute: right (scenario, seed,
  method) and key. Rows of other seeds, scenarios or methods, rows computed under other knobs
  and rows written before keys existed are left out of tables and counts (they stay in the
  file)."""
  return [r for r in rows if r.get("key") is not None and r["key"] == keys.get(
      (r["scenario"], r["seed"], r.get("parent") or r["method"]))]


def report(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
           ) -> dict[str, Any]:
  """Aggregates the finished cells of `config` in `workdir` and writes the tables and plot."""
  workdir = pathlib.Path(workdir)
  path = workdir / "results.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"No finished cells to report: {str(path)!r} does not exist (run "
                            "the benchmark first).")
  every = read_rows(path)
  rows = current_rows(every, row_keys(config))
  if every and not rows:
    # Tables of nothing would overwrite the ones the rows were reported in.
    raise ValueError(f"None of the {len(every)} rows of {str(path)!r} was computed under this "
                     "config (other knobs, seeds, scenarios or methods, or rows written before "
                     "rows carried their config's key); nothing was rewritten. Run the benchmark "
                     "with this config to compute them.")
  table = aggregate(rows, list(config.benchmark.scenarios))
  write_outputs(workdir, rows, table, list(config.benchmark.scenarios), config)
  return dict(rows=rows, table=table)


def run_benchmark(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                  progress: bool = True) -> dict[str, Any]:
  """Runs every missing (scenario, seed, method) cell, then writes the tables and the plot."""
  b = config.benchmark
  method_fns = resolve_methods(config)
  setups = check_cells(config)  # Every cell's config and request, before any training.
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  results = workdir / "results.jsonl"
  keys = row_keys(config)
  t_start = time.perf_counter()
  for seed in b.seeds:
    setup = setups[seed]
    for scenario in b.scenarios:
      # A parent row is written after its children (below), so a finished parent means a
      # finished cell.
      done = {r["method"] for r in current_rows(read_rows(results), keys)
              if r["scenario"] == scenario and r["seed"] == seed and not r.get("parent")}
      todo = [m for m in ("retrain", "original", *b.methods) if m not in done]
      if not todo:
        continue
      cfg = scenario_config(config, scenario, seed)
      cell = cell_lib.Cell(cfg, workdir / f"seed{seed}", workdir / f"seed{seed}" / scenario,
                           setup=setup, mia_score=b.mia_score,
                           population_root=workdir / "population")

      def record(outcome):
        row = dict(scenario=scenario, seed=seed, knowledge=cell.forgotten_knowledge,
                   key=keys[(scenario, seed, outcome.parent or outcome.method)],
                   **cell.row(outcome))
        jsonio.append_jsonl(results, row)
        knowledge = " ".join(f"{k.split('/', 1)[1]} {row[k]:5.1f}" for k in row["knowledge"])
        wall = outcome.wall_time_s
        summary = (f"{scenario:8s} seed {seed} {outcome.method:18s} {knowledge} forget "
                   f"{row.get('forget/mean_r1', float('nan')):5.1f} retain "
                   f"{row['retain/mean_r1']:5.1f} test {row['test/mean_r1']:5.1f} "
                   f"LiRA {row.get('lira_auc', float('nan')):.3f} MIA {row['mia_auc']:.3f} "
                   f"time {wall if wall is None else round(wall, 2)}")
        logging.info("%s", summary)
        if progress:
          print(f"[{time.perf_counter() - t_start:7.0f}s] {summary}", flush=True)

      for outcome in cell.reference_outcomes(tuple(n for n in ("retrain", "original")
                                                   if n in todo)):
        record(outcome)
      for name in b.methods:
        if name not in todo:
          continue
        try:
          outcomes = cell.run_method(name, method_fns[name])
        except Exception as e:  # pylint: disable=broad-except
          # One broken method must not cost the other cells; a rerun retries it.
          logging.exception("%s failed on %s seed %d", name, scenario, seed)
          jsonio.append_jsonl(workdir / "errors.jsonl",
                              dict(scenario=scenario, seed=seed, method=name, error=repr(e)))
          print(f"{scenario} seed {seed} {name} FAILED: {e!r}", flush=True)
          continue
        outcomes[0].diagnostics.pop("angles_deg", None)  # Large; kept by the unlearn binary.
        # Children (`ease+pfl`) first: a kill between the rows then leaves the parent undone,
        # and the rerun redoes the whole method instead of losing its children for good.
        for outcome in (*outcomes[1:], outcomes[0]):
          record(outcome)
  return report(config, workdir)


def with_gaps(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Rows plus gaps to the retrain row of the same (scenario, seed) and the speed-up."""
  ref = {(r["scenario"], r["seed"]): r for r in rows if r["method"] == "retrain"}
  return [cell_lib.with_gaps(r, ref.get((r["scenario"], r["seed"]))) for r in rows]


def aggregate(rows: Sequence[dict[str, Any]], scenarios: Sequence[str]
              ) -> list[dict[str, Any]]:
  """Mean and sample std (ddof = 1; 0 for a single seed) over seeds of each (scenario, method).

  Returns rows `{scenario, method, seeds, <metric>: (mean, std) or None}` in scenario order, the
  method order of first appearance (retrain, original, then the methods); the p-values
  (`P_VALUES`) also as `<key>_over_seeds`: (median, min, max) or None.
  """
  rows = with_gaps(rows)
  # Last row wins for a cell written twice (e.g. a cell redone after a partial line).
  cells: dict[tuple[str, str, int], dict[str, Any]] = {}
  for r in rows:
    cells[(r["scenario"], r["method"], r["seed"])] = r
  order: list[str] = []
  for r in rows:
    if r["method"] not in order:
      order.append(r["method"])
  out = []
  for scenario in scenarios:
    for method in order:
      group = [r for (s, m, _), r in cells.items() if s == scenario and m == method]
      if not group:
        continue
      agg: dict[str, Any] = dict(scenario=scenario, method=method,
                                 seeds=sorted(r["seed"] for r in group))
      knowledge = [k for k in dict.fromkeys(k for r in group for k in r)
                   if k.startswith(cell_lib.KNOWLEDGE_PREFIXES)
                   and k.endswith(cell_lib.DIRECTIONS + tuple(f"{d}_gap"
                                                               for d in cell_lib.DIRECTIONS))]
      agg["knowledge"] = list(group[0].get("knowledge", []))
      agg["counts"] = {}
      for k in (*METRICS, *knowledge, *P_VALUES):
        vals = [float(r[k]) for r in group if r.get(k) is not None]
        if k in P_VALUES:
          agg[f"{k}_over_seeds"] = (float(np.median(vals)), min(vals), max(vals)) if vals else None
        else:
          agg[k] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
                    ) if vals else None
        if 0 < len(vals) < len(group):  # a seed without the value: say so in the table
          agg["counts"][k] = len(vals)
      out.append(agg)
  return out


def _pm(v: tuple[float, float] | None, digits: int = 1, row: Mapping[str, Any] | None = None,
        key: str = "") -> str:
  """`mean ± std`. Given the aggregated `row` and the metric's `key`: the mean alone when one
  seed has the value (there is no spread to show), and `(k/n seeds)` after it when only k of
  the row's n seeds have it."""
  if v is None:
    return "—"
  have = row.get("counts", {}).get(key, len(row["seeds"])) if row else None
  text = f"{v[0]:.{digits}f}"
  if have != 1:
    text += f" ± {v[1]:.{digits}f}"
  return text + (_seeds_note(row, key) if row else "")


def _p_range(row: Mapping[str, Any], key: str) -> str | None:
  """A p-value over seeds by its range (its largest decides "flagged on every seed", its
  smallest "cleared on every seed"; one value where both read the same); None without it."""
  over = row.get(f"{key}_over_seeds")
  if over is None:
    return None
  low, high = f"{over[1]:.2g}", f"{over[2]:.2g}"
  return low if low == high else f"{low}–{high}"


def _seeds_note(row: Mapping[str, Any], key: str) -> str:
  """` (k/n seeds)` when only k of the row's n seeds have `key`."""
  have = row.get("counts", {}).get(key)
  return f" ({have}/{len(row['seeds'])} seeds)" if have is not None else ""


def _p_cell(row: Mapping[str, Any]) -> str:
  """Forget quality over seeds: the range of the calibrated p-value (`_p_range`), then the
  medians of the point estimate and the exact p-value, and `(k/n seeds)` when only k of the
  row's n seeds have the p-value."""
  text = _p_range(row, "forget_quality")
  if text is None:
    return "—"
  point, iid = (row.get(f"forget_quality{k}_over_seeds") for k in ("_point", "_iid"))
  # Rows written before the calibration bound have no point estimate beside the p-value.
  extra = [f"{v[0]:.2g}" for v in (point, iid) if v is not None]
  text += f" ({'; '.join(extra)})" if extra else ""
  return text + _seeds_note(row, "forget_quality")


def format_markdown(table: Sequence[dict[str, Any]], scenarios: Sequence[str]) -> str:
  """One markdown table per scenario (mean ± std over seeds; forget quality's p-values by their
  range and medians): the forgotten knowledge (attack success rates or tone accuracy, and their
  gap to retrain), retrieval gaps, the audit, time."""
  parts = []
  for scenario in scenarios:
    rows = [r for r in table if r["scenario"] == scenario]
    if not rows:
      continue
    knowledge = rows[0].get("knowledge") or []
    short = lambda k: k.split("/", 1)[1].replace("/", " ")
    # Runs from before the model-level tests have no such columns.
    model_level = [k for k in MODEL_LEVEL_HEADS if any(r.get(f"{k}_over_seeds") for r in rows)]
    head = ("| method | " + "".join(f"{short(k)} | " for k in knowledge)
            + "Δ knowledge | forget R@1 (Δ) | Δretain | Δtest | forget quality: range over "
            "seeds (medians: point; iid) | LiRA AUC | TPR@1%FPR | "
            + "".join(f"{MODEL_LEVEL_HEADS[k]}: range | " for k in model_level)
            + "MIA AUC (Δ) | time (s) | speed-up |")
    share = next((r["lira_model_effect_share"][0] for r in rows
                  if r.get("lira_model_effect_share")), None)
    share_note = ("" if share is None else
                  f"; the retrain population's model-effect share {share:.2f}: the higher, the "
                  "further one retrain's TPR@1% strays from 1%")
    parts.append(f"**{scenario} unlearning** ({max(len(r['seeds']) for r in rows)} seeds; "
                 "Δ = method − retrain; knowledge in %, R@1 = mean of both directions"
                 f"{share_note})\n")
    parts += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
      pm = lambda key, digits=1, r=r: _pm(r.get(key), digits, r, key)
      gaps = " / ".join(pm(f"{k}_gap") for k in knowledge) or "—"
      forget = (f"{pm('forget/mean_r1')} ({pm('forget/mean_r1_gap')})"
                if r.get("forget/mean_r1") else "—")
      mia_cell = pm("mia_auc", 3) + (f" ({r['mia_auc_gap'][0]:+.3f})"
                                     if r.get("mia_auc_gap") else "")
      speed = "—" if r["speedup_vs_retrain"] is None else f"{r['speedup_vs_retrain'][0]:.1f}×"
      fq_cell = _p_cell(r)
      model_cell = ""
      for k in model_level:
        cell = _p_range(r, k)
        model_cell += ("—" if cell is None else cell + _seeds_note(r, k)) + " | "
      parts.append(
          f"| {r['method']} | " + "".join(f"{pm(k)} | " for k in knowledge)
          + f"{gaps} | {forget} | {pm('retain/mean_r1_gap')} | {pm('test/mean_r1_gap')} | "
          f"{fq_cell} | {pm('lira_auc', 3)} | {pm('lira_tpr@0.01', 3)} | {model_cell}"
          f"{mia_cell} | {pm('wall_time_s', 2)} | {speed} |")
    parts.append("")
  return "\n".join(parts)


# (label, diagnostics key, reduction over modules) of `ease_diagnostics`.
EASE_DIAGNOSTICS = (
    ("forget rank Σ", "forget_rank", np.sum),
    ("unique rank Σ", "unique_rank", np.sum),
    ("modules with a unique direction", "unique_rank", np.count_nonzero),
    ("‖Δ_BKE‖ after P_u", "bke_delta_norm", np.sum),
    ("GSD s", "gsd_time_s", np.sum),
    ("BKE s", "bke_projection_time_s", np.sum),
)


def ease_diagnostics(rows: Sequence[dict[str, Any]], scenarios: Sequence[str],
                     method: str = "ease") -> str:
  """Markdown table of what GSD found per scenario (mean ± std over seeds): summed forget and
  unique-subspace ranks over the LoRA modules, modules with any forget-exclusive direction, the
  size of the projected excision. A unique rank of 0 means P_u = 0: the method cannot move."""
  lines = ["| scenario | seeds | " + " | ".join(label for label, _, _ in EASE_DIAGNOSTICS)
           + " | modules |", "|" + "---|" * (len(EASE_DIAGNOSTICS) + 3)]
  found = False
  for scenario in scenarios:
    group = [r for r in rows if r["scenario"] == scenario and r["method"] == method
             and "unique_rank" in r.get("diagnostics", {})]
    if not group:
      continue
    found = True
    cells = []
    for _, key, reduce in EASE_DIAGNOSTICS:
      vals = [float(reduce(np.asarray(r["diagnostics"][key]))) for r in group]
      cells.append(_pm((float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1
                        else 0.0), 2 if key.endswith(("norm", "_s")) else 1))
    modules = len(group[0]["diagnostics"]["unique_rank"])
    lines.append(f"| {scenario} | {len(group)} | " + " | ".join(cells) + f" | {modules} |")
  return "\n".join(lines) if found else ""


def write_csv(path: pathlib.Path, table: Sequence[dict[str, Any]]) -> None:
  over_seeds = ("median", "min", "max")
  cols = (["scenario", "method", "num_seeds"]
          + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
          + [f"{k}_{s}" for k in P_VALUES for s in over_seeds])
  with path.open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(cols)
    for r in table:
      vals = []
      for k in METRICS:
        vals += ["", ""] if r[k] is None else [f"{r[k][0]:.6g}", f"{r[k][1]:.6g}"]
      for k in P_VALUES:
        v = r.get(f"{k}_over_seeds")
        vals += [""] * len(over_seeds) if v is None else [f"{x:.6g}" for x in v]
      w.writerow([r["scenario"], r["method"], len(r["seeds"])] + vals)


def plot(path: pathlib.Path, table: Sequence[dict[str, Any]], scenarios: Sequence[str]) -> None:
  """Per scenario: the forgotten knowledge's gap to retrain (the first knowledge metric: a
  planted backdoor's i2t attack success, a tone's accuracy; else forget R@1, where a negative gap
  is over-forgetting) against the retain R@1 gap, error bars = std over seeds; retrain sits at
  the origin."""
  from ease_jax import plotting  # noqa: F401  pylint: disable=g-import-not-at-top (sets Agg)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  scenarios = [s for s in scenarios if any(r["scenario"] == s for r in table)]
  fig, axes = plt.subplots(1, max(len(scenarios), 1), figsize=(5 * max(len(scenarios), 1), 4.2),
                           squeeze=False)
  for ax, scenario in zip(axes[0], scenarios):
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.axvline(0.0, color="0.6", lw=0.8)
    rows = [r for r in table if r["scenario"] == scenario]
    knowledge = rows[0].get("knowledge") or []
    x_key = f"{knowledge[0]}_gap" if knowledge else "forget/mean_r1_gap"
    for r in rows:
      if r["method"] == "retrain" or r.get(x_key) is None:
        continue
      fx, fs = r[x_key]
      rx, rs = r["retain/mean_r1_gap"]
      ax.errorbar(fx, rx, xerr=fs, yerr=rs, fmt="o", capsize=2)
      ax.annotate(r["method"], (fx, rx), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{knowledge[0].split('/', 1)[1]} − retrain (points)" if knowledge else
                  "forget R@1 − retrain (points; < 0: over-forgets)")
    ax.set_ylabel("retain R@1 − retrain (points)")
    ax.set_title(f"{scenario} unlearning (retrain at the origin)")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(workdir: pathlib.Path, rows: Sequence[dict[str, Any]],
                  table: Sequence[dict[str, Any]], scenarios: Sequence[str],
                  config: ml_collections.ConfigDict) -> None:
  """`rows`: the config's current rows (`current_rows`), `table` their aggregate."""
  md = format_markdown(table, scenarios)
  diag = ease_diagnostics(rows, scenarios)
  if diag:
    md += f"\n**What EASE's GSD found** (sums over the LoRA modules)\n\n{diag}\n"
  (workdir / "benchmark.md").write_text(md)
  write_csv(workdir / "benchmark.csv", table)
  plot(workdir / "benchmark.png", table, scenarios)
  jsonio.write_json_atomic(workdir / "benchmark_config.json",
                           jsonio.to_jsonable(config.to_dict()))


def section_text(table: Sequence[dict[str, Any]], config: ml_collections.ConfigDict,
                 workdir: pathlib.Path, machine: str, command: str) -> str:
  """The BENCHMARKS.md section: command, machine, sizes, status and the tables."""
  b = config.benchmark
  audit = common.block(config, "audit", population_lib.DEFAULTS)  # as the cells read it
  rows = current_rows(read_rows(workdir / "results.jsonl"), row_keys(config))
  expected = len(b.seeds) * len(b.scenarios) * (2 + len(b.methods))
  done = len({(r["scenario"], r["seed"], r["method"]) for r in rows if not r.get("parent")})
  status = ("complete" if done >= expected else
            f"PARTIAL: {done} of {expected} (scenario, seed, method) cells finished; rerun the "
            "command to resume (cached runs and finished cells are reused)")
  return "\n".join([
      "```bash",
      command,
      "```",
      "",
      f"Machine: {machine}. Seeds {list(b.seeds)}, {config.fed.num_clients} clients, "
      f"{config.fed.rounds} FedAvg rounds (train and each retrain), methods "
      f"{list(b.methods)}; MIA score `{b.mia_score}`; plants {sorted(config.get('plants') or {})}; "
      f"audit populations of {audit.population} models per request (seeds from "
      f"{audit.first_seed}). Status: {status}.",
      "Times are seconds of unlearning work without compilation (federated rounds: the first "
      "round replaced by the median round, as for retrain); `+pfl` rows include EASE's 3 PFL "
      "rounds. Speed-up = retrain's steady time / the method's.",
      "",
      format_markdown(table, list(b.scenarios)),
      "**What EASE's GSD found** (sums over the LoRA modules; mean ± std over seeds)",
      "",
      ease_diagnostics(rows, list(b.scenarios)),
      "",
  ])
