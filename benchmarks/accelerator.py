"""Accelerator benchmark: one prepared run, under one time budget, on whatever JAX backend it finds.

Measurements, in this order (each a registered function with an estimated cost and a time cap;
see `MEASUREMENTS` and "Adding a measurement" below):

* `peak`: the device's measured matmul rate: fp32 at JAX's default precision (TF32 on Ampere and
  Hopper GPUs), fp32 at HIGHEST, and bf16. The denominators of MFU.
* `throughput:b32`, `throughput:tiny`: client-simulation throughput (image-text pairs per second
  over all K clients of a round) of CLIP ViT-B/32 at its real size (random weights, 224 px,
  77-token text, LoRA rank 8 on q/v) and of the embedded tiny default, for each K, per-client
  batch and engine: `vmap` and `chunked` (the library's round functions), `loop` (the library's
  `sequential` backend: a Python loop of the same jitted client update) and `torch` (transformers'
  `CLIPModel` + LoRA on q/v, clients one after another, on the GPU when there is one). `loop` and
  `torch` cost the same per client at any K, so they are timed once per batch on
  `--loop_clients` clients and scaled to K. MFU = model FLOPs (`step_flops_per_pair`) x pairs/s
  over the measured fp32 / bf16 peak.
* `gsd`: `ease.batched_gsd` at the module sizes of the largest model measured (modules x K
  retained clients x M updates), against one round of the same K clients.
* `population`: N = 16 runs' rounds of 8 clients at batch 32 (the audit's retrain population at the
  embedded size), batched over the run axis vs one after another.

Budget guard: the run has `--budget_s` seconds (default 480, the 8 minutes of the issue). Each
measurement gets its share of the budget plus what earlier ones left unused, and is skipped with a
note when its estimated cost does not fit; inside a measurement, every row (one compile and its
rounds) is estimated before it starts (from earlier rows' compile times, seconds per pair and
memory, else from priors and the FLOP count) and skipped with a note ("skipped: estimated 95 s >
40 s left") when it would not fit; timed repeats stop early at the cap. Results are rewritten to
`--out` after every row, so a run stopped from outside still leaves its table.

Output: `accelerator.md` (device, versions, one table) and `accelerator.json` (every number, the
device name, jax version, skip notes and the self-check) in `--out`. The run checks its own table
(every planned row measured or skipped with a note, numbers positive and finite) and exits 1 if
not.

  bash benchmarks/accelerator.sh --out "$OUT"                    # the GPU run (BENCHMARKS.md)
  python benchmarks/accelerator.py --size tiny --quick --out /tmp/acc   # CI smoke run on CPU

Adding a measurement: write `plan(ctx) -> [Row]`, `estimate(ctx) -> seconds` and
`run(ctx, rows, budget)` (fill each row with `row.done(...)` or `row.skip(budget.note(est))`), and
register them with `register(Measurement(name, share, plan, estimate, run))`.
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import sys
import time

_T0 = time.perf_counter()  # The budget counts from here, imports included.
ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(1, str(ROOT))  # This checkout's ease_jax, also without PYTHONPATH.


def _targets_cpu() -> bool:
  """Whether JAX will run on the CPU; decided before JAX starts (JAX_PLATFORMS, else plugins)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] == "cpu"
  names = {(d.metadata["Name"] or "").lower().replace("_", "-")
           for d in importlib.metadata.distributions()}
  return not any(n.startswith(("jax-cuda", "jax-rocm", "libtpu")) for n in names)


# Before numpy, JAX and torch start (see bench_throughput.py for why each matters on the CPU).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")
# JAX takes this share of the GPU's memory up front; the rest is for the PyTorch reference.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.8")
if _targets_cpu():  # XLA:CPU's lost wake-up in the batched GSD (ease_jax/runtime.py).
  from ease_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.avoid_cpu_hang()

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import dataclasses
import functools
import json
import math
import platform
import re
import statistics
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common
from ease_jax import federated
from ease_jax import lora as lora_lib
from ease_jax import model as model_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

SIZES = ("b32", "tiny")
ENGINES = ("vmap", "chunked", "loop", "torch")
CHUNK_PAIRS = 256  # --chunk 0: chunks of 256 / batch clients (64 at batch 4, 8 at batch 32)
# Priors of the guard, used until the run has measured the real thing (generous on purpose).
PRIOR_BUILD_S = {"tiny": 8.0, "b32": 40.0}       # model init + random data
PRIOR_COMPILE_S = {"tiny": 10.0, "b32": 60.0}    # one round program
PRIOR_TORCH_BUILD_S = {"tiny": 10.0, "b32": 30.0}  # import torch + transformers, build, move
PRIOR_GSD_COMPILE_S = 20.0
ASSUMED_MFU = 0.05    # for a first FLOP-based estimate of a round
DISPATCH_S = 5e-3     # added per local step to that estimate
MEMORY_HEADROOM = 0.9  # a program may take this share of the free device memory
FULL = dict(clients="8,64,512,2048", batches="32,4", steps=2, repeats=3, loop_clients=16,
            gsd_clients="8,64,512", chunk=0)
QUICK = dict(clients="4", batches="4", steps=1, repeats=2, loop_clients=2, gsd_clients="4",
             chunk=2, pool=256, peak_n=256)


# ---------------------------------------------------------------------------- budget guard


def _secs(x: float) -> str:
  return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}" if abs(x) >= 1 else f"{x:.2f}"


class Budget:
  """A deadline. `child(cap)` is a deadline no later than this one and `cap` seconds from now."""

  def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter,
               deadline: float | None = None):
    self.clock = clock
    self.deadline = clock() + seconds if deadline is None else deadline

  def left(self) -> float:
    return self.deadline - self.clock()

  def child(self, cap_s: float) -> "Budget":
    return Budget(0.0, self.clock, min(self.deadline, self.clock() + max(cap_s, 0.0)))

  def fits(self, estimate_s: float) -> bool:
    return estimate_s <= self.left()

  def note(self, estimate_s: float) -> str:
    return f"skipped: estimated {_secs(estimate_s)} s > {_secs(max(self.left(), 0.0))} s left"


def timed(fn: Callable[[], Any], budget: Budget, repeats: int, warmup_counts: bool = True
          ) -> tuple[float, list[float], Any, str]:
  """One warm-up call, then up to `repeats` timed calls while each still fits in `budget`.

  Returns (seconds of the warm-up call, times of the timed calls, the warm-up's output, note).
  With no time left after the warm-up, its own time is the only one if `warmup_counts` (an
  ahead-of-time compiled `fn`), else there are none (its first call compiled).
  """
  clock = budget.clock
  t0 = clock()
  out = common.block(fn())
  first = clock() - t0
  times: list[float] = []
  while len(times) < repeats and budget.fits(times[-1] if times else first):
    t0 = clock()
    common.block(fn())
    times.append(clock() - t0)
  note = ""
  if not times and warmup_counts:
    times, note = [first], "warm-up call only (time cap)"
  elif not times:
    note = f"skipped: the first call took {_secs(first)} s (compile included), no time left"
  elif len(times) < repeats:
    note = f"{len(times)} of {repeats} repeats (time cap)"
  return first, times, out, note


