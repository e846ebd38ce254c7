"""Glue between configs, data, model and the federated engine (the I/O side of the library).

`build_setup(config)` loads the backbone and the dataset, splits and partitions it, and returns a
`FederatedSetup`; `run_federated(setup, ...)` trains the LoRA adapters with FedAvg, writing
per-round metrics as JSON lines and orbax checkpoints, and resumes from the workdir. The binaries
in `experiments/` are thin wrappers over these two functions.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import auto as tqdm

from ease_jax import checkpointing
from ease_jax import evaluation
from ease_jax import federated
from ease_jax import hf
from ease_jax import lora as lora_lib
from ease_jax import model as model_lib
from ease_jax.data import dataset as dataset_lib
from ease_jax.data import partition as partition_lib
from ease_jax.model import CLIP

PyTree = Any
EMBEDDED_BACKBONE = "embedded"
_ASSETS = pathlib.Path(__file__).resolve().parent / "assets"


def embedded_backbone_dir() -> pathlib.Path:
  return _ASSETS / "emoji_clip"


@dataclasses.dataclass
class FederatedSetup:
  """Everything a federated run needs, built once from a config."""
  model: CLIP
  backbone: PyTree                 # frozen params (HF Flax layout)
  dataset: dataset_lib.CaptionDataset
  data: federated.DeviceData
  public_images: np.ndarray        # [n] image indices for central pretraining
  test_images: np.ndarray          # held-out image indices
  client_images: list[np.ndarray]  # per client, image indices
  lora_config: lora_lib.LoRAConfig
  tokenizer: Any = None

  @property
  def num_clients(self) -> int:
    return len(self.client_images)

  def texts_of(self, image_indices: np.ndarray) -> np.ndarray:
    """Text indices whose image is in `image_indices` (sorted)."""
    return np.flatnonzero(np.isin(self.dataset.text_image, image_indices)).astype(np.int32)

  def client_texts(self, exclude_texts: np.ndarray | None = None) -> list[np.ndarray]:
    texts = [self.texts_of(imgs) for imgs in self.client_images]
    if exclude_texts is not None and len(exclude_texts):
      texts = [t[~np.isin(t, exclude_texts)] for t in texts]
    return texts

  @property
  def all_client_images(self) -> np.ndarray:
    return np.sort(np.concatenate(self.client_images))


def make_optimizer(name: str, learning_rate: float, weight_decay: float = 0.0,
                   freeze_lora_a: bool = False) -> optax.GradientTransformation:
  """Optimizer over the trainable tree; `freeze_lora_a` keeps every LoRA A factor fixed (FFA-LoRA)."""
  if name == "adam":
    opt = optax.adam(learning_rate)
  elif name == "adamw":
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
  elif name == "sgd":
    opt = optax.sgd(learning_rate)
  else:
    raise ValueError(f"Unknown optimizer {name!r}; expected adam, adamw or sgd.")
  if freeze_lora_a:
    opt = optax.multi_transform({"trainable": opt, "frozen": optax.set_to_zero()},
                                lora_lib.frozen_a_labels)
  return opt


def load_backbone(model_config: ml_collections.ConfigDict) -> tuple[Any, PyTree, Any]:
  """(CLIPConfig, params, tokenizer) from `model.checkpoint` ('embedded', a folder or a repo id)."""
  checkpoint = model_config.checkpoint
  path = embedded_backbone_dir() if checkpoint == EMBEDDED_BACKBONE else checkpoint
  if checkpoint == EMBEDDED_BACKBONE and not (embedded_backbone_dir() / "config.json").exists():
    raise FileNotFoundError(
        f"The embedded backbone is missing from {embedded_backbone_dir()}; build it with "
        "`python experiments/pretrain.py --config=experiments/configs/pretrain_emoji.py`.")
  clip_config, params = hf.load_clip(path)
  tokenizer, _ = hf.load_tokenizer_and_processor(hf.resolve_checkpoint(str(path)))
  return clip_config, params, tokenizer


def load_dataset(data_config: ml_collections.ConfigDict, tokenizer: Any,
                 context_length: int, image_size: int) -> dataset_lib.CaptionDataset:
  max_length = min(data_config.get("max_length", context_length) or context_length,
                   context_length)
  if data_config.name == "emoji":
    ds = dataset_lib.load_emoji(tokenizer=tokenizer, max_length=max_length,
                                skin_tone_variants=data_config.get("skin_tone_variants", True))
    if ds.images.shape[1] != image_size:
      raise ValueError(f"The embedded emoji images are {ds.images.shape[1]} px but the model "
                       f"expects {image_size} px; rebuild the data with --size={image_size}.")
    return ds
  if data_config.name == "karpathy":
    from ease_jax.data import karpathy  # pylint: disable=g-import-not-at-top
    return karpathy.load_karpathy(
        data_config.json_path, data_config.image_root, split=tuple(data_config.splits),
        tokenizer=tokenizer, max_length=max_length, image_size=image_size,
        max_images=data_config.get("max_images") or None)
  raise ValueError(f"Unknown dataset {data_config.name!r}; expected 'emoji' or 'karpathy'.")


def lora_config_from(lora: ml_collections.ConfigDict) -> lora_lib.LoRAConfig:
  """The `LoRAConfig` of a config's `lora` block."""
  return lora_lib.LoRAConfig(rank=lora.rank, alpha=lora.alpha,
                             targets=lora_lib.resolve_targets(lora.targets),
                             init_std=lora.get("init_std", 0.02),
                             freeze_a=lora.get("freeze_a", False))


