"""Shared set-up of the benchmark scripts: the embedded-default tiny CLIP with random weights and
random data, timing helpers, machine description and `BENCHMARKS.md` section writing.

Nothing here reads files: the architecture is the one of `experiments/configs/pretrain_emoji.py`
(image 32, patch 8, width 128, MLP 512, 4 heads, 4 + 4 layers, projection 128, context 24,
vocab 1024) and LoRA is the default rank 8 on q/v of both towers.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

VOCAB = 1024
CONTEXT = 24
IMAGE = 32
LORA_RANK = 8
LORA_ALPHA = 16.0
CLIENT_LR = 2e-3

INTRO = """# Benchmarks

Measured results of ease-jax, each section with the exact command that produced it and the
machine it ran on. Timings are medians over repeats after a warm-up (compile) call; compile
time is reported separately. Engine / Throughput / GSD / Scale use the embedded-default tiny
CLIP architecture (`experiments/configs/pretrain_emoji.py`) with random weights and random data
and LoRA rank 8 on q/v (`benchmarks/common.py`). Unlearning results are added by their own
sections.
"""


def tiny_default_config():
  """The embedded default's architecture (random weights)."""
  from ease_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  return model_lib.CLIPConfig(
      vision=model_lib.VisionConfig(hidden_size=128, intermediate_size=512, num_layers=4,
                                    num_heads=4, image_size=IMAGE, patch_size=8),
      text=model_lib.TextConfig(hidden_size=128, intermediate_size=512, num_layers=4,
                                num_heads=4, vocab_size=VOCAB, max_position_embeddings=CONTEXT,
                                eos_token_id=VOCAB - 1),
      projection_dim=128)


def random_device_data(num_pairs: int, seed: int = 0):
  """`num_pairs` random image–caption pairs (one caption per image) as `DeviceData`."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ease_jax import federated  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_pairs, IMAGE, IMAGE, 3), dtype=np.uint8)
  lengths = rng.integers(4, CONTEXT - 1, num_pairs)
  ids = np.full((num_pairs, CONTEXT), VOCAB - 1, np.int32)
  mask = np.zeros((num_pairs, CONTEXT), np.int32)
  for i, n in enumerate(lengths):
    ids[i, 0] = VOCAB - 2
    ids[i, 1:n + 1] = rng.integers(0, VOCAB - 2, n)
    mask[i, :n + 2] = 1
  return federated.DeviceData(images=jnp.asarray(images), input_ids=jnp.asarray(ids),
                              attention_mask=jnp.asarray(mask),
                              text_image=jnp.arange(num_pairs, dtype=jnp.int32))


@dataclasses.dataclass
class Engine:
  """Everything a round needs: model, frozen backbone, fresh LoRA, data, client update."""
  model: Any
  backbone: Any
  trainable: Any
  data: Any
  client_update: Callable
  num_pairs: int


def make_engine(num_pairs: int = 4096, lora_mode: str = "unmerged", seed: int = 0) -> Engine:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ease_jax import federated  # pylint: disable=g-import-not-at-top
  from ease_jax import lora as lora_lib  # pylint: disable=g-import-not-at-top
  from ease_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  lora_config = lora_lib.LoRAConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
  model = model_lib.CLIP(tiny_default_config(), lora_scale=lora_config.scale, lora_mode=lora_mode)
  backbone = model.init(jax.random.key(seed))
  trainable = lora_lib.init_lora(jax.random.key(seed + 1), backbone, lora_config)
  # Non-zero B so that both factors matter (a fresh B = 0 is a special case).
  trainable = jax.tree.map(lambda x: x + 0.01, trainable)
  client_update = federated.local_steps(federated.clip_objective(model), optax.adam(CLIENT_LR))
  return Engine(model, backbone, trainable, random_device_data(num_pairs, seed), client_update,
                num_pairs)


def schedules(num_clients: int, steps: int, batch: int, num_pairs: int, seed: int = 0,
              ragged: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Random `(indices, mask)` `[clients, steps, batch]`; clients draw from the shared pool.

  ragged: clients hold between 1 and `steps * batch` examples (masked tails), as with a
  non-IID partition; otherwise every client is full.
  """
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, num_pairs, (num_clients, steps, batch), dtype=np.int32)
  mask = np.ones((num_clients, steps, batch), bool)
  if ragged:
    sizes = rng.integers(1, steps * batch + 1, num_clients)
    flat = np.arange(steps * batch)[None, :] < sizes[:, None]
    mask = flat.reshape(num_clients, steps, batch)
    idx = np.where(mask, idx, 0)
  return idx, mask


