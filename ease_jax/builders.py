"""Config → objects: the federated setup (backbone, data, splits, clients), optimizers, and the
FedAvg algorithm with its round plan.

`build_setup(config)` loads the backbone and the dataset, splits and partitions it, and returns a
`FederatedSetup`; `fedavg_algorithm(setup, config, ...)` and `round_plan(setup, config, ...)` turn
the `fed` block into a `federated.FederatedAlgorithm` and the host-side `federated.RoundPlan`
that `federated.driver.run` executes (`training.run_fedavg` does all three).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ease_jax import checkpointing
from ease_jax import federated
from ease_jax import hf
from ease_jax import lora as lora_lib
from ease_jax.data import dataset as dataset_lib
from ease_jax.data import partition as partition_lib
from ease_jax.data import plants as plants_lib
from ease_jax.data.device import DeviceData
from ease_jax.model import CLIP

PyTree = Any
EMBEDDED_BACKBONE = "embedded"
_ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
# Bumped when the layout of a checkpointed training state changes: a workdir written by another
# layout is refused by the fingerprint guard instead of failing inside orbax.
STATE_FORMAT = "fedavg-state/2"


def embedded_backbone_dir() -> pathlib.Path:
  return _ASSETS / "emoji_clip"


@dataclasses.dataclass
class FederatedSetup:
  """Everything a federated run needs, built once from a config."""
  model: CLIP
  backbone: PyTree                 # frozen params (HF Flax layout)
  dataset: dataset_lib.CaptionDataset
  data: DeviceData
  public_images: np.ndarray        # [n] image indices for central pretraining
  test_images: np.ndarray          # held-out image indices
  client_images: list[np.ndarray]  # per client, image indices
  lora_config: lora_lib.LoRAConfig
  tokenizer: Any = None
  # Planted knowledge (`config.plants`, `data.plants`): name -> where its copies live.
  plants: Mapping[str, plants_lib.PlantedData] = dataclasses.field(default_factory=dict)

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
                   freeze_lora_a: bool = False, clip_norm: float = 0.0
                   ) -> optax.GradientTransformation:
  """Optimizer over the trainable tree by name ('adam', 'adamw', 'sgd').

  weight_decay: decoupled decay of 'adamw' (optax's: each step subtracts learning_rate *
  weight_decay * the parameter); a positive one with another optimizer is an error, not ignored.
  freeze_lora_a: keep every LoRA A factor fixed (FFA-LoRA). clip_norm > 0: clip the gradient's
  global norm first.
  """
  if weight_decay and name != "adamw":
    raise ValueError(f"weight_decay={weight_decay} needs the 'adamw' optimizer, got {name!r}.")
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
  if clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
  return opt


def client_optimizer(setup: "FederatedSetup", config: ml_collections.ConfigDict
                     ) -> optax.GradientTransformation:
  """The clients' local optimizer of `config.fed` (FedAvg's, and FedEraser's calibration)."""
  fed = config.fed
  return make_optimizer(fed.client_optimizer, fed.client_lr,
                        weight_decay=fed.get("client_weight_decay", 0.0),
                        freeze_lora_a=setup.lora_config.freeze_a)


def load_backbone(model_config: ml_collections.ConfigDict) -> tuple[Any, PyTree, Any, Any]:
  """(CLIPConfig, params, tokenizer, image processor or None) from `model.checkpoint`
  ('embedded', a folder or a repo id)."""
  checkpoint = model_config.checkpoint
  path = embedded_backbone_dir() if checkpoint == EMBEDDED_BACKBONE else checkpoint
  if checkpoint == EMBEDDED_BACKBONE and not (embedded_backbone_dir() / "config.json").exists():
    raise FileNotFoundError(
        f"The embedded backbone is missing from {embedded_backbone_dir()}; build it with "
        "`python experiments/pretrain.py --config=experiments/configs/pretrain_emoji.py "
        f"--workdir=workdirs/pretrain_emoji --export_to={embedded_backbone_dir()}`.")
  clip_config, params = hf.load_clip(path)
  tokenizer, processor = hf.load_tokenizer_and_processor(hf.resolve_checkpoint(str(path)))
  problems = tokenizer_problems(tokenizer, clip_config) + pixel_scaling_problems(processor)
  if problems:
    raise ValueError(f"{checkpoint!r}: its files disagree with what the model was trained on: "
                     f"{'; '.join(problems)}.")
  return clip_config, params, tokenizer, processor