@dataclasses.dataclass
class Row:
  """One line of the table: planned first, then done (values), skipped or error (notes)."""
  measurement: str
  engine: str
  size: str = ""
  k: int | None = None
  batch: int | None = None
  required: tuple[str, ...] = ("seconds",)  # values a done row must have (positive, finite)
  status: str = "planned"
  values: dict[str, Any] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def label(self) -> str:
    parts = [self.measurement, self.size, self.engine]
    parts += [f"K={self.k}"] if self.k is not None else []
    parts += [f"batch={self.batch}"] if self.batch is not None else []
    return " ".join(p for p in parts if p)

  def done(self, note: str = "", **values) -> None:
    self.status = "done"
    self.values.update(values)
    if note:
      self.notes.append(note)

  def skip(self, note: str) -> None:
    self.status = "skipped"
    self.notes.append(note if note.startswith("skipped:") else f"skipped: {note}")

  def error(self, note: str) -> None:
    self.status = "error"
    self.notes.append(f"error: {note}")


@dataclasses.dataclass(frozen=True)
class Measurement:
  """A named measurement. `share`: its fraction of the budget (it also gets what earlier ones
  left); `plan`: the rows it will fill; `estimate`: seconds it needs at the least, checked before
  it starts; `run(ctx, rows, budget)`: fills every row, done or skipped with a note."""
  name: str
  share: float
  plan: Callable[["Context"], list[Row]]
  estimate: Callable[["Context"], float]
  run: Callable[["Context", list[Row], Budget], None]


MEASUREMENTS: list[Measurement] = []


def register(m: Measurement) -> Measurement:
  MEASUREMENTS.append(m)
  return m


@dataclasses.dataclass
class Context:
  """What measurements share: arguments, rows, device facts and the guard's observations."""
  args: argparse.Namespace
  out: pathlib.Path
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  rows: list[Row] = dataclasses.field(default_factory=list)
  engines: dict[str, common.Engine] = dataclasses.field(default_factory=dict)
  torch_refs: dict[str, Any] = dataclasses.field(default_factory=dict)
  compile_s: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
  # (size, engine, batch) -> [(k, pairs, seconds per round, new XLA bytes or None)]
  observed: dict[tuple[str, str, int], list[tuple]] = dataclasses.field(default_factory=dict)
  started: float = dataclasses.field(default_factory=time.perf_counter)

  @property
  def on_cpu(self) -> bool:
    return jax.default_backend() == "cpu"

  def peak_flops(self, kind: str = "fp32") -> float | None:
    return self.info.get("peak_tflops", {}).get(kind) and self.info["peak_tflops"][kind] * 1e12

  def observe(self, size, engine, batch, k, pairs, seconds, xla_bytes=None) -> None:
    self.observed.setdefault((size, engine, batch), []).append((k, pairs, seconds, xla_bytes))

  def compile_estimate(self, size: str, engine: str) -> float:
    if (size, engine) in self.compile_s:
      return 1.2 * self.compile_s[(size, engine)]
    same_size = [s for (sz, _), s in self.compile_s.items() if sz == size]
    return 1.2 * max(same_size) if same_size else PRIOR_COMPILE_S[size]

  def round_estimate(self, size: str, engine: str, batch: int, pairs: int, steps: int) -> float:
    """Seconds of one round of `pairs` pairs: the nearest earlier row's seconds per pair (same
    engine and batch, else same batch, else same engine), else the FLOPs at ASSUMED_MFU."""
    for keys in ([(size, engine, batch)],
                 [k for k in self.observed if k[0] == size and k[2] == batch],
                 [k for k in self.observed if k[0] == size and k[1] == engine]):
      obs = [o for key in keys for o in self.observed.get(key, []) if math.isfinite(o[2])]
      if obs:
        _, p0, s0, _ = min(obs, key=lambda o: abs(math.log(o[1] / pairs)))
        return s0 * pairs / p0
    fpp = step_flops_per_pair(config_of(size, self.args), batch)
    peak = self.peak_flops("fp32") or (2e10 if self.on_cpu else 1e13)
    return pairs * fpp / (ASSUMED_MFU * peak) + steps * DISPATCH_S

  def memory_estimate(self, size: str, engine: str, batch: int, k: int
                      ) -> tuple[float, int] | None:
    """(bytes, from K) that a vmap round would allocate (outputs + temporaries), linear in K from
    the largest earlier K at this batch; None for chunked (bounded by its chunk: the compiled
    program's own analysis is checked before it runs)."""
    obs = [o for o in self.observed.get((size, engine, batch), []) if o[3]]
    if engine != "vmap" or not obs:
      return None
    k0, _, _, b0 = max(obs)
    return b0 * k / k0, k0

  def engine(self, size: str) -> common.Engine:
    if size not in self.engines:
      t0 = time.perf_counter()
      self.engines[size] = make_engine(size, self.args)
      self.info.setdefault("build_s", {})[size] = time.perf_counter() - t0
    return self.engines[size]

  def save(self) -> None:
    write_outputs(self)


# -------------------------------------------------------------------- models, data, FLOPs


def b32_config(layers: int | None = None) -> model_lib.CLIPConfig:
  """CLIP ViT-B/32 (openai/clip-vit-base-patch32's architecture: the library's defaults)."""
  cfg = model_lib.CLIPConfig()
  if layers:  # Fewer layers, same widths: the B/32 geometry at a test's cost.
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, num_layers=layers),
                              text=dataclasses.replace(cfg.text, num_layers=layers))
  return cfg


def config_of(size: str, args: argparse.Namespace) -> model_lib.CLIPConfig:
  return common.tiny_default_config() if size == "tiny" else b32_config(args.b32_layers)


def random_pairs(cfg: model_lib.CLIPConfig, num_pairs: int, seed: int = 0
                 ) -> federated.DeviceData:
  """`common.random_device_data` at any geometry: random images, BOS + tokens + EOS captions."""
  rng = np.random.default_rng(seed)
  v, t = cfg.vision, cfg.text
  length = t.max_position_embeddings
  images = rng.integers(0, 256, (num_pairs, v.image_size, v.image_size, v.num_channels),
                        dtype=np.uint8)
  tokens = rng.integers(4, length - 1, num_pairs)[:, None]
  pos = np.arange(length)[None, :]
  ids = rng.integers(0, t.vocab_size - 2, (num_pairs, length), dtype=np.int32)
  ids = np.where(pos == 0, t.vocab_size - 2, np.where(pos > tokens, t.eos_token_id, ids))
  mask = (pos <= tokens + 1).astype(np.int32)
  return federated.DeviceData(images=jnp.asarray(images), input_ids=jnp.asarray(ids, jnp.int32),
                              attention_mask=jnp.asarray(mask),
                              text_image=jnp.arange(num_pairs, dtype=jnp.int32))


