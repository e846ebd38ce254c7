"""Centralised full-parameter CLIP training: builds the stand-in "pretrained" backbone.

No pretrained CLIP weights can be downloaded here, so the embedded default backbone is a tiny CLIP
trained on the public split only (disjoint from every client and from the test split).
"""
from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import auto as tqdm

from ease_jax import federated
from ease_jax import losses
from ease_jax.model import CLIP

PyTree = Any


def make_schedule(learning_rate: float, steps: int, warmup: int) -> optax.Schedule:
  warmup = max(1, min(warmup, steps // 2))
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(steps, warmup + 1),
                                            end_value=learning_rate * 0.05)


@functools.partial(jax.jit, static_argnames=("model", "optimizer", "learn_logit_scale"),
                   donate_argnums=(1, 2))
def train_step(model: CLIP, params: PyTree, opt_state: PyTree, data: federated.DeviceData,
               text_indices: jax.Array, optimizer: optax.GradientTransformation,
               learn_logit_scale: bool = True):
  """One full-parameter step on texts `text_indices [B]` (all valid)."""

  def loss_fn(p):
    batch = data.batch(text_indices)
    image_emb, text_emb, scale = model(p, None, batch["pixels"], batch["input_ids"],
                                       batch["attention_mask"])
    if not learn_logit_scale:
      scale = jax.lax.stop_gradient(scale)
    return losses.clip_loss(image_emb, text_emb, scale)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def pretrain(model: CLIP, params: PyTree, data: federated.DeviceData, texts: np.ndarray,
             steps: int, batch_size: int, learning_rate: float, weight_decay: float,
             warmup: int, seed: int, learn_logit_scale: bool = True, progress: bool = True
             ) -> tuple[PyTree, list[float]]:
  """Trains all backbone parameters on `texts` with AdamW + warmup-cosine; returns params, losses.

  With `learn_logit_scale=False` the temperature stays at its initial value: a tiny CLIP trained
  on a small split otherwise drives it up until it is over-confident on unseen pairs, which
  makes the backbone a poor starting point for LoRA fine-tuning.
  """
  frozen_scale = jax.tree_util.tree_map_with_path(
      lambda path, _: learn_logit_scale or jax.tree_util.keystr(path) != "['logit_scale']",
      params)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.masked(optax.adamw(make_schedule(learning_rate, steps, warmup),
                                                   weight_decay=weight_decay), frozen_scale))
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(seed)
  texts = np.asarray(texts, np.int32)
  if len(texts) < batch_size:
    raise ValueError(f"Pretraining needs at least batch_size={batch_size} texts, got {len(texts)}.")
  losses_seen, order, pos = [], rng.permutation(texts), 0
  bar = tqdm.trange(steps, desc="pretrain", disable=not progress)
  t0 = time.perf_counter()
  for step in bar:
    if pos + batch_size > len(order):
      order, pos = rng.permutation(texts), 0
    batch = jnp.asarray(order[pos:pos + batch_size])
    pos += batch_size
    params, opt_state, loss = train_step(model, params, opt_state, data, batch, optimizer,
                                         learn_logit_scale)
    if step % 25 == 0 or step == steps - 1:
      losses_seen.append(float(loss))
      bar.set_postfix(loss=f"{losses_seen[-1]:.3f}", s=f"{time.perf_counter() - t0:.0f}")
  return params, losses_seen