def tokenizer_problems(tokenizer: Any, clip_config: Any) -> list[str]:
  """How a checkpoint's tokenizer disagrees with its text config; [] when it agrees. Ids past
  the embedding table embed as NaN, and another EOS id makes the text pooling read position 0
  (the start token) of every caption, so every caption would embed alike."""
  from ease_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  text = clip_config.text
  problems = []
  if len(tokenizer) > text.vocab_size:
    problems.append(f"the tokenizer has {len(tokenizer)} tokens but config.json's text "
                    f"vocab_size is {text.vocab_size}")
  eos = tok_lib.eos_token_id(tokenizer)
  if text.eos_token_id != 2 and eos != text.eos_token_id:  # 2: legacy configs (largest id)
    problems.append(f"the tokenizer's end-of-text id is {eos} but config.json's text "
                    f"eos_token_id is {text.eos_token_id}")
  return problems


def pixel_scaling_problems(processor: Any) -> list[str]:
  """How a checkpoint's image processor (None: none shipped) would scale pixels differently from
  `dataset.normalize_images`, which every ease-jax pipeline uses; [] when it agrees."""
  if processor is None:
    return []
  problems = []
  for flag in ("do_rescale", "do_normalize"):
    if getattr(processor, flag, True) is False:
      problems.append(f"{flag}=False")
  factor = getattr(processor, "rescale_factor", 1 / 255)
  if getattr(processor, "do_rescale", True) and not np.isclose(factor, 1 / 255):
    problems.append(f"rescale_factor={factor} (ease-jax: 1/255)")
  if getattr(processor, "do_normalize", True):
    for name, ours in (("image_mean", dataset_lib.CLIP_MEAN), ("image_std", dataset_lib.CLIP_STD)):
      theirs = getattr(processor, name, None)
      if theirs is not None and not np.allclose(np.broadcast_to(theirs, 3), ours, atol=1e-4):
        problems.append(f"{name}={list(np.broadcast_to(theirs, 3))} (ease-jax: {list(ours)})")
  if problems:
    problems = [f"its {hf.PREPROCESSOR_NAME} scales pixels otherwise than ease-jax does "
                f"((x / 255 - CLIP_MEAN) / CLIP_STD, dataset.normalize_images): "
                f"{', '.join(problems)}"]
  return problems


def load_dataset(data_config: ml_collections.ConfigDict, tokenizer: Any,
                 context_length: int, image_size: int,
                 image_processor: Any = None) -> dataset_lib.CaptionDataset:
  """The config's dataset. `image_processor` (the checkpoint's, or None) sets how photos are
  resized and cropped (Karpathy data; the embedded emoji are stored at the model's size)."""
  max_length = min(data_config.get("max_length", context_length) or context_length,
                   context_length)
  if data_config.name == "emoji":
    ds = dataset_lib.load_emoji(tokenizer=tokenizer, max_length=max_length,
                                skin_tone_variants=data_config.get("skin_tone_variants", True),
                                image_size=image_size)
    if ds.images.shape[1:3] != (image_size, image_size):
      raise ValueError(f"The embedded emoji file {dataset_lib.emoji_npz_name(image_size)} holds "
                       f"{ds.images.shape[1]}x{ds.images.shape[2]} px images but the model "
                       f"expects {image_size} px; rebuild it with `python -m "
                       f"ease_jax.data.build_emoji --size={image_size}`.")
    return ds
  if data_config.name == "karpathy":
    from ease_jax.data import karpathy  # pylint: disable=g-import-not-at-top
    ds = karpathy.load_karpathy(
        data_config.json_path, data_config.image_root, split=tuple(data_config.splits),
        tokenizer=tokenizer, max_length=max_length, image_size=image_size,
        image_processor=image_processor, max_images=data_config.get("max_images") or None)
    if ds.images.shape[1:3] != (image_size, image_size):
      raise ValueError(f"The checkpoint's {hf.PREPROCESSOR_NAME} crops images to "
                       f"{ds.images.shape[1]}x{ds.images.shape[2]} px but its model takes "
                       f"{image_size}x{image_size} px.")
    return ds
  raise ValueError(f"Unknown dataset {data_config.name!r}; expected 'emoji' or 'karpathy'.")


def lora_config_from(lora: ml_collections.ConfigDict) -> lora_lib.LoRAConfig:
  """The `LoRAConfig` of a config's `lora` block."""
  return lora_lib.LoRAConfig(rank=lora.rank, alpha=lora.alpha,
                             targets=lora_lib.resolve_targets(lora.targets),
                             init_std=lora.get("init_std", 0.02),
                             freeze_a=lora.get("freeze_a", False))


DATA_SPLITS = partition_lib.SPLIT_KINDS