SPLITS = ("random", "skin_tone")


def image_labels(ds: dataset_lib.CaptionDataset, data_config: ml_collections.ConfigDict
                 ) -> np.ndarray | None:
  """`[num_images]` values of `data.label` (stratification, non-IID partition), or None."""
  label = data_config.get("label")
  if not label:
    return None
  if label not in ds.image_meta:
    raise ValueError(f"data.label={label!r} is not a field of {ds.name}; "
                     f"available: {sorted(ds.image_meta)}.")
  return np.asarray(ds.image_meta[label])


def split_dataset(ds: dataset_lib.CaptionDataset, data_config: ml_collections.ConfigDict,
                  seed: int) -> partition_lib.Splits:
  """Public (backbone pretraining) / test / client images, as `data.split` says.

  'random': a stratified random `public_fraction` and `test_fraction` of all images.
  'skin_tone' (emoji only): public = every emoji without a skin-tone modifier; the 1,785 toned
  variants are split into test (`test_fraction` of them) and clients. The backbone then knows
  each gesture and person in its default colour, and what the clients' data teaches it is the
  skin-tone vocabulary and its colours: an adaptation federated LoRA can learn in a few rounds,
  unlike ~900 name-picture pairs of unseen emoji, which it can only memorise slowly.
  """
  kind = data_config.get("split", "random")
  labels = image_labels(ds, data_config)
  if kind == "random":
    return partition_lib.split_public_test_clients(
        ds.num_images, data_config.public_fraction, data_config.test_fraction, seed=seed,
        labels=labels)
  if kind == "skin_tone":
    tones = ds.image_meta.get("skin_tone")
    if tones is None:
      raise ValueError(f"data.split='skin_tone' needs a 'skin_tone' image field (the embedded "
                       f"emoji data has one); {ds.name} has {sorted(ds.image_meta)}.")
    public = np.asarray(tones) == "none"
    if public.all():
      raise ValueError("data.split='skin_tone' found no skin-tone variants; set "
                       "data.skin_tone_variants=True.")
    return partition_lib.split_fixed_public(public, data_config.test_fraction, seed, labels)
  raise ValueError(f"Unknown data.split={kind!r}; expected one of {SPLITS}.")


def build_setup(config: ml_collections.ConfigDict) -> FederatedSetup:
  """Backbone + dataset + splits + client partition, from the config and its seeds."""
  clip_config, backbone, tokenizer = load_backbone(config.model)
  logit_scale = config.model.get("logit_scale", 0.0)
  if logit_scale:
    # Fine-tuning temperature: a backbone over-fit to its small pretraining split is
    # over-confident on new pairs (in-batch loss far above chance); a lower, fixed scale lets
    # LoRA learn them without first flattening every similarity. Ranking metrics are unaffected.
    if logit_scale < 0:
      raise ValueError(f"model.logit_scale must be > 0 (or 0 for the checkpoint's), got "
                       f"{logit_scale}.")
    backbone = dict(backbone, logit_scale=np.asarray(np.log(logit_scale), np.float32))
  ds = load_dataset(config.data, tokenizer, clip_config.text.max_position_embeddings,
                    clip_config.vision.image_size)
  labels = image_labels(ds, config.data)
  splits = split_dataset(ds, config.data, config.seeds.split)
  clients = partition_lib.partition(
      splits.clients, config.data.partition, config.fed.num_clients, seed=config.seeds.partition,
      labels=labels,
      alpha=config.data.get("dirichlet_alpha"), min_size=config.data.get("min_client_size", 1))
  lora_config = lora_config_from(config.lora)
  model = CLIP(clip_config, lora_scale=lora_config.scale, lora_mode=config.lora.mode)
  return FederatedSetup(model=model, backbone=jax.tree.map(jnp.asarray, backbone), dataset=ds,
                        data=federated.DeviceData.from_dataset(ds),
                        public_images=splits.public, test_images=splits.test,
                        client_images=list(clients), lora_config=lora_config,
                        tokenizer=tokenizer)


