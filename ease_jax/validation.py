"""One pass over a config before any work: every numeric knob in range, every name known, every
path there. All problems are reported together in one `ConfigError`, before the backbone
trains a single step (the binaries call `validate` first; so do the library entry points).

Rules are `dotted.key -> check`, a check returning a complaint or None. The base blocks' rules are
here; each unlearning method owns the rules of its config block next to its defaults (`RULES`
in `ease_jax/unlearning/methods/*.py`).
"""
from __future__ import annotations

import math
import pathlib
from typing import Any, Callable, Iterable, Mapping

from ease_jax.data import karpathy
from ease_jax.data import partition

Check = Callable[[Any], "str | None"]


class ConfigError(ValueError):
  """A config value that cannot be right (the message names the key and the fix)."""


def _number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
  """An int in [lo, hi]."""

  def check(v):
    if not isinstance(v, int) or isinstance(v, bool):
      return f"must be an integer, got {v!r}"
    if lo is not None and v < lo:
      return f"must be >= {lo}, got {v}"
    if hi is not None and v > hi:
      return f"must be <= {hi}, got {v}"
    return None

  return check


def real(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False) -> Check:
  """A finite number in [lo, hi] (open ends where asked)."""

  def check(v):
    if not _number(v):
      return f"must be a finite number, got {v!r}"
    if lo is not None and (v <= lo if lo_open else v < lo):
      return f"must be {'>' if lo_open else '>='} {lo:g}, got {v:g}"
    if hi is not None and (v >= hi if hi_open else v > hi):
      return f"must be {'<' if hi_open else '<='} {hi:g}, got {v:g}"
    return None

  return check


positive = real(0.0, lo_open=True)
non_negative = real(0.0)
fraction = real(0.0, 1.0, lo_open=True)          # (0, 1]
probability = real(0.0, 1.0)                     # [0, 1]
open_fraction = real(0.0, 1.0, hi_open=True)     # [0, 1)


def one_of(*values: Any) -> Check:
  def check(v):
    return None if v in values else (f"must be one of {', '.join(map(repr, values))}, "
                                     f"got {v!r}")
  return check


def boolean(v: Any) -> str | None:
  return None if isinstance(v, bool) else f"must be True or False, got {v!r}"


def int_tuple(lo: int = 0) -> Check:
  def check(v):
    if not isinstance(v, (tuple, list)) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v):
      return f"must be a tuple of integers >= {lo}, got {v!r}"
    return None
  return check


def str_tuple(nonempty: bool = True) -> Check:
  def check(v):
    if not isinstance(v, (tuple, list)) or not all(isinstance(x, str) and x for x in v):
      return f"must be a tuple of non-empty strings, got {v!r}"
    if nonempty and not v:
      return "must not be empty"
    return None
  return check


def subset_of(*values: str) -> Check:
  """A non-empty tuple of strings drawn from `values`."""
  def check(v):
    if not isinstance(v, (tuple, list)) or not v or not all(isinstance(x, str) for x in v):
      return f"must be a non-empty tuple of {', '.join(map(repr, values))}, got {v!r}"
    unknown = [x for x in v if x not in values]
    return (f"has unknown value(s) {unknown}; valid: {', '.join(map(repr, values))}"
            if unknown else None)
  return check


def _max_length(v: Any) -> str | None:
  """0 (the model's context length) or a length that holds BOS + EOS."""
  complaint = integer(0)(v)
  if complaint is None and v == 1:
    return "must be 0 (the model's context length) or >= 2 (BOS + EOS), got 1"
  return complaint


def _lookup(config: Any, key: str) -> tuple[bool, Any]:
  node = config
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False, None
    node = node[part]
  return True, node


def problems(config: Any, rules: Mapping[str, Check]) -> list[str]:
  """`config.<key> <complaint>` for each rule whose key is present and whose check fails."""
  out = []
  for key, check in rules.items():
    present, value = _lookup(config, key)
    if present:
      complaint = check(value)
      if complaint:
        out.append(f"config.{key} {complaint}")
  return out