def make_engine(size: str, args: argparse.Namespace) -> common.Engine:
  """The tiny default is `common.make_engine` itself; B/32 is built the same way."""
  pool = args.pool or {"tiny": 4096, "b32": 1024}[size]
  if size == "tiny":
    return common.make_engine(pool)
  lora_config = lora_lib.LoRAConfig(rank=common.LORA_RANK, alpha=common.LORA_ALPHA)
  model = model_lib.CLIP(b32_config(args.b32_layers), lora_scale=lora_config.scale)
  backbone = jax.jit(model.init)(jax.random.key(args.seed))  # One compile, not one per op.
  trainable = lora_lib.init_lora(jax.random.key(args.seed + 1), backbone, lora_config)
  trainable = jax.tree.map(lambda x: x + 0.01, trainable)  # Non-zero B, as common.make_engine.
  client_update = federated.local_steps(federated.clip_objective(model),
                                        optax.adam(common.CLIENT_LR))
  return common.Engine(model, backbone, trainable, random_pairs(model.config, pool, args.seed),
                       client_update, pool)


def step_flops_per_pair(cfg: model_lib.CLIPConfig, batch: int,
                        rank: int = common.LORA_RANK) -> float:
  """Model FLOPs (matmuls) of one LoRA training step, per image-text pair.

  The forward pass, plus the backward pass that LoRA training needs: input gradients through the
  frozen layers but no backbone weight gradients (1x their forward), input and factor gradients
  of LoRA and of attention's two activation-activation products (2x their forward). Nothing
  upstream of a tower's first layer trains, so that layer needs no input gradients of q, k, v and
  LoRA, nor the key gradient, and the patch embedding none at all. Within 2% of XLA's count
  (tiny default: 134.8 vs 137.7 MFLOP, B/32 widths with 1 layer: 2.382 vs 2.394 GFLOP; XLA also
  counts element-wise work); the `--quick` run checks it against XLA's count.
  """

  def tower(c, tokens):
    d, f = c.hidden_size, c.intermediate_size
    frozen = tokens * (8 * d * d + 4 * d * f)  # q, k, v, out; fc1, fc2
    attention = 4 * tokens * tokens * d        # QK^T and AV over all heads
    lora = tokens * 2 * 4 * d * rank           # (x A) B on q and v
    first = tokens * (6 * d * d + 4 * d * rank) + 2 * tokens * tokens * d  # not needed in layer 0
    return c.num_layers * (2 * frozen + 3 * (attention + lora)) - first

  v, t = cfg.vision, cfg.text
  patch = 2 * v.num_patches * v.patch_size**2 * v.num_channels * v.hidden_size
  projections = 2 * cfg.projection_dim * (v.hidden_size + t.hidden_size)
  logits = 2 * batch * cfg.projection_dim  # this pair's row of the [B, B] logits
  return float(tower(v, v.num_patches + 1) + tower(t, t.max_position_embeddings) + patch
               + 2 * projections + 3 * logits)


# ------------------------------------------------------------------------- device facts


def memory_stats() -> dict[str, Any] | None:
  try:
    return jax.devices()[0].memory_stats() or None
  except Exception:  # pylint: disable=broad-except  (not implemented on some backends)
    return None


def free_bytes() -> float | None:
  """Free device memory (GPU: the allocator's limit less what is in use; CPU: MemAvailable)."""
  stats = memory_stats()
  if stats and "bytes_limit" in stats:
    return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    text = pathlib.Path("/proc/meminfo").read_text()
    return float(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1)) * 1024
  except (OSError, AttributeError):
    return None


def device_peak_gib() -> float | None:
  stats = memory_stats()
  peak = stats and stats.get("peak_bytes_in_use")
  return peak / 2**30 if peak else None