def init_trainable(setup: FederatedSetup, config: ml_collections.ConfigDict) -> PyTree:
  """The LoRA tree (plus a trainable `logit_scale` when `lora.learn_logit_scale`)."""
  trainable = lora_lib.init_lora(jax.random.key(config.seeds.init), setup.backbone,
                                 setup.lora_config)
  if config.lora.get("learn_logit_scale", False):
    trainable["logit_scale"] = jnp.asarray(setup.backbone["logit_scale"], jnp.float32)
  return trainable


def run_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Config entries that determine a federated run's trajectory (not eval/logging knobs)."""
  keep = {k: config[k] for k in ("seeds", "data", "model", "lora", "fed") if k in config}
  fp = checkpointing.fingerprint(keep)
  for k in ("fed.backend", "fed.chunk_size"):  # Execution strategy, not the maths.
    fp.pop(k, None)
  return fp


class JsonlWriter:
  """Per-round metrics as JSON lines; on resume, rows past the restored round are dropped."""

  def __init__(self, path: pathlib.Path, keep_through_round: int | None):
    self.path = path
    rows = []
    if path.exists() and keep_through_round is not None:
      rows = [r for r in read_jsonl(path) if r.get("round", -1) <= keep_through_round]
    elif path.exists():
      raise FileExistsError(f"{path} exists but no checkpoint to resume from; refusing to "
                            "overwrite it. Use a new --workdir.")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)

  def write(self, row: Mapping[str, Any]) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines() if l.strip()]


@dataclasses.dataclass
class RunResult:
  trainable: PyTree
  history: federated.UpdateHistory
  metrics: list[dict[str, Any]]
  wall_time_s: float          # this process's training time (excludes evaluation)
  final_eval: dict[str, Any]


def evaluate_splits(setup: FederatedSetup, trainable: PyTree,
                    subsets: Mapping[str, np.ndarray], batch_size: int = 256
                    ) -> dict[str, float]:
  """`{f"{subset}/{metric}": value}` for each named set of image indices."""
  out = {}
  for name, images in subsets.items():
    if len(images) == 0:
      continue
    res = evaluation.evaluate_images(setup.model, setup.backbone, trainable, setup.data,
                                     setup.dataset, images, batch_size=batch_size)
    out.update({f"{name}/{k}": v for k, v in res.items()})
  return out