BASE_RULES: dict[str, Check] = {
    **{f"seeds.{k}": integer(0) for k in ("split", "partition", "init", "sampling", "data",
                                          "unlearning")},
    "data.name": one_of("emoji", "karpathy"),
    "data.max_images": integer(0),
    "data.max_length": _max_length,
    "data.splits": subset_of(*karpathy.VALID_SPLITS),
    "data.skin_tone_variants": boolean,
    "data.split": one_of(*partition.SPLIT_KINDS),
    "data.public_fraction": open_fraction,
    # Not 0: the held-out test split evaluates every run and gives the MIA its non-members.
    "data.test_fraction": real(0.0, 1.0, lo_open=True, hi_open=True),
    "data.partition": one_of(*partition.SCHEMES),
    "data.dirichlet_alpha": positive,
    "data.min_client_size": integer(0),
    "model.logit_scale": non_negative,
    "lora.rank": integer(1),
    "lora.alpha": positive,
    "lora.mode": one_of("unmerged", "merged"),
    "lora.learn_logit_scale": boolean,
    "lora.init_std": non_negative,
    "lora.freeze_a": boolean,
    "fed.num_clients": integer(1),
    "fed.clients_per_round": integer(0),
    "fed.rounds": integer(1),
    "fed.local_epochs": integer(1),
    "fed.batch_size": integer(1),
    "fed.client_optimizer": one_of("adam", "adamw", "sgd"),
    "fed.client_lr": positive,
    "fed.client_weight_decay": non_negative,
    "fed.server_lr": positive,
    "fed.server_momentum": open_fraction,
    "fed.backend": one_of("auto", "vmap", "chunked", "sequential", "sharded"),
    "fed.chunk_size": integer(0),
    "fed.history_size": integer(0),
    "fed.nonfinite": one_of("drop", "fail"),
    "eval.every": integer(0),
    "eval.batch_size": integer(1),
    "checkpoint_every": integer(1),
    "unlearning.kind": one_of("client", "sample", "concept"),
    "unlearning.clients": int_tuple(0),
    "unlearning.sample_clients": int_tuple(0),
    "unlearning.fraction": fraction,
    "unlearning.concepts": str_tuple(),
}


def _cross_checks(config: Any) -> list[str]:
  out = []
  fed = config.get("fed")
  if fed is not None and fed.get("backend") == "chunked" and fed.get("chunk_size", 0) < 1:
    out.append("config.fed.chunk_size must be >= 1 with fed.backend='chunked'")
  if fed is not None and fed.get("clients_per_round", 0) > fed.get("num_clients", 1):
    out.append(f"config.fed.clients_per_round ({fed.clients_per_round}) must be <= "
               f"fed.num_clients ({fed.num_clients}) (0 = all clients every round)")
  if (fed is not None and fed.get("client_weight_decay", 0.0) > 0
      and fed.get("client_optimizer") != "adamw"):
    out.append(f"config.fed.client_weight_decay ({fed.client_weight_decay}) needs "
               f"fed.client_optimizer='adamw', got {fed.get('client_optimizer')!r}")
  audit, seeds = config.get("audit"), config.get("seeds")
  if audit is not None:
    # A block that leaves a key out runs with its default (`common.block`), so read it so here
    # too. Imported here: the population module imports this one.
    from ease_jax.unlearning import population  # pylint: disable=g-import-not-at-top
    audit = {**population.DEFAULTS, **audit}
  if audit is not None and seeds is not None and audit["population"] > 0:
    # A member runs with seeds.init = .sampling = .data = its seed: an audited run sharing one
    # of them would be judged by a population that (nearly) holds it.
    first, n = audit["first_seed"], audit["population"]
    shared = [f"seeds.{k}={seeds.get(k)}" for k in ("init", "sampling", "data")
              if first <= seeds.get(k, -1) < first + n]
    if shared:
      out.append(f"config.{', '.join(shared)} falls in the audit populations' seeds "
                 f"{first}..{first + n - 1} (audit.first_seed, audit.population); move "
                 f"audit.first_seed away from the run's seeds")
    if fed is not None and 0 < fed.get("clients_per_round", 0) < fed.get("num_clients", 0):
      # Members sample with their own seeds, so they take other clients each round, with other
      # local step counts; one batched run steps every member through the same steps.
      out.append(f"config.audit.population={n} needs fed.clients_per_round=0 (every client "
                 f"every round), got {fed.clients_per_round} of {fed.num_clients}: the "
                 f"population's members would sample different clients")
  return out


def _plant_checks(config: Any) -> list[str]:
  """Each `plants.<name>` block builds a plant on clients the federation has, and a request's
  `unlearning.plant` names one of the right kind (sample: a backdoor; concept: a concept)."""
  from ease_jax.data import plants  # pylint: disable=g-import-not-at-top
  out, built = [], {}
  num_clients = config.get("fed", {}).get("num_clients", 0)
  for name, spec in (config.get("plants") or {}).items():
    try:
      built[name] = plants.plant_from_config(name, spec)
    except (ValueError, KeyError, TypeError) as e:
      out.append(f"config.plants.{name}: {' '.join(str(e).split())}")
      continue
    out += [f"config.{p}" for p in built[name].problems(num_clients)]
  unlearning = config.get("unlearning") or {}
  name = unlearning.get("plant") or ""
  if name and name not in (config.get("plants") or {}):
    out.append(f"config.unlearning.plant={name!r} is not a plant of config.plants "
               f"{sorted(config.get('plants') or {})}")
  elif name and unlearning.get("kind") == "client":
    out.append(f"config.unlearning.plant={name!r} names a plant, but a client request forgets "
               "whole clients (config.unlearning.clients); a plant is forgotten by a sample "
               "(backdoor) or concept request")
  elif name in built:
    # The plant kind each plant request forgets (the inverse of `plants.REQUEST_KIND`).
    wanted = {r: k for k, r in plants.REQUEST_KIND.items()}.get(unlearning.get("kind"))
    if wanted and built[name].kind != wanted:
      out.append(f"config.unlearning.plant={name!r} is a {built[name].kind} plant; a "
                 f"{unlearning.get('kind')} request forgets a {wanted} plant")
  return out