def compiled_bytes(compiled) -> tuple[float | None, float | None]:
  """(total, newly allocated) bytes of a compiled program: XLA's memory analysis, as in
  bench_scale.compiled_bytes (which discards the executable); new = outputs + temporaries."""
  try:
    m = compiled.memory_analysis()
    new = float(m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    return float(m.argument_size_in_bytes) + new, new
  except Exception:  # pylint: disable=broad-except  (no analysis on this backend/version)
    return None, None


def compiled_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (as `bench_throughput.step_flops` reads it)."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) or None
  except Exception:  # pylint: disable=broad-except  (no analysis on this backend/version)
    return None


def _gib(x: float | None) -> str:
  return "n/a" if x is None else f"{x / 2**30:.3g}"


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def device_info() -> dict[str, Any]:
  dev = jax.devices()[0]
  stats = memory_stats() or {}
  import ease_jax  # pylint: disable=g-import-not-at-top
  return dict(
      device=getattr(dev, "device_kind", str(dev)), platform=dev.platform,
      device_count=jax.device_count(), memory_limit_gib=stats.get("bytes_limit", 0) / 2**30 or None,
      jax=jax.__version__, jaxlib=_version("jaxlib"), flax=_version("flax"),
      optax=_version("optax"), numpy=np.__version__, torch=_version("torch"),
      transformers=_version("transformers"), ml_collections=_version("ml-collections"),
      python=platform.python_version(), machine=common.machine(),
      ease_jax=str(pathlib.Path(ease_jax.__file__).parent))


# --------------------------------------------------------------------------------- peak

PEAKS = (("fp32", "matmul fp32 (default precision)", jnp.float32, jax.lax.Precision.DEFAULT),
         ("fp32_highest", "matmul fp32 (HIGHEST)", jnp.float32, jax.lax.Precision.HIGHEST),
         ("bf16", "matmul bf16", jnp.bfloat16, jax.lax.Precision.DEFAULT))
PEAK_ITERS = 8


def matmul_seconds(n: int, dtype, precision, iters: int = PEAK_ITERS):
  """An ahead-of-time compiled loop of `iters` n x n products on random data, kept O(1) by a
  1/sqrt(n) scale so that it never decays to zeros (`bench_throughput.matmul_peak_gflops` is fp32
  on ones only)."""
  scale = 1.0 / math.sqrt(n)

  def loop(a, b):
    body = lambda _, x: (jnp.dot(x, b, precision=precision) * scale).astype(dtype)
    return jax.lax.fori_loop(0, iters, body, a)

  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  compiled = jax.jit(loop).lower(a, b).compile()
  return lambda: compiled(a, b)


def _peak_plan(ctx: Context) -> list[Row]:
  return [Row("peak", label, required=("seconds", "tflops")) for _, label, _, _ in PEAKS]


def _peak_run(ctx: Context, rows: list[Row], budget: Budget) -> None:
  n = ctx.args.peak_n or (1024 if ctx.on_cpu else 8192)
  flops = 2.0 * n**3 * PEAK_ITERS
  rate = 2e10 if ctx.on_cpu else 5e13  # prior FLOP/s; then the last one measured
  peaks = ctx.info.setdefault("peak_tflops", {})
  for (key, _, dtype, precision), row in zip(PEAKS, rows):
    # bf16 and HIGHEST are often far slower than the default fp32 on CPUs.
    slower = 4 if ctx.on_cpu and key != "fp32" else 1
    est = 0.3 + (2 + ctx.args.repeats) * flops * slower / rate
    if not budget.fits(est):
      row.skip(budget.note(est))
      _finish(ctx, row)
      continue
    t0 = time.perf_counter()
    fn = matmul_seconds(n, dtype, precision)
    compile_s = time.perf_counter() - t0
    _, times, _, note = timed(fn, budget, ctx.args.repeats)
    sec = statistics.median(times)
    rate = flops / sec
    peaks[key] = rate / 1e12
    row.done(note, seconds=sec / PEAK_ITERS, tflops=rate / 1e12, compile_s=compile_s)
    row.notes.append(f"{n}x{n}, {PEAK_ITERS} products per call")
    _finish(ctx, row)


register(Measurement("peak", 0.04, _peak_plan, lambda ctx: 0.3, _peak_run))


# --------------------------------------------------------------------------- throughput


class TorchClients:
  """The PyTorch reference at any CLIP size, on the GPU when there is one.

  `torch_reference.TorchReference` is fixed to the tiny config on the CPU, and its `clip_loss`
  builds labels on the CPU and reads `get_*_features`, which transformers 5 turned into model
  outputs; this keeps its LoRA layer and its recipe (reset LoRA, a fresh Adam, S steps per client)
  and reads the towers' pooled outputs, the same in transformers 4 and 5.
  """

  def __init__(self, cfg: model_lib.CLIPConfig, data: federated.DeviceData, precision: str):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    import torch_reference  # pylint: disable=g-import-not-at-top
    from ease_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if self.device.type == "cuda":  # "high" = TF32, as JAX's default fp32 precision there.
      torch.set_float32_matmul_precision(precision)
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg.to_hf())
    for p in model.parameters():
      p.requires_grad_(False)
    for layer in list(model.vision_model.encoder.layers) + list(model.text_model.encoder.layers):
      attn = layer.self_attn
      attn.q_proj = torch_reference.LoRALinear(attn.q_proj, common.LORA_RANK, common.LORA_ALPHA)
      attn.v_proj = torch_reference.LoRALinear(attn.v_proj, common.LORA_RANK, common.LORA_ALPHA)
    self.model = model.to(self.device).train()
    self.lora = [p for n, p in self.model.named_parameters() if n.endswith((".a", ".b"))]
    self.global_lora = [p.detach().clone() for p in self.lora]
    on = lambda x, dtype: torch.as_tensor(np.array(x), dtype=dtype, device=self.device)
    self.images = on(data.images, torch.uint8)  # [N, H, W, C], normalised per batch
    self.text_image = on(data.text_image, torch.long)
    self.input_ids = on(data.input_ids, torch.long)
    self.attention_mask = on(data.attention_mask, torch.long)
    self.mean = on(dataset_lib.CLIP_MEAN, torch.float32).view(1, 3, 1, 1)
    self.std = on(dataset_lib.CLIP_STD, torch.float32).view(1, 3, 1, 1)

  def loss(self, idx):
    torch, m = self.torch, self.model
    pixels = self.images[self.text_image[idx]].permute(0, 3, 1, 2).float() / 255.0
    pixels = (pixels - self.mean) / self.std
    img = m.visual_projection(m.vision_model(pixel_values=pixels).pooler_output)
    txt = m.text_projection(m.text_model(input_ids=self.input_ids[idx],
                                         attention_mask=self.attention_mask[idx]).pooler_output)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    logits = m.logit_scale.exp() * img @ txt.t()
    labels = torch.arange(len(img), device=self.device)
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logits, labels) + ce(logits.t(), labels))

  def round(self, indices: np.ndarray) -> float:
    """indices [clients, steps, batch]; returns the last loss (after a device sync)."""
    torch = self.torch
    schedule = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.device)
    loss = None
    for client in schedule:
      with torch.no_grad():
        for p, g in zip(self.lora, self.global_lora):
          p.copy_(g)
      opt = torch.optim.Adam(self.lora, lr=common.CLIENT_LR)
      for idx in client:
        loss = self.loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
      _ = [(p.detach() - g) for p, g in zip(self.lora, self.global_lora)]  # The client's delta.
    return loss.detach().item()  # Synchronises.

  def peak_gib(self) -> float | None:
    if self.device.type != "cuda":
      return None
    return self.torch.cuda.max_memory_allocated() / 2**30

  def reset_peak(self) -> None:
    if self.device.type == "cuda":
      self.torch.cuda.reset_peak_memory_stats()


