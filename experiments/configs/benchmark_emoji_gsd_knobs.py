r"""EASE under other GSD knobs, on the tuning seed kept out of the comparison (0): does a smaller
retain support or a lower angle threshold give sample / concept requests a forget-exclusive
subspace?

  python experiments/benchmark.py --config=experiments/configs/benchmark_emoji_gsd_knobs.py \
      --workdir=workdirs/gsd_knobs

Same protocol, request blocks and caches as `benchmark_emoji.py`; the methods are EASE variants
(`benchmark.variants`) without PFL rounds, plus `ease_no_gsd` (BKE with no projection at all) as
the bound on what excision alone does. Results: BENCHMARKS.md, "GSD knobs on sample and concept
requests".
"""
import pathlib

import ml_collections

from ease_jax import configs


def get_config() -> ml_collections.ConfigDict:
  c = configs.from_file(pathlib.Path(__file__).with_name("benchmark_emoji.py"))
  c.benchmark.seeds = (0,)
  c.benchmark.scenarios = ("sample", "concept")
  knobs = {
      "ease_default": {},
      "ease_retain90": dict(retain_energy=0.9),
      "ease_angle30": dict(angle_threshold_deg=30.0),
      "ease_retain90_angle30": dict(retain_energy=0.9, angle_threshold_deg=30.0),
  }
  c.benchmark.variants = {
      name: dict(method="ease", overrides=dict(gsd=gsd, pfl=dict(rounds=0)))
      for name, gsd in knobs.items()}
  c.benchmark.methods = (*knobs, "ease_no_gsd")
  return c