def _path_checks(config: Any) -> list[str]:
  out = []
  data = config.get("data")
  if data is not None and data.get("name") == "karpathy":
    for key in ("json_path", "image_root"):
      value = data.get(key, "")
      if not value:
        out.append(f"config.data.{key} must be set for data.name='karpathy'")
      elif not pathlib.Path(value).exists():
        out.append(f"config.data.{key}={value} does not exist")
  model = config.get("model")
  if model is not None and model.get("checkpoint", "embedded") != "embedded":
    from ease_jax import hf  # pylint: disable=g-import-not-at-top
    try:
      hf.resolve_checkpoint(str(model.checkpoint))
    except (FileNotFoundError, OSError, ValueError) as e:
      out.append(f"config.model.checkpoint: {e}")
  return out


def require_blocks(config: Any, blocks: Iterable[str], binary: str, example: str) -> None:
  """A config meant for another binary (no `benchmark` block for the benchmark, ...) is bad
  input named by what it lacks, not an AttributeError at first use."""
  missing = [b for b in blocks if b not in config]
  if missing:
    raise ConfigError(f"{binary} needs a config with {', '.join(map(repr, missing))} "
                      f"(e.g. {example}); this one has {sorted(config.keys())}.")


def anything(v: Any) -> str | None:
  """A free-form entry (a dict of variants or scenarios): its keys are not checked here."""
  del v
  return None


# Top-level entries outside the base schema and every binary's rules: the one-knob seed of the
# planted configs, and the plants (each checked by `_plant_checks`).
FREE_TOP_LEVEL = ("seed", "plants")


def _known_rules() -> dict[str, Check]:
  """Every binary's rules: their keys are the known keys of the blocks outside the base schema
  (`benchmark.*`, `pretrain.*`, `arch.*`)."""
  # pylint: disable=g-import-not-at-top  (these modules import this one)
  from ease_jax import centralized
  from ease_jax.unlearning import benchmark
  from ease_jax.unlearning import methods
  from ease_jax.unlearning import population
  return {**BASE_RULES, **methods.RULES, **population.RULES, **benchmark.BENCHMARK_RULES,
          **centralized.PRETRAIN_RULES}


def unknown_keys(config: Any) -> list[str]:
  """`config.<key> is not a known key` for every entry no block defines: a typo inside a config
  file (`c.fed.rundos = 1`) would otherwise be carried along and silently ignored (command-line
  overrides of unknown keys are refused by ml_collections itself)."""
  import difflib  # pylint: disable=g-import-not-at-top
  from ease_jax import configs  # pylint: disable=g-import-not-at-top
  reference = configs.add_unlearning(configs.base_config())
  ruled: dict[str, set[str]] = {}
  for key in _known_rules():
    block, _, rest = key.partition(".")
    ruled.setdefault(block, set()).add(rest.split(".")[0])
  out = []

  def complain(path: str, name: str, known: Iterable[str]) -> None:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    out.append(f"config.{path} is not a known key" + (f" (did you mean {close[0]!r}?)" if close
                                                      else ""))

  def visit(node: Any, ref: Any, prefix: str) -> None:
    for k in node.keys():
      if k not in ref:
        complain(prefix + k, k, ref.keys())
      elif hasattr(node[k], "keys") and hasattr(ref[k], "keys"):
        visit(node[k], ref[k], f"{prefix}{k}.")

  for k in config.keys():
    if k in reference:
      if hasattr(config[k], "keys") and hasattr(reference[k], "keys"):
        visit(config[k], reference[k], f"{k}.")
    elif k in ruled:
      if hasattr(config[k], "keys"):
        for sub in config[k].keys():
          if sub not in ruled[k]:
            complain(f"{k}.{sub}", sub, ruled[k])
    elif k not in FREE_TOP_LEVEL:
      complain(k, k, [*reference.keys(), *ruled, *FREE_TOP_LEVEL])
  return out


def validate(config: Any, extra_rules: Iterable[Mapping[str, Check]] = ()) -> None:
  """Raises `ConfigError` listing every problem of `config` (base blocks, every unlearning
  method's block present in it, paths), or returns None."""
  from ease_jax.unlearning import methods  # pylint: disable=g-import-not-at-top
  from ease_jax.unlearning import population  # pylint: disable=g-import-not-at-top
  found = (problems(config, BASE_RULES) + problems(config, methods.RULES)
           + problems(config, population.RULES) + _plant_checks(config))
  for rules in extra_rules:
    found += problems(config, rules)
  if "methods" in config:
    unknown = [m for m in config.methods if m not in methods.METHODS]
    if unknown:
      found.append(f"config.methods has unknown method(s) {unknown}; registered: "
                   f"{sorted(methods.METHODS)}")
  found += _cross_checks(config) + _path_checks(config) + unknown_keys(config)
  if found:
    raise ConfigError("; ".join(f.rstrip(".") for f in found) + ".")