def run_federated(setup: FederatedSetup, config: ml_collections.ConfigDict,
                  workdir: str | pathlib.Path | None, *, trainable: PyTree | None = None,
                  num_rounds: int | None = None, client_texts: Sequence[np.ndarray] | None = None,
                  active_clients: Sequence[int] | None = None,
                  eval_subsets: Mapping[str, np.ndarray] | None = None,
                  loss_fn: federated.LossFn | None = None,
                  server_transform: Callable[[PyTree], PyTree] | None = None,
                  round_offset: int = 0, callback: Callable[[int, PyTree], dict] | None = None,
                  desc: str = "federated", progress: bool = True) -> RunResult:
  """FedAvg of the LoRA tree over the setup's clients, resumable from `workdir`.

  Args:
    trainable: start point (default: a fresh LoRA from `seeds.init`).
    client_texts: per-client training texts (default: all of each client's captions); unlearning
      passes the retain-only version.
    active_clients: the clients that may be sampled (default: all with data).
    eval_subsets: named image-index sets to evaluate every `eval.every` rounds and at the end.
    loss_fn / server_transform: hooks for unlearning methods (e.g. EASE's forget lock and
      projection); default the CLIP loss and plain FedAvg.
    round_offset: added to the round index in the RNG streams (continued training after
      unlearning draws fresh samples).
    callback: called after each round with (round, trainable); its dict joins the metrics row.
  """
  fed = config.fed
  workdir = pathlib.Path(workdir) if workdir is not None else None
  num_rounds = fed.rounds if num_rounds is None else num_rounds
  if trainable is None:
    trainable = init_trainable(setup, config)
  if client_texts is None:
    client_texts = setup.client_texts()
  client_texts = [np.asarray(t, np.int32) for t in client_texts]
  if active_clients is None:
    active_clients = [c for c, t in enumerate(client_texts) if len(t)]
  active_clients = np.asarray(sorted(active_clients))
  if len(active_clients) == 0:
    raise ValueError("No client has training data left.")
  eval_subsets = eval_subsets or {}

  client_opt = make_optimizer(fed.client_optimizer, fed.client_lr,
                              freeze_lora_a=setup.lora_config.freeze_a)
  server_opt = federated.server_optimizer(fed.server_lr, fed.get("server_momentum", 0.0))
  loss_fn = loss_fn or federated.clip_objective(setup.model)
  client_update = federated.make_client_update(loss_fn, client_opt)
  round_fn = federated.make_round_fn(client_update, fed.backend, fed.get("chunk_size", 0))
  num_steps = max(federated.num_local_steps(len(client_texts[c]), fed.batch_size,
                                            fed.local_epochs) for c in active_clients)
  flat_size = int(federated.flatten_deltas(jax.tree.map(lambda x: x[None], trainable)).shape[1])
  history = federated.UpdateHistory.create(setup.num_clients, fed.history_size, flat_size)
  state = federated.init_server(trainable, server_opt)
  per_round = fed.clients_per_round or len(active_clients)

  ckpt = None
  start_round, metrics_rows = 0, []
  if workdir is not None:
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", run_fingerprint(config))
    latest = ckpt.latest_step()
    if latest is not None:
      like = dict(state=state, history_updates=history.updates, history_rounds=history.rounds)
      restored, _ = ckpt.restore(like, latest)
      state = jax.tree.map(jnp.asarray, restored["state"])
      history = federated.UpdateHistory(np.array(restored["history_updates"]),
                                        np.array(restored["history_rounds"]))
      start_round = int(state.round)
      logging.info("Resumed %s from round %d in %s", desc, start_round, workdir)
    writer = JsonlWriter(workdir / "metrics.jsonl", start_round if latest is not None else None)
    metrics_rows = read_jsonl(writer.path)

  @jax.jit
  def server_step(state, deltas, weights):
    return federated.fedavg(state, deltas, weights, server_opt, server_transform)

  train_time = 0.0
  eval_every = config.eval.get("every", 0)
  bar = tqdm.trange(start_round, num_rounds, desc=desc, disable=not progress,
                    initial=start_round, total=num_rounds)
  for r in bar:
    t0 = time.perf_counter()
    rng_round = r + round_offset
    sampled = active_clients[federated.sample_clients(len(active_clients), per_round,
                                                      config.seeds.sampling, rng_round)]
    sched = federated.build_client_schedules([client_texts[c] for c in sampled], fed.batch_size,
                                             fed.local_epochs, num_steps, config.seeds.data,
                                             rng_round, sampled)
    deltas, client_metrics = round_fn(state.trainable, setup.backbone, setup.data,
                                      jnp.asarray(sched.text_indices), jnp.asarray(sched.mask))
    state, _ = server_step(state, deltas, jnp.asarray(sched.num_examples))
    if history.size:
      history.record(sampled, np.asarray(federated.flatten_deltas(deltas)), rng_round)
    jax.block_until_ready(state.trainable)
    train_time += time.perf_counter() - t0
    row = dict(round=r + 1, train_loss=float(np.mean(client_metrics["loss"])),
               clients=[int(c) for c in sampled], round_time_s=time.perf_counter() - t0)
    if callback is not None:
      row.update(callback(r + 1, state.trainable))
    if eval_subsets and eval_every and ((r + 1) % eval_every == 0 or r + 1 == num_rounds):
      row.update(evaluate_splits(setup, state.trainable, eval_subsets,
                                 config.eval.get("batch_size", 256)))
    metrics_rows.append(row)
    bar.set_postfix({k: round(v, 3) for k, v in row.items()
                     if k == "train_loss" or k.endswith("mean_r1")})
    if workdir is not None:
      writer.write(row)
      every = config.get("checkpoint_every", 1)
      if (r + 1) % every == 0 or r + 1 == num_rounds:
        ckpt.save(r + 1, dict(state=state, history_updates=history.updates,
                              history_rounds=history.rounds))
  if ckpt is not None:
    ckpt.close()
  final_eval = evaluate_splits(setup, state.trainable, eval_subsets,
                               config.eval.get("batch_size", 256)) if eval_subsets else {}
  return RunResult(state.trainable, history, metrics_rows, train_time, final_eval)


