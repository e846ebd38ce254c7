"""Plots of per-round curves and bar charts (matplotlib, headless)."""
from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top


def _save(fig, ax, path: str | pathlib.Path, xlabel: str, ylabel: str, title: str) -> None:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(rows: Sequence[Mapping[str, float]], keys: Sequence[str], path: str | pathlib.Path,
                title: str = "", x_key: str = "round", ylabel: str = "R@1 (%)",
                reference: Mapping[str, float] | None = None) -> None:
  """One line per key over `x_key`; dashed horizontal lines for `reference` values."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for key in keys:
    pts = [(r[x_key], r[key]) for r in rows if key in r]
    if pts:
      ax.plot(*zip(*pts), marker="o", label=key)
  for name, value in (reference or {}).items():
    ax.axhline(value, linestyle="--", linewidth=1, color="gray")
    ax.annotate(name, (ax.get_xlim()[0], value), fontsize=7, va="bottom")
  _save(fig, ax, path, x_key, ylabel, title)


def plot_bars(groups: Mapping[str, Mapping[str, float]], path: str | pathlib.Path,
              title: str = "", ylabel: str = "R@1 (%)") -> None:
  """Grouped bars: `groups[method][metric] = value`."""
  methods = list(groups)
  metrics = sorted({m for g in groups.values() for m in g})
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * max(1, len(methods)) / 2), 4))
  width = 0.8 / max(len(methods), 1)
  for i, method in enumerate(methods):
    xs = [j + i * width for j in range(len(metrics))]
    ax.bar(xs, [groups[method].get(m, 0.0) for m in metrics], width, label=method)
  ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
  ax.set_xticklabels(metrics, fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=7)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_distributions(samples: Mapping[str, Sequence[float]], path: str | pathlib.Path,
                       title: str = "", xlabel: str = "score", bins: int = 40) -> None:
  """Overlaid step histograms (densities) of named samples on shared bins; non-finite values
  are left out (each label counts them)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  samples = {name: np.asarray(v, float).ravel() for name, v in samples.items()}
  finite = {name: v[np.isfinite(v)] for name, v in samples.items()}
  values = [v for v in finite.values() if len(v)]
  if not values:
    return
  edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, v in finite.items():
    if len(v):
      dropped = len(samples[name]) - len(v)
      ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.5,
              label=f"{name} (n={len(v)}" + (f", {dropped} non-finite left out)" if dropped
                                              else ")"))
  _save(fig, ax, path, xlabel, "density", title)