def block(x):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(x)


def paired_difference(a, b, confidence: float = 0.95) -> dict[str, float]:
  """Mean, std, standard error and `confidence` t-interval of `a - b` (`[n]` each, paired by
  member), in the units of `a`."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a, float), np.asarray(b, float)
  if a.ndim != 1 or a.shape != b.shape or a.size < 2:
    raise ValueError(f"paired_difference needs two 1-D arrays of one length >= 2, got shapes "
                     f"{a.shape} and {b.shape}")
  d = a - b
  std = float(d.std(ddof=1))
  se = float(std / np.sqrt(d.size))
  half = float(scipy.stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * se
  mean = float(d.mean())
  return dict(n=int(d.size), mean=mean, std=std, se=se, lo=mean - half, hi=mean + half)


def time_fn(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> tuple[float, float]:
  """(median seconds over `repeats`, seconds of the first (compile) call)."""
  t0 = time.perf_counter()
  for _ in range(warmup):
    block(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first


def peak_rss_mib() -> float:
  """This process's peak resident set (VmHWM), MiB."""
  try:
    text = pathlib.Path("/proc/self/status").read_text()
    kb = int(re.search(r"VmHWM:\s+(\d+)\s+kB", text).group(1))
    return kb / 1024
  except (OSError, AttributeError):
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
  """`<cpu model>, <n> cores visible, <mem> GiB RAM, jax <v> (<backend>)`."""
  model = platform.processor() or "unknown CPU"
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"Model name:\s+(.+)", out)
    model = m.group(1).strip() if m else model
  except OSError:
    pass
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  import jax  # pylint: disable=g-import-not-at-top
  return (f"{model}, {os.cpu_count()} cores visible, {mem:.0f} GiB RAM, jax {jax.__version__} "
          f"({jax.default_backend()}, {jax.device_count()} device(s))")


def command() -> str:
  return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


GENERATED_START = ("<!-- generated: rerunning the command below replaces the text up to the end "
                   "mark; text after it is kept -->")
GENERATED_END = "<!-- end of generated text -->"
KEPT_NOTE = ("*Kept from before this section's generated text was marked (the script that "
             "writes it never deletes text; remove what is superseded by hand):*")


def write_section(heading: str, body: str, path: pathlib.Path = BENCHMARKS_MD) -> None:
  """Writes `body` as the generated text of the `## heading` section of BENCHMARKS.md.

  Only the text between `GENERATED_START` and `GENERATED_END` is replaced, so the notes written
  by hand around a table survive a rerun. A section written before the marks existed keeps all
  of its old text below the new generated block (nothing is deleted); a missing section is
  appended. The file is replaced atomically (a kill leaves the old or the new file, whole).
  """
  text = path.read_text() if path.exists() else INTRO
  block = f"{GENERATED_START}\n{body.strip()}\n{GENERATED_END}"
  pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
  match = pattern.search(text)
  if match is None:
    text = text.rstrip() + f"\n\n## {heading}\n\n{block}\n"
  else:
    old = match.group(0)
    start, end = old.find(GENERATED_START), old.find(GENERATED_END)
    if 0 <= start < end:
      section = old[:start] + block + old[end + len(GENERATED_END):]
    else:
      kept = old[len(f"## {heading}\n"):].strip()
      section = f"## {heading}\n\n{block}\n" + (f"\n{KEPT_NOTE}\n\n{kept}\n" if kept else "")
    text = text[:match.start()] + section.rstrip() + "\n\n" + text[match.end():].lstrip("\n")
    text = text.rstrip() + "\n"
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)