def _chunk(args: argparse.Namespace, batch: int) -> int:
  return args.chunk or max(1, CHUNK_PAIRS // batch)


def _guarded(ctx: Context, rows: list[Row], fn: Callable[..., None], *args) -> None:
  """Runs `fn(*args)` to fill `rows`; an exception (out of memory, say) fails those rows only."""
  try:
    fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    for row in rows:
      if row.status == "planned":
        row.error(_error_text(e))
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
      sys.modules["torch"].cuda.empty_cache()
  for row in rows:
    _finish(ctx, row)


def _error_text(e: Exception) -> str:
  first = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return f"{type(e).__name__}: {first[:200]}"


def _finish(ctx: Context, row: Row) -> None:
  elapsed = time.perf_counter() - ctx.started
  v = row.values
  what = ", ".join(f"{k} {v[k]:.4g}" for k in ("seconds", "pairs_s", "tflops", "compile_s")
                   if isinstance(v.get(k), float))
  print(f"[{elapsed:6.1f} s] {row.label}: {row.status} {what} {'; '.join(row.notes)}".rstrip(),
        flush=True)
  ctx.save()


def _jax_round(ctx: Context, size: str, engine: str, k: int, batch: int, row: Row,
               budget: Budget) -> None:
  """A vmap or chunked round of K clients: AOT compile, memory check, warm-up, timed repeats."""
  a = ctx.args
  chunk = _chunk(a, batch)
  if engine == "chunked" and chunk >= k:
    return row.skip(f"skipped: a chunk of {chunk} clients >= K is the vmap program")
  pairs = k * a.steps * batch
  free = free_bytes()
  mem = ctx.memory_estimate(size, engine, batch, k)
  if mem and free and mem[0] > MEMORY_HEADROOM * free:
    return row.skip(f"skipped: needs an estimated {_gib(mem[0])} GiB (from K = {mem[1]}) > "
                    f"{_gib(MEMORY_HEADROOM * free)} GiB free")
  round_est = ctx.round_estimate(size, engine, batch, pairs, a.steps)
  est = ctx.compile_estimate(size, engine) + 2 * round_est
  if not budget.fits(est):
    return row.skip(budget.note(est))
  eng = ctx.engine(size)
  fn = federated.make_round_fn(eng.client_update, engine, chunk)
  idx, mask = common.schedules(k, a.steps, batch, eng.num_pairs, seed=k)
  args = (eng.trainable, eng.backbone, eng.data,
          federated.Batches(jnp.asarray(idx), jnp.asarray(mask)))
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  ctx.compile_s[(size, engine)] = compile_s
  total, new = compiled_bytes(compiled)
  row.values.update(compile_s=compile_s, xla_gib=total and total / 2**30)
  if engine == "vmap" and a.steps == 1:  # No loop in the program: XLA counts exactly one step.
    xla = compiled_flops(compiled)
    if xla:
      ctx.info.setdefault("xla_flops_per_pair", {})[f"{size}/batch{batch}"] = xla / pairs
  if new and free and new > MEMORY_HEADROOM * free:
    ctx.observe(size, engine, batch, k, pairs, float("inf"), new)
    return row.skip(f"skipped: the compiled round needs {_gib(new)} GiB > "
                    f"{_gib(MEMORY_HEADROOM * free)} GiB free")
  if not budget.fits(2 * round_est):
    return row.skip(budget.note(2 * round_est))
  _, times, (deltas, metrics), note = timed(lambda: compiled(*args), budget, a.repeats)
  sec = statistics.median(times)
  ctx.observe(size, engine, batch, k, pairs, sec, new)
  leading = {x.shape[0] for x in jax.tree.leaves(deltas)}
  if leading != {k} or not np.all(np.isfinite(np.asarray(metrics["loss"]))):
    return row.error(f"deltas' client axis {sorted(leading)} (want {k}) or a non-finite loss")
  row.done(note, seconds=sec, pairs_s=pairs / sec, peak_gib=device_peak_gib(),
           repeats=len(times))
  if engine == "chunked":
    row.notes.append(f"chunks of {chunk}")


def _per_client_rows(ctx: Context, size: str, engine: str, batch: int, rows: list[Row],
                     budget: Budget) -> None:
  """`loop` or `torch`: clients run one after another, so a round costs K x one client's time;
  timed once on `--loop_clients` clients and written for every K."""
  a = ctx.args
  n = a.loop_clients
  pairs = n * a.steps * batch
  fallback = ctx.round_estimate(size, "loop", batch, pairs, a.steps)
  if engine == "loop":
    est = ctx.compile_estimate(size, "loop") + 2 * fallback
  else:
    est = 0.0 if size in ctx.torch_refs else PRIOR_TORCH_BUILD_S[size]
    est += 2 * ctx.round_estimate(size, "torch", batch, pairs, a.steps) * (
        1 if (size, "torch", batch) in ctx.observed else 3)
  if not budget.fits(est):
    for row in rows:
      row.skip(budget.note(est))
    return
  eng = ctx.engine(size)
  idx, mask = common.schedules(n, a.steps, batch, eng.num_pairs, seed=batch)
  if engine == "loop":
    fn = federated.make_round_fn(eng.client_update, "sequential")
    args = (eng.trainable, eng.backbone, eng.data,
          federated.Batches(jnp.asarray(idx), jnp.asarray(mask)))
    call, peak = lambda: fn(*args), device_peak_gib
  else:
    if size not in ctx.torch_refs:
      try:
        t0 = time.perf_counter()
        ctx.torch_refs[size] = TorchClients(eng.model.config, eng.data, a.torch_precision)
        ctx.info.setdefault("torch_build_s", {})[size] = time.perf_counter() - t0
      except ImportError as e:
        for row in rows:
          row.skip(f"skipped: PyTorch reference not importable ({type(e).__name__}: {e})")
        return
    ref = ctx.torch_refs[size]
    ref.reset_peak()
    call, peak = lambda: ref.round(idx), ref.peak_gib
  first, times, _, note = timed(call, budget, a.repeats, warmup_counts=False)
  if not times:
    for row in rows:
      row.skip(note)
    return
  sec = statistics.median(times)
  ctx.observe(size, engine, batch, n, pairs, sec)
  if engine == "loop":
    ctx.compile_s[(size, "loop")] = max(first - sec, 0.0)
  for row in rows:
    row.done(note, seconds=sec * row.k / n, pairs_s=pairs / sec, peak_gib=peak(),
             repeats=len(times))
    if engine == "loop":
      row.values["compile_s"] = ctx.compile_s[(size, "loop")]
    row.notes.append(f"timed on {n} clients, x K/{n}")


def _throughput(size: str) -> Measurement:
  name = f"throughput:{size}"

  def plan(ctx: Context) -> list[Row]:
    a = ctx.args
    return [Row(name, e, size, k, b, required=("seconds", "pairs_s"))
            for b in a.batches for k in a.clients for e in a.engines]

  def estimate(ctx: Context) -> float:
    built = 0.0 if size in ctx.engines else PRIOR_BUILD_S[size]
    return built + ctx.compile_estimate(size, "loop")

  def run(ctx: Context, rows: list[Row], budget: Budget) -> None:
    a = ctx.args
    eng = ctx.engine(size)
    flops = ctx.info.setdefault("flops_per_pair", {})
    for batch in a.batches:
      flops[f"{size}/batch{batch}"] = step_flops_per_pair(eng.model.config, batch)
    by = {(r.batch, r.k, r.engine): r for r in rows}
    for batch in a.batches:
      # Per-client engines first: every K's ratios need them.
      for engine in ("loop", "torch"):
        if engine in a.engines:
          part = [by[(batch, k, engine)] for k in a.clients]
          _guarded(ctx, part, _per_client_rows, ctx, size, engine, batch, part, budget)
      for k in a.clients:
        for engine in ("vmap", "chunked"):
          if engine in a.engines:
            row = by[(batch, k, engine)]
            _guarded(ctx, [row], _jax_round, ctx, size, engine, k, batch, row, budget)

  return Measurement(name, {"b32": 0.5, "tiny": 0.25}[size], plan, estimate, run)


for _size in SIZES:
  register(_throughput(_size))


# ---------------------------------------------------------------------------------- gsd


def _gsd_size(ctx: Context) -> str:
  return "b32" if "b32" in ctx.args.size else "tiny"


def gsd_shapes(cfg: model_lib.CLIPConfig, rank: int = common.LORA_RANK) -> tuple[int, int]:
  """(modules, d) of LoRA on q/v of both towers: one module per q/v, d = (in + out) * rank,
  zero-padded to the largest (as `unlearning.projection.to_modules` lays them out)."""
  v, t = cfg.vision, cfg.text
  return 2 * (v.num_layers + t.num_layers), 2 * rank * max(v.hidden_size, t.hidden_size)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def gsd_inputs(key, modules: int, k: int, m: int, d: int):
  """Low-rank-plus-noise updates, as `bench_gsd.make_updates` but on the device: each client's M
  updates mix 4 directions shared by all clients and 4 of its own. forget [modules, M, d],
  retain [modules, K, M, d]."""
  ks = jax.random.split(key, 4)
  shared = jnp.broadcast_to(jax.random.normal(ks[0], (modules, 1, 4, d)), (modules, k + 1, 4, d))
  directions = jnp.concatenate([shared, jax.random.normal(ks[1], (modules, k + 1, 4, d))], axis=2)
  coef = jax.random.normal(ks[2], (modules, k + 1, m, 8))
  x = jnp.einsum("nkmr,nkrd->nkmd", coef, directions)
  x = x + 1e-3 * jax.random.normal(ks[3], x.shape)
  return x[:, 0], x[:, 1:]


def _gsd_plan(ctx: Context) -> list[Row]:
  return [Row("gsd", f"batched_gsd ({ctx.args.gsd_method})", _gsd_size(ctx), k)
          for k in ctx.args.gsd_clients]


def _gsd_run(ctx: Context, rows: list[Row], budget: Budget) -> None:
  from ease_jax import configs  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning.methods import ease  # pylint: disable=g-import-not-at-top
  cfg = ease.GSDConfig(method=ctx.args.gsd_method)
  history = configs.base_config().fed.history_size
  modules, d = gsd_shapes(config_of(rows[0].size, ctx.args))
  ctx.info["gsd"] = dict(modules=modules, d=d, history=history, **dataclasses.asdict(cfg))
  seen: list[tuple[int, float, float]] = []  # (K, seconds, compile seconds) of the rows so far
  for row in rows:
    _guarded(ctx, [row], _gsd_row, ctx, ease, cfg, modules, d, history, row, budget, seen)


def _gsd_row(ctx, ease, cfg, modules, d, history, row, budget, seen) -> None:
  k = row.k
  union = min(d, k * cfg.max_rank)
  # Inputs, their generation and GSD's per-client bases, plus the union basis and its Gram.
  mem = 4.0 * (3 * modules * (k + 1) * history * d + 3 * modules * union * (d + union))
  free = free_bytes()
  if free and mem > MEMORY_HEADROOM * free:
    return row.skip(f"skipped: needs an estimated {_gib(mem)} GiB > "
                    f"{_gib(MEMORY_HEADROOM * free)} GiB free")
  if seen:  # Extrapolate in K with the exponent of the last two rows (1 to 3), else 2.
    k0, t0, _ = seen[-1]
    power = 2.0
    if len(seen) > 1:
      power = min(3.0, max(1.0, math.log(t0 / seen[-2][1]) / math.log(k0 / seen[-2][0])))
    run_est = t0 * (k / k0) ** power
    compile_est = 1.2 * seen[-1][2]
  else:
    flops = modules * (2 * d * union**2 + 10 * union**3 + k * 2 * history**2 * d)
    run_est = flops / (ASSUMED_MFU * (ctx.peak_flops("fp32") or 2e10))
    compile_est = PRIOR_GSD_COMPILE_S
  if not budget.fits(compile_est + 2 * run_est):
    return row.skip(budget.note(compile_est + 2 * run_est))
  forget, retain = common.block(gsd_inputs(jax.random.key(k), modules, k, history, d))
  t0 = time.perf_counter()
  compiled = ease.batched_gsd.lower(forget, retain, cfg).compile()
  compile_s = time.perf_counter() - t0
  total, new = compiled_bytes(compiled)
  row.values.update(compile_s=compile_s, xla_gib=total and total / 2**30)
  if new and free and new > MEMORY_HEADROOM * free:
    return row.skip(f"skipped: the compiled GSD needs {_gib(new)} GiB > "
                    f"{_gib(MEMORY_HEADROOM * free)} GiB free")
  _, times, out, note = timed(lambda: compiled(forget, retain), budget, ctx.args.repeats)
  sec = statistics.median(times)
  seen.append((k, sec, compile_s))
  if not np.all(np.isfinite(np.asarray(out.unique_basis))):
    return row.error("non-finite GSD basis")
  row.done(note, seconds=sec, peak_gib=device_peak_gib(), repeats=len(times))
  row.notes.append(f"{modules} modules x d {d}, M {history}")


register(Measurement("gsd", 0.15, _gsd_plan, lambda ctx: PRIOR_GSD_COMPILE_S / 4, _gsd_run))


# --------------------------------------------------------------------------- population


POPULATION = dict(runs=16, clients=8, batch=32)  # the audit's retrain population, embedded size
POPULATION_QUICK = dict(runs=2, clients=2, batch=4)


def _population_plan(ctx: Context) -> list[Row]:
  p = POPULATION_QUICK if ctx.args.quick else POPULATION
  return [Row("population", f"{engine} ({p['runs']} runs)", "tiny", p["clients"], p["batch"])
          for engine in ("one after another", "batched")]


def _population_run(ctx: Context, rows: list[Row], budget: Budget) -> None:
  """N independent runs' rounds (same clients, different LoRA starts and batches): the vmapped
  round called N times vs one jit of it vmapped over the run axis (`federated.vmapped` does
  the same to a whole FedAvg algorithm)."""
  p = POPULATION_QUICK if ctx.args.quick else POPULATION
  n, k, batch, steps = p["runs"], p["clients"], p["batch"], ctx.args.steps
  est = 2 * ctx.compile_estimate("tiny", "vmap") + 4 * n * ctx.round_estimate(
      "tiny", "vmap", batch, k * steps * batch, steps)
  if not budget.fits(est):
    for row in rows:
      row.skip(budget.note(est))
      _finish(ctx, row)
    return
  eng = ctx.engine("tiny")
  round_fn = federated.make_round_fn(eng.client_update, "vmap")
  plans = [common.schedules(k, steps, batch, eng.num_pairs, seed=100 + i) for i in range(n)]
  batches = [federated.Batches(jnp.asarray(i), jnp.asarray(m)) for i, m in plans]
  starts = [jax.tree.map(lambda x, i=i: x * (1.0 + 0.01 * i), eng.trainable) for i in range(n)]
  stacked_b = jax.tree.map(lambda *x: jnp.stack(x), *batches)
  stacked_t = jax.tree.map(lambda *x: jnp.stack(x), *starts)
  one = lambda t, b: round_fn(t, eng.backbone, eng.data, b)
  batched = jax.jit(jax.vmap(one))
  calls = {"one after another": lambda: [one(t, b) for t, b in zip(starts, batches)],
           "batched": lambda: batched(stacked_t, stacked_b)}
  pairs = n * k * steps * batch
  secs = {}
  for row in rows:
    engine = row.engine.split(" (")[0]
    _, times, _, note = timed(calls[engine], budget.child(budget.left() / 2), ctx.args.repeats,
                              warmup_counts=False)
    if not times:
      row.skip(note)
    else:
      secs[engine] = statistics.median(times)
      row.done(note, seconds=secs[engine], pairs_s=pairs / secs[engine],
               peak_gib=device_peak_gib(), repeats=len(times))
    _finish(ctx, row)
  if len(secs) == 2:
    rows[1].notes.append(f"{secs['batched'] / secs['one after another']:.2f}x the time of one "
                         "after another")


register(Measurement("population", 0.1, _population_plan,
                     lambda ctx: ctx.compile_estimate("tiny", "vmap"), _population_run))


# ------------------------------------------------------------------------------ runner


def selected(args: argparse.Namespace, measurements: list[Measurement]) -> list[Measurement]:
  out = []
  for m in measurements:
    base, _, size = m.name.partition(":")
    if size and size not in args.size:
      continue
    if args.only and not any(m.name == s or base == s for s in args.only):
      continue
    out.append(m)
  return out


def run_measurements(ctx: Context, measurements: list[Measurement], budget: Budget) -> None:
  """Plans every row, then runs each measurement under its cap: its share of the budget plus
  what earlier measurements left, less the shares reserved for the later ones."""
  plans = [(m, m.plan(ctx)) for m in measurements]
  ctx.rows = [row for _, rows in plans for row in rows]
  total_share = sum(m.share for m in measurements) or 1.0
  total = budget.left()
  ctx.save()
  for i, (m, rows) in enumerate(plans):
    reserve = total * sum(later.share for later, _ in plans[i + 1:]) / total_share
    cap = budget.child(budget.left() - reserve)
    est = m.estimate(ctx)
    if not cap.fits(est):
      for row in rows:
        row.skip(cap.note(est))
        _finish(ctx, row)
      continue
    try:
      m.run(ctx, rows, cap)
    except Exception as e:  # pylint: disable=broad-except  (one failure must not end the run)
      traceback.print_exc()
      for row in rows:
        if row.status == "planned":
          row.error(f"{m.name}: {_error_text(e)}")
    for row in rows:
      if row.status == "planned":
        row.error(f"{m.name} left this row unfilled")
    ctx.save()


# ------------------------------------------------------------------------------ output

COLUMNS = ("measurement", "size", "K", "batch", "engine", "s (median)", "pairs/s", "TFLOP/s",
           "x loop", "x PyTorch", "MFU fp32 %", "MFU bf16 %", "compile s", "XLA GiB",
           "peak GiB", "notes")


def derive(ctx: Context, row: Row) -> dict[str, Any]:
  """Values computed from other rows: model TFLOP/s, MFU, ratios to the loop and to PyTorch,
  and GSD's share of one round."""
  v, out = row.values, {}
  if row.status != "done":
    return out
  if row.measurement.startswith("throughput"):
    fpp = ctx.info.get("flops_per_pair", {}).get(f"{row.size}/batch{row.batch}")
    if fpp:
      out["tflops"] = v["pairs_s"] * fpp / 1e12
      for kind in ("fp32", "bf16"):
        if ctx.peak_flops(kind):
          out[f"mfu_{kind}"] = 100 * v["pairs_s"] * fpp / ctx.peak_flops(kind)
    for engine, key in (("loop", "x_loop"), ("torch", "x_torch")):
      ref = next((r for r in ctx.rows if r.measurement == row.measurement and r.k == row.k
                  and r.batch == row.batch and r.engine == engine and r.status == "done"), None)
      if ref:
        out[key] = ref.values["seconds"] / v["seconds"]
  if row.measurement == "gsd":
    rounds = [r for r in ctx.rows if r.measurement == f"throughput:{row.size}" and r.k == row.k
              and r.engine in ("vmap", "chunked") and r.status == "done"]
    if rounds:
      batch = max(r.batch for r in rounds)
      best = min((r for r in rounds if r.batch == batch), key=lambda r: r.values["seconds"])
      out["pct_round"] = 100 * v["seconds"] / best.values["seconds"]
      out["round_note"] = (f"{out['pct_round']:.3g}% of one round ({best.engine}, batch {batch}: "
                           f"{best.values['seconds']:.3g} s)")
  return out


def _cells(ctx: Context, row: Row) -> list[Any]:
  v = dict(row.values, **derive(ctx, row))
  done = row.status == "done"

  def num(key):
    x = v.get(key)
    if isinstance(x, (int, float)) and math.isfinite(x):
      return float(x)
    return "n/a" if done and key == "peak_gib" else ""

  tflops = v.get("tflops")
  notes = row.notes + ([v["round_note"]] if "round_note" in v else [])
  return [row.measurement, row.size, "" if row.k is None else row.k,
          "" if row.batch is None else row.batch, row.engine, num("seconds"), num("pairs_s"),
          float(tflops) if tflops else "", num("x_loop"), num("x_torch"), num("mfu_fp32"),
          num("mfu_bf16"), num("compile_s"), num("xla_gib"), num("peak_gib"),
          "; ".join(notes).replace("|", "/")]


def markdown(ctx: Context) -> str:
  i, a = ctx.info, ctx.args
  peaks = ", ".join(f"{k} {t:.4g} TFLOP/s" for k, t in i.get("peak_tflops", {}).items())
  flops = ", ".join(f"{k} {f / 1e9:.4g} GFLOP" for k, f in i.get("flops_per_pair", {}).items())
  table = common.markdown_table(list(COLUMNS), [_cells(ctx, r) for r in ctx.rows])
  limit, wall = i.get("memory_limit_gib"), i.get("wall_s", float("nan"))
  return f"""# Accelerator benchmark

- Device: {i.get('device')} ({i.get('platform')}, {i.get('device_count')} device(s)), memory \
limit {f"{limit:.1f} GiB" if limit else "n/a"}.
- Versions: jax {i.get('jax')}, jaxlib {i.get('jaxlib')}, flax {i.get('flax')}, \
torch {i.get('torch')}, transformers {i.get('transformers')}, Python {i.get('python')}.
- Host: {i.get('machine')}.
- Command: `{i.get('command')}`; budget {a.budget_s:g} s, wall {wall:.1f} s.
- Matmul peaks: {peaks or 'not measured'}.
- Model FLOPs per pair and local step (analytic): {flops or 'n/a'}.

Local steps per client: {a.steps}; pairs/s = K x steps x batch / round time (median of up to
{a.repeats} timed rounds after a warm-up call; compile time apart). loop and PyTorch run the
clients one after another: timed on {a.loop_clients} clients, scaled to K. MFU = model FLOP/s /
measured matmul peak (fp32 at JAX's default precision, which is TF32 on recent GPUs; bf16).
XLA GiB: the compiled program's arguments + outputs + temporaries. peak GiB: the JAX process's
device peak so far (PyTorch rows: PyTorch's own peak in that row); n/a on CPU.

{table}
"""


def _clean(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


def write_outputs(ctx: Context) -> tuple[str, dict[str, Any]]:
  ctx.info["wall_s"] = time.perf_counter() - ctx.started
  md = markdown(ctx)
  data = dict(ctx.info, args={k: v for k, v in vars(ctx.args).items()},
              rows=[dict(dataclasses.asdict(r), label=r.label, derived=derive(ctx, r))
                    for r in ctx.rows],
              skipped=[f"{r.label}: {'; '.join(r.notes)}" for r in ctx.rows
                       if r.status == "skipped"])
  data = _clean(data)
  ctx.out.mkdir(parents=True, exist_ok=True)
  # Rewritten after every row: a file replaced whole, so a run stopped from outside (even
  # mid-write) leaves the last complete table.
  for name, text in (("accelerator.md", md),
                     ("accelerator.json", json.dumps(data, indent=1, default=str) + "\n")):
    tmp = ctx.out / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, ctx.out / name)
  return md, data


def check(ctx: Context) -> list[str]:
  """Problems with the written table and JSON: a planned row neither measured nor skipped with a
  note, an error, a required number missing or not positive and finite, a table line missing."""
  problems = []
  for r in ctx.rows:
    if r.status == "skipped":
      if not any(n.startswith("skipped: ") and len(n) > len("skipped: ") for n in r.notes):
        problems.append(f"{r.label}: skipped without a note")
    elif r.status == "done":
      for key in r.required:
        x = r.values.get(key)
        if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
          problems.append(f"{r.label}: {key} = {x!r}")
    else:
      problems.append(f"{r.label}: {r.status} {'; '.join(r.notes)}".rstrip())
  md = (ctx.out / "accelerator.md").read_text()
  data = json.loads((ctx.out / "accelerator.json").read_text())
  lines = [line for line in md.splitlines() if line.startswith("| ")]
  if len(lines) != len(ctx.rows) + 1 or len(data["rows"]) != len(ctx.rows):
    problems.append(f"{len(lines) - 1} table lines and {len(data['rows'])} JSON rows for "
                    f"{len(ctx.rows)} planned rows")
  for line, r in zip(lines[1:], ctx.rows):
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) != len(COLUMNS) or cells[0] != r.measurement or cells[4] != r.engine:
      problems.append(f"table line does not match {r.label}: {line}")
  if ctx.args.quick:  # The analytic FLOP count against XLA's (vmap rows at 1 local step).
    for key, xla in ctx.info.get("xla_flops_per_pair", {}).items():
      ours = ctx.info["flops_per_pair"][key]
      if abs(ours / xla - 1) > 0.15:
        problems.append(f"FLOPs per pair {key}: analytic {ours:.4g} vs XLA {xla:.4g}")
  return problems


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", default="b32,tiny", help="comma list of b32, tiny")
  p.add_argument("--quick", action="store_true",
                 help=f"CI smoke run: {QUICK} unless given; checks the FLOP count too")
  p.add_argument("--budget_s", type=float, default=480.0, help="whole run's time budget")
  p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "tmp" / "accelerator")),
                 help="folder for accelerator.md and accelerator.json (default: $OUT, else "
                 "tmp/accelerator, which git ignores)")
  p.add_argument("--clients", help=f"K values (default {FULL['clients']})")
  p.add_argument("--batches", help=f"per-client batch sizes (default {FULL['batches']})")
  p.add_argument("--steps", type=int, help=f"local steps per client (default {FULL['steps']})")
  p.add_argument("--repeats", type=int, help=f"timed rounds (default {FULL['repeats']})")
  p.add_argument("--engines", default=",".join(ENGINES))
  p.add_argument("--chunk", type=int,
                 help=f"clients per chunk; 0: {CHUNK_PAIRS} // batch (default {FULL['chunk']})")
  p.add_argument("--loop_clients", type=int,
                 help=f"clients timed for loop and torch (default {FULL['loop_clients']})")
  p.add_argument("--gsd_clients", help=f"K retained for GSD (default {FULL['gsd_clients']})")
  p.add_argument("--gsd_method", default="gram")
  p.add_argument("--pool", type=int, help="random pairs in the data pool (tiny 4096, b32 1024)")
  p.add_argument("--peak_n", type=int, help="matmul size for the peaks (GPU 8192, CPU 1024)")
  p.add_argument("--b32_layers", type=int, help="B/32 widths with this many layers (tests)")
  p.add_argument("--only", default="", help="comma list of measurements (peak, throughput, "
                 "throughput:b32, throughput:tiny, gsd, population)")
  p.add_argument("--torch_precision", default="high", choices=("high", "highest"),
                 help="PyTorch fp32 matmul precision on the GPU (high = TF32, as JAX's default)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  for key, value in (QUICK if args.quick else FULL).items():
    if getattr(args, key, None) is None:
      setattr(args, key, value)
  ints = lambda s: [int(x) for x in str(s).split(",") if x]
  args.clients, args.batches, args.gsd_clients = (ints(args.clients), ints(args.batches),
                                                  ints(args.gsd_clients))
  args.size = [s for s in args.size.split(",") if s]
  args.engines = [e for e in args.engines.split(",") if e]
  args.only = [s for s in args.only.split(",") if s]
  for name, values, allowed in (("size", args.size, SIZES), ("engine", args.engines, ENGINES)):
    if not values or set(values) - set(allowed):
      p.error(f"--{name}: {values} not in {allowed}")
  return args


def main(argv: list[str] | None = None, measurements: list[Measurement] | None = None,
         started: float | None = None) -> int:
  """Runs the selected measurements; 0 if the written table passes `check`, else 1.
  `started`: when the budget began (the script: its start, imports included; default now)."""
  started = time.perf_counter() if started is None else started
  args = parse_args(argv)
  ctx = Context(args=args, out=pathlib.Path(args.out), started=started)
  budget = Budget(args.budget_s - (time.perf_counter() - started))
  ctx.info.update(device_info())
  ctx.info["command"] = "python " + " ".join(
      [os.path.relpath(sys.argv[0], ROOT) if argv is None else "benchmarks/accelerator.py"]
      + (sys.argv[1:] if argv is None else list(argv)))
  print(f"{ctx.info['device']} ({ctx.info['platform']}), jax {ctx.info['jax']}, budget "
        f"{args.budget_s:g} s", flush=True)
  run_measurements(ctx, selected(args, measurements or MEASUREMENTS), budget)
  md, _ = write_outputs(ctx)
  problems = check(ctx)
  ctx.info["check"] = dict(ok=not problems, problems=problems)
  write_outputs(ctx)
  print(md)
  print("check: " + ("ok" if not problems else "FAILED\n  " + "\n  ".join(problems)),
        flush=True)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main(started=_T0))