def arch_from_config(arch: ml_collections.ConfigDict, vocab_size: int, eos_token_id: int,
                     context_length: int) -> "model_lib.CLIPConfig":
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


def pretrain_backbone(config: ml_collections.ConfigDict, out_dir: str | pathlib.Path,
                      overwrite: bool = False) -> dict[str, Any]:
  """Trains the embedded-default backbone on the public split and saves it as an HF CLIP folder.

  Returns the summary (also written to `out_dir/pretraining.json`).
  """
  from ease_jax import centralized  # pylint: disable=g-import-not-at-top
  from ease_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  tokenizer = tok_lib.load_tokenizer(dataset_lib.embedded_tokenizer_dir())
  context = config.arch.context_length
  ds = dataset_lib.load_emoji(tokenizer=tokenizer, max_length=context,
                              skin_tone_variants=config.data.skin_tone_variants)
  splits = split_dataset(ds, config.data, config.seeds.split)
  clip_config = arch_from_config(config.arch, len(tokenizer), tok_lib.eos_token_id(tokenizer),
                                 context)
  model = CLIP(clip_config)
  params = model.init(jax.random.key(config.seeds.init))
  data = federated.DeviceData.from_dataset(ds)
  public_texts = np.flatnonzero(np.isin(ds.text_image, splits.public))
  t0 = time.perf_counter()
  params, loss_curve = centralized.pretrain(
      model, params, data, public_texts, steps=config.pretrain.steps,
      batch_size=config.pretrain.batch_size, learning_rate=config.pretrain.learning_rate,
      weight_decay=config.pretrain.weight_decay, warmup=config.pretrain.warmup,
      seed=config.seeds.data, learn_logit_scale=config.pretrain.learn_logit_scale)
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
  hf.save_clip(out_dir, clip_config, jax.tree.map(np.asarray, params), tokenizer=tokenizer,
               overwrite=overwrite)
  (pathlib.Path(out_dir) / "pretraining.json").write_text(json.dumps(summary, indent=1))
  return summary


def to_jsonable(x: Any) -> Any:
  """Nested containers of numpy scalars/arrays -> plain JSON values (NaN/inf -> None)."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return to_jsonable(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return float(x) if np.isfinite(x) else None
  return x


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


def train_and_summarize(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                        ) -> dict[str, Any]:
  """The `train` binary: pretrained-backbone baseline, federated training, summary and plot."""
  from ease_jax import plotting  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  if (workdir / "summary.json").exists() and not (workdir / "checkpoints").exists():
    raise FileExistsError(f"{workdir} holds a summary.json but no checkpoints; refusing to "
                          "overwrite it. Use a new --workdir.")
  setup = build_setup(config)
  subsets = {"clients": setup.all_client_images, "test": setup.test_images}
  batch = config.eval.get("batch_size", 256)
  pretrained = evaluate_splits(setup, None, subsets, batch)
  result = run_federated(setup, config, workdir, eval_subsets=subsets, desc="FedAvg")
  keys = ("i2t_r1", "t2i_r1", "mean_r1", "i2t_r5", "t2i_r5", "i2t_r10", "t2i_r10",
          "i2t_rprec", "t2i_rprec")
  table = {f"{split}/{k}": dict(pretrained=round(pretrained[f"{split}/{k}"], 2),
                                federated=round(result.final_eval[f"{split}/{k}"], 2))
           for split in subsets for k in keys}
  summary = dict(
      config=checkpointing.fingerprint(config.to_dict()), pretrained=pretrained,
      federated=result.final_eval, table=table, rounds=config.fed.rounds,
      num_clients=setup.num_clients, client_sizes=[int(len(c)) for c in setup.client_images],
      train_time_s_this_process=result.wall_time_s,
      lora_params=lora_lib.num_params(result.trainable))
  write_json_atomic(workdir / "summary.json", summary)
  plotting.plot_curves(result.metrics, ["clients/mean_r1", "test/mean_r1"],
                       workdir / "r1_per_round.png", title="FedAvg LoRA: mean R@1 per round",
                       reference={"clients, pretrained": pretrained["clients/mean_r1"],
                                  "test, pretrained": pretrained["test/mean_r1"]})
  return summary


def quiet_library_logs() -> None:
  """Binaries: hide orbax/jax INFO chatter unless `--verbosity` was given on the command line."""
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  if not absl_flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
