"""Centralised full-parameter CLIP training: builds the stand-in "pretrained" backbone.

No pretrained CLIP weights can be downloaded here, so the embedded default backbone is a tiny CLIP
trained on the public split only (disjoint from every client and from the test split). Training
is the same local-steps primitive as a FedAvg client (`federated.local_steps`), with all
parameters trainable, no frozen tree, and the optimizer state carried across chunks of steps.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from tqdm import auto as tqdm

from ease_jax import builders
from ease_jax import evaluation
from ease_jax import federated
from ease_jax import hf
from ease_jax import jsonio
from ease_jax import lora as lora_lib
from ease_jax import losses
from ease_jax import model as model_lib
from ease_jax import validation
from ease_jax.data import dataset as dataset_lib
from ease_jax.model import CLIP

PyTree = Any
LOG_EVERY = 25  # steps per jitted chunk; the loss curve keeps each chunk's first step
PRETRAIN_RULES = {
    **{f"arch.{k}": validation.integer(1) for k in (
        "image_size", "patch_size", "width", "mlp_dim", "heads", "vision_layers", "text_layers",
        "projection_dim", "context_length")},
    "pretrain.steps": validation.integer(1), "pretrain.batch_size": validation.integer(1),
    "pretrain.learning_rate": validation.positive, "pretrain.weight_decay": validation.non_negative,
    "pretrain.warmup": validation.integer(0), "pretrain.learn_logit_scale": validation.boolean,
}


def make_schedule(learning_rate: float, steps: int, warmup: int) -> optax.Schedule:
  warmup = max(1, min(warmup, steps // 2))
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(steps, warmup + 1),
                                            end_value=learning_rate * 0.05)


def full_objective(model: CLIP, learn_logit_scale: bool) -> federated.LossFn:
  """CLIP loss of all backbone parameters (`params`; no LoRA, no frozen tree)."""

  def loss_fn(params, frozen, batch, context=None):
    del frozen, context
    image_emb, text_emb, scale = model(params, None, batch["pixels"], batch["input_ids"],
                                       batch["attention_mask"])
    if not learn_logit_scale:
      scale = jax.lax.stop_gradient(scale)
    return losses.clip_loss(image_emb, text_emb, scale, batch["mask"],
                            text_tokens=batch["input_ids"])

  return loss_fn


def epoch_batches(texts: np.ndarray, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """`[steps, batch_size]` text ids: shuffled passes over `texts`, reshuffled when one runs out."""
  rng = np.random.default_rng(seed)
  texts = np.asarray(texts, np.int32)
  if len(texts) < batch_size:
    raise ValueError(f"Pretraining needs at least batch_size={batch_size} texts, got {len(texts)}.")
  out, order, pos = np.zeros((steps, batch_size), np.int32), rng.permutation(texts), 0
  for step in range(steps):
    if pos + batch_size > len(order):
      order, pos = rng.permutation(texts), 0
    out[step] = order[pos:pos + batch_size]
    pos += batch_size
  return out


@dataclasses.dataclass(frozen=True)
class PretrainOptions:
  """Central training knobs: AdamW with warmup-cosine over `steps` batches of `batch_size`;
  `seed` draws the epoch shuffles; `learn_logit_scale=False` keeps the temperature fixed."""
  steps: int
  batch_size: int
  learning_rate: float
  weight_decay: float
  warmup: int
  seed: int
  learn_logit_scale: bool = True


def pretrain(model: CLIP, params: PyTree, data: federated.DeviceData, texts: np.ndarray,
             options: PretrainOptions, progress: bool = True) -> tuple[PyTree, list[float]]:
  """Trains all backbone parameters on `texts` (`options`); returns params and the loss curve.

  With `learn_logit_scale=False` the temperature stays at its initial value: a tiny CLIP trained
  on a small split otherwise drives it up until it is over-confident on unseen pairs, which
  makes the backbone a poor starting point for LoRA fine-tuning.
  """
  o = options
  learn_logit_scale = o.learn_logit_scale
  frozen_scale = jax.tree_util.tree_map_with_path(
      lambda path, _: learn_logit_scale or jax.tree_util.keystr(path) != "['logit_scale']",
      params)
  schedule = make_schedule(o.learning_rate, o.steps, o.warmup)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.masked(optax.adamw(schedule, weight_decay=o.weight_decay),
                                       frozen_scale))
  local = federated.local_steps(full_objective(model, learn_logit_scale), optimizer)
  run_chunk = jax.jit(local.resume, donate_argnums=(0, 1))
  plan = epoch_batches(texts, o.steps, o.batch_size, o.seed)
  opt_state = optimizer.init(params)
  losses_seen = []
  bar = tqdm.trange(0, o.steps, LOG_EVERY, desc="pretrain", disable=not progress)
  t0 = time.perf_counter()
  for start in bar:
    idx = jnp.asarray(plan[start:start + LOG_EVERY])
    params, opt_state, metrics = run_chunk(params, opt_state, None, data,
                                           federated.Batches(idx, jnp.ones(idx.shape, bool)))
    step_loss = np.asarray(metrics["step_loss"])
    losses_seen.append(float(step_loss[0]))
    if start + len(step_loss) == o.steps and len(step_loss) > 1:
      losses_seen.append(float(step_loss[-1]))
    bar.set_postfix(loss=f"{losses_seen[-1]:.3f}", s=f"{time.perf_counter() - t0:.0f}")
  return params, losses_seen


def arch_from_config(arch: ml_collections.ConfigDict, vocab_size: int, eos_token_id: int,
                     context_length: int) -> model_lib.CLIPConfig:
  """A CLIPConfig from the `arch` block of a pretraining config."""
  return model_lib.CLIPConfig(
      vision=model_lib.VisionConfig(
          hidden_size=arch.width, intermediate_size=arch.mlp_dim, num_layers=arch.vision_layers,
          num_heads=arch.heads, image_size=arch.image_size, patch_size=arch.patch_size),
      text=model_lib.TextConfig(
          hidden_size=arch.width, intermediate_size=arch.mlp_dim, num_layers=arch.text_layers,
          num_heads=arch.heads, vocab_size=vocab_size, max_position_embeddings=context_length,
          eos_token_id=eos_token_id),
      projection_dim=arch.projection_dim)


# What pretraining reads besides `arch` and `pretrain` (its config is built on `base_config()`,
# whose other blocks it never reads).
PRETRAIN_READS = ("seeds.split", "seeds.init", "seeds.data", "data.skin_tone_variants",
                  "data.split", "data.public_fraction", "data.test_fraction", "data.label")


def ignored_settings(config: ml_collections.ConfigDict) -> list[str]:
  """`key=value` of every setting that differs from `configs.base_config()` but that pretraining
  does not read (e.g. `--config.fed.rounds=3`, `--config.data.name=karpathy`): refused, not
  silently ignored."""
  from ease_jax import configs  # pylint: disable=g-import-not-at-top
  flat = lambda c: traverse_util.flatten_dict(c.to_dict(), sep=".")
  defaults, current = flat(configs.base_config()), flat(config)
  return [f"{k}={current[k]!r}" for k in sorted(current)
          if k in defaults and k not in PRETRAIN_READS and current[k] != defaults[k]]


def pretrain_backbone(config: ml_collections.ConfigDict, out_dir: str | pathlib.Path,
                      overwrite: bool = False) -> dict[str, Any]:
  """Trains the embedded-default backbone on the public split and saves it as an HF CLIP folder.

  Returns the summary (also written to `out_dir/pretraining.json`).
  """
  validation.require_blocks(config, ("arch", "pretrain"), "pretraining",
                            "experiments/configs/pretrain_emoji.py")
  ignored = ignored_settings(config)  # First: the checks of ignored blocks would mislead.
  if ignored:
    raise validation.ConfigError(
        "Pretraining reads the emoji data, `arch`, `pretrain`, the split settings "
        f"({', '.join(PRETRAIN_READS)}); these settings would be ignored: {', '.join(ignored)}.")
  validation.validate(config, [PRETRAIN_RULES])
  from ease_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  tokenizer = tok_lib.load_tokenizer(dataset_lib.embedded_tokenizer_dir())
  context = config.arch.context_length
  ds = dataset_lib.load_emoji(tokenizer=tokenizer, max_length=context,
                              skin_tone_variants=config.data.skin_tone_variants,
                              image_size=config.arch.image_size)
  splits = builders.split_dataset(ds, config.data, config.seeds.split)
  clip_config = arch_from_config(config.arch, len(tokenizer), tok_lib.eos_token_id(tokenizer),
                                 context)
  model = CLIP(clip_config)
  params = model.init(jax.random.key(config.seeds.init))
  data = federated.DeviceData.from_dataset(ds)
  public_texts = np.flatnonzero(np.isin(ds.text_image, splits.public))
  t0 = time.perf_counter()
  params, loss_curve = pretrain(
      model, params, data, public_texts, PretrainOptions(
          steps=config.pretrain.steps, batch_size=config.pretrain.batch_size,
          learning_rate=config.pretrain.learning_rate,
          weight_decay=config.pretrain.weight_decay, warmup=config.pretrain.warmup,
          seed=config.seeds.data, learn_logit_scale=config.pretrain.learn_logit_scale))
  train_time = time.perf_counter() - t0
  evals = {}
  for name, images in (("public", splits.public), ("test", splits.test),
                       ("clients", splits.clients)):
    res = evaluation.evaluate_images(model, params, None, data, ds, images)
    evals.update({f"{name}/{k}": v for k, v in res.items()})
  summary = dict(
      split=dict(kind=config.data.get("split", "random"), seed=config.seeds.split,
                 skin_tone_variants=config.data.skin_tone_variants,
                 public_fraction=config.data.public_fraction,
                 test_fraction=config.data.test_fraction, label=config.data.label,
                 num_public=int(len(splits.public))),
      steps=config.pretrain.steps, batch_size=config.pretrain.batch_size,
      train_time_s=train_time, loss_curve=loss_curve, eval=evals,
      num_params=lora_lib.num_params(params))
  # The summary goes into the folder before it is renamed into place: weights and their
  # summary appear together or not at all.
  hf.save_clip(out_dir, clip_config, jax.tree.map(np.asarray, params), tokenizer=tokenizer,
               extra_files={"pretraining.json": jsonio.dumps(summary, indent=1).encode()},
               overwrite=overwrite)
  return summary