def image_labels(ds: dataset_lib.CaptionDataset, data_config: ml_collections.ConfigDict,
                 key: str = "label") -> np.ndarray | None:
  """`[num_images]` values of the field named by `data.<key>` (`label`: stratification and the
  non-IID partition; `partition_label`: the partition's own), or None."""
  label = data_config.get(key)
  if not label:
    return None
  if label not in ds.image_meta:
    raise ValueError(f"data.{key}={label!r} is not a field of {ds.name}; "
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
  'karpathy' (Karpathy caption files): test = the file's own 'test' images, as published
  retrieval results use them; public = a stratified random `public_fraction` of the other loaded
  images (train, restval, val), clients = the rest. `test_fraction` is not used.
  """
  kind = data_config.get("split", "random")
  labels = image_labels(ds, data_config)
  if kind == "random":
    return partition_lib.split_public_test_clients(
        ds.num_images, data_config.public_fraction, data_config.test_fraction, seed=seed,
        labels=labels)
  if kind not in DATA_SPLITS[1:]:
    raise ValueError(f"Unknown data.split={kind!r}; expected one of {DATA_SPLITS}.")
  field = {"skin_tone": "skin_tone", "karpathy": "split"}[kind]
  if field not in ds.image_meta:
    raise ValueError(f"data.split={kind!r} needs a {field!r} image field; {ds.name} has "
                     f"{sorted(ds.image_meta)}.")
  values = np.asarray(ds.image_meta[field])
  if kind == "skin_tone":  # the embedded emoji data
    public = values == "none"
    if public.all():
      raise ValueError("data.split='skin_tone' found no skin-tone variants; set "
                       "data.skin_tone_variants=True.")
    return partition_lib.split_fixed_public(public, data_config.test_fraction, seed, labels)
  is_test = values == "test"  # a Karpathy file's own test split
  if not is_test.any() or is_test.all():
    raise ValueError(f"data.split='karpathy' needs 'test' images and others among the loaded "
                     f"ones, got {int(is_test.sum())} test of {is_test.size} (data.splits="
                     f"{tuple(data_config.splits)}, data.max_images="
                     f"{data_config.get('max_images', 0)}).")
  rest = np.flatnonzero(~is_test)
  inner = partition_lib.split_public_test_clients(
      rest.size, data_config.public_fraction, 0.0, seed, None if labels is None else labels[rest])
  return partition_lib.Splits(rest[inner.public], np.flatnonzero(is_test), rest[inner.clients])


def build_setup(config: ml_collections.ConfigDict) -> FederatedSetup:
  """Backbone + dataset + splits + client partition, from the config and its seeds."""
  clip_config, backbone, tokenizer, processor = load_backbone(config.model)
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
                    clip_config.vision.image_size, processor)
  labels = image_labels(ds, config.data)
  splits = split_dataset(ds, config.data, config.seeds.split)
  partition_labels = (image_labels(ds, config.data, key="partition_label")
                      if config.data.get("partition_label") else labels)
  clients = partition_lib.partition(
      splits.clients, config.data.partition, config.fed.num_clients, seed=config.seeds.partition,
      labels=partition_labels,
      alpha=config.data.get("dirichlet_alpha"), min_size=config.data.get("min_client_size", 1))
  clients, planted = list(clients), {}
  plant_specs = [plants_lib.plant_from_config(name, spec)
                 for name, spec in (config.get("plants") or {}).items()]
  if plant_specs:
    ds, clients, planted = plants_lib.plant_knowledge(
        ds, clients, splits.test, plant_specs, tokenizer, ds.context_length,
        seed=config.seeds.partition)
  lora_config = lora_config_from(config.lora)
  model = CLIP(clip_config, lora_scale=lora_config.scale, lora_mode=config.lora.mode)
  return FederatedSetup(model=model, backbone=jax.tree.map(jnp.asarray, backbone), dataset=ds,
                        data=DeviceData.from_dataset(ds),
                        public_images=splits.public, test_images=splits.test,
                        client_images=clients, lora_config=lora_config,
                        tokenizer=tokenizer, plants=planted)


def init_trainable(setup: FederatedSetup, config: ml_collections.ConfigDict) -> PyTree:
  """The LoRA tree (plus a trainable `logit_scale` when `lora.learn_logit_scale`)."""
  trainable = lora_lib.init_lora(jax.random.key(config.seeds.init), setup.backbone,
                                 setup.lora_config)
  if config.lora.get("learn_logit_scale", False):
    trainable["logit_scale"] = jnp.asarray(setup.backbone["logit_scale"], jnp.float32)
  return trainable


def checkpoint_dir(checkpoint: str) -> pathlib.Path:
  """The folder of `model.checkpoint`: 'embedded', a folder, or a repo id in the HF cache."""
  return (embedded_backbone_dir() if checkpoint == EMBEDDED_BACKBONE
          else hf.resolve_checkpoint(checkpoint))


def checkpoint_digest(checkpoint: str) -> str:
  """sha256 over the files of a backbone checkpoint folder (`model.checkpoint`: 'embedded', a
  folder or a cached repo id), names and bytes in name order: weights and tokenizer. Computed
  once per process for a folder whose files keep their sizes and modification times."""
  path = checkpoint_dir(checkpoint)
  files = sorted((p for p in path.iterdir() if p.is_file()), key=lambda p: p.name)
  stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
  return _files_digest(tuple(str(p) for p in files), stamp)


@functools.lru_cache(maxsize=16)
def _files_digest(paths: tuple[str, ...], stamp: tuple[Any, ...]) -> str:
  del stamp  # Part of the cache key only: a rewritten file has a new size or time.
  digest = hashlib.sha256()
  for path in paths:
    digest.update(pathlib.Path(path).name.encode() + b"\0")
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()


def data_digest(data_config: ml_collections.ConfigDict, image_size: int | None = None) -> str:
  """sha256 over the data files a run reads, so that a workdir does not resume (nor a cache
  serve) on data rewritten under the same config strings: the embedded emoji npz of
  `image_size` px (None: every emoji npz), or a Karpathy caption file's bytes with the size of
  every image it names (a path relative to another working directory names other files, too).
  Image bytes are not read: sizes catch a rebuilt or replaced set at the cost of a `stat` each."""
  if data_config.name == "emoji":
    files = ([dataset_lib.ASSETS_DIR / dataset_lib.emoji_npz_name(image_size)]
             if image_size else sorted(dataset_lib.ASSETS_DIR.glob("emoji*.npz")))
  elif data_config.name == "karpathy":
    files = [pathlib.Path(data_config.json_path)]
  else:
    return ""  # load_dataset names the unknown dataset.
  files = [f for f in files if f.is_file()]  # A missing one is named by load_dataset.
  stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
  digest = _files_digest(tuple(str(p) for p in files), stamp)
  if data_config.name == "karpathy" and files:
    listing = _karpathy_image_sizes(str(files[0].resolve()), stamp[0],
                                    str(pathlib.Path(data_config.image_root).resolve()))
    digest = hashlib.sha256((digest + listing).encode()).hexdigest()
  return digest


@functools.lru_cache(maxsize=4)
def _karpathy_image_sizes(json_path: str, stamp: tuple[Any, ...], root: str) -> str:
  """The size of every image a Karpathy file names under `root` (-1: missing), once per
  process and caption file (a `stat` per image: COCO's 123k take a second or two)."""
  del stamp  # Part of the cache key only.
  from ease_jax.data import karpathy  # pylint: disable=g-import-not-at-top
  try:
    entries = json.loads(pathlib.Path(json_path).read_text()).get("images", [])
  except (ValueError, AttributeError, UnicodeDecodeError):
    return ""  # load_dataset names what is wrong with the file.
  sizes = []
  for entry in entries if isinstance(entries, list) else []:
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
      continue
    path = karpathy.image_path(root, entry)
    sizes.append(path.stat().st_size if path.is_file() else -1)
  return repr(sizes)


def _checkpoint_image_size(checkpoint: str) -> int | None:
  """The image size in a backbone's config.json (None where it cannot be read: load_backbone
  names that)."""
  try:
    config = json.loads((checkpoint_dir(checkpoint) / "config.json").read_text())
    vision = config.get("vision_config") or {}
    return int(vision.get("image_size", 224))
  except (OSError, ValueError, AttributeError, TypeError):
    return None


def run_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Config entries that determine a federated run's trajectory (not eval/logging knobs), and
  the bytes of the backbone and the data: a path names a folder, whose files can be rewritten
  in place (e.g. `experiments/pretrain.py --export_to`, `build_emoji`), and a run on other
  weights or data must not resume."""
  keep = {k: config[k] for k in ("seeds", "data", "model", "lora", "fed", "plants")
          if k in config}
  fp = checkpointing.fingerprint(keep)
  if "model" in config:
    fp["model.checkpoint_sha256"] = checkpoint_digest(config.model.checkpoint)
  if "data" in config and config.data.get("name"):
    image_size = _checkpoint_image_size(config.model.checkpoint) if "model" in config else None
    fp["data.files_sha256"] = data_digest(config.data, image_size)
  for k in ("fed.backend", "fed.chunk_size"):  # Execution strategy, not the maths.
    fp.pop(k, None)
  # Requests' and methods' randomness: no federated run reads it (a request's effect on a run,
  # its forget set, is in the request's own fingerprint). Without it, the benchmark's seeds
  # share one population per request.
  fp.pop("seeds.unlearning", None)
  # Left out at zero: checkpoints written before the key existed describe exactly that run.
  # (Here, not in `checkpointing.LEFT_OUT_AT`: the benchmark's row keys have held it since it was
  # added, and leaving it out there would re-key those rows.)
  if not fp.get("fed.client_weight_decay"):
    fp.pop("fed.client_weight_decay", None)
  # Which clients a round samples changed stream (rng.Domain.CLIENT_SAMPLING): a run with
  # partial participation written before that must not resume on the new sampling.
  fed = config.get("fed") or {}
  if 0 < fed.get("clients_per_round", 0) < fed.get("num_clients", 0):
    fp["client_sampling_stream"] = 2
  fp["state_format"] = STATE_FORMAT
  return fp


def fedavg_options(setup: "FederatedSetup", config: ml_collections.ConfigDict,
                   plan: federated.RoundPlan) -> federated.FedAvgOptions:
  """The `fed` block's execution options (`fed.backend='auto'` resolved for the plan's round
  size and padding)."""
  fed = config.fed
  per_round = min(fed.clients_per_round or len(plan.active_clients), len(plan.active_clients))
  backend, chunk = federated.resolve_backend(fed.backend, fed.get("chunk_size", 0), per_round,
                                             utilization=plan.step_utilization)
  return federated.FedAvgOptions(backend=backend, chunk_size=chunk,
                                 num_clients=setup.num_clients, history_size=fed.history_size,
                                 nonfinite=fed.get("nonfinite", "drop"))


def round_plan(setup: "FederatedSetup", config: ml_collections.ConfigDict,
               client_texts: Sequence[np.ndarray] | None = None,
               active_clients: Sequence[int] | None = None,
               round_offset: int = 0) -> federated.RoundPlan:
  """Round inputs of a FedAvg run from `fed` and the seeds.

  client_texts: per-client training texts (default: all of each client's captions; unlearning
    passes the retain-only version). active_clients: the clients that may be sampled (default:
    all with data). round_offset: see `federated.RoundPlan`.
  """
  fed = config.fed
  texts = setup.client_texts() if client_texts is None else client_texts
  texts = tuple(np.asarray(t, np.int32) for t in texts)
  if active_clients is None:
    active_clients = [c for c, t in enumerate(texts) if len(t)]
  plan = federated.RoundPlan(
      client_texts=texts, active_clients=np.asarray(sorted(active_clients), np.int64),
      clients_per_round=fed.clients_per_round, batch_size=fed.batch_size,
      local_epochs=fed.local_epochs, sampling_seed=config.seeds.sampling,
      data_seed=config.seeds.data, round_offset=round_offset)
  # Where padded steps cost nothing (skipped), pad to the whole federation's largest client, so
  # that a subset of it reuses the whole federation's compiled client update instead of
  # compiling its own (a retrain, the retrain population, FedAvg continued after unlearning).
  if fedavg_options(setup, config, plan).backend == "sequential":
    whole = max(federated.num_local_steps(len(t), fed.batch_size, fed.local_epochs)
                for t in setup.client_texts())
    plan = dataclasses.replace(plan, min_steps=whole)
  return plan


def fedavg_algorithm(setup: "FederatedSetup", config: ml_collections.ConfigDict,
                     plan: federated.RoundPlan, loss_fn: federated.LossFn | None = None,
                     server_transform: Callable[[PyTree], PyTree] | None = None,
                     round_metrics: Callable[[PyTree], dict] | None = None,
                     compiler_options: tuple[tuple[str, Any], ...] = ()
                     ) -> federated.FederatedAlgorithm:
  """FedAvg of the config's client and server optimizers over the setup's clients.

  loss_fn: the client objective (default: the CLIP loss); server_transform / round_metrics: see
  `federated.fedavg_algorithm` (EASE's PFL uses all three); compiler_options: see
  `federated.FedAvgOptions`.
  """
  fed = config.fed
  steps = federated.local_steps(loss_fn or federated.clip_objective(setup.model),
                                client_optimizer(setup, config))
  return federated.fedavg_algorithm(
      steps, federated.server_optimizer(fed.server_lr, fed.get("server_momentum", 0.0)),
      setup.backbone, setup.data,
      dataclasses.replace(fedavg_options(setup, config, plan), compiler_options=compiler_options),
      server_transform=server_transform, round_metrics=round_metrics)
