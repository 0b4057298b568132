"""Checks a whole experiment config before any stage starts.

Every problem found is listed in one `ConfigError` that names the field, the
value it has and the values it may take.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from configs import base
from mcjax import analysis
from mcjax.models import vgg

DATASETS = ("cifar10", "fashion_mnist")
DATA_SOURCES = ("auto", "tfds", "python", "idx")
MODELS = {"vgg16": vgg.VGG16_BLOCKS, "vgg19": vgg.VGG19_BLOCKS}
PERMUTE_MODES = ("swap", "mirror", "weight_matching", "none")
# The depth presets of the permutation library, by name.
DEPTHS = {"early": "block0_conv0", "mid": "block2_conv1", "late": "block4_conv1"}
CURVE_KINDS = ("bezier", "polychain")
REGULARIZATIONS = ("reg", "noreg")
WANDB_MODES = ("offline", "online", "disabled")
# Distance metrics that exist only when the end of the curve is P theta_0.
PERMUTATION_METRICS = ("to_permuted_start", "reordered",
                       "reordered_normalized", "reordered_relative")
TRAINING_SECTIONS = ("endpoint", "curve")


class ConfigError(ValueError):
  """The config has invalid fields; the message lists each of them."""


def hidden_layer_units(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Returns {layer name: output units} for the permutable layers.

  These are every convolution and the hidden dense layers fc1 and fc2; the
  output layer fc3 is never permuted.
  """
  blocks = MODELS[config.model.name]
  units = {}
  for b, block in enumerate(blocks):
    for l, channels in enumerate(block):
      units[vgg.conv_name(b, l)] = vgg.scaled(channels, config.model.width)
  hidden = vgg.scaled(vgg.CLASSIFIER_UNITS, config.model.width)
  units["fc1"] = hidden
  units["fc2"] = hidden
  return units


def parse_pairs(text: str) -> list[tuple[int, int]]:
  """Parses "3:17,5:9" into [(3, 17), (5, 9)].

  Raises:
    ValueError: for text that is not comma-separated `a:b` integer pairs.
  """
  pairs = []
  for item in text.split(","):
    parts = item.strip().split(":")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit()
                                  for p in parts):
      raise ValueError(
          f"pair {item.strip()!r} is not of the form a:b with integers a, b")
    pairs.append((int(parts[0]), int(parts[1])))
  return pairs


def resolve_layer(config: ml_collections.ConfigDict) -> str:
  """Returns the layer name that `permute.layer` names (presets resolved)."""
  return DEPTHS.get(config.permute.layer, config.permute.layer)


def check_override_names(config: ml_collections.ConfigDict,
                         names: list[str]) -> None:
  """Checks dotted override names such as "curve.epochs" against `config`.

  Raises:
    ConfigError: naming the first unknown field of each bad name and the
      fields its section has.
  """
  errors = []
  for name in names:
    node, path = config, []
    for part in name.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        section = ".".join(path) or "the config"
        fields = (sorted(node.keys())
                  if isinstance(node, ml_collections.ConfigDict) else [])
        errors.append(f"--config.{name}: {section} has no field {part!r}; "
                      f"its fields are {fields}")
        break
      node = node[part]
      path.append(part)
  if errors:
    raise ConfigError("Unknown config fields:\n  " + "\n  ".join(errors))


def _unknown_fields(config: Any, reference: Any, prefix: str,
                    errors: list[str]) -> None:
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in reference:
      errors.append(f"{name} is not a known field; the fields of "
                    f"{prefix.rstrip('.') or 'the config'} are "
                    f"{sorted(reference.keys())}")
    elif isinstance(reference[key], ml_collections.ConfigDict):
      if isinstance(config[key], ml_collections.ConfigDict):
        _unknown_fields(config[key], reference[key], f"{name}.", errors)
      else:
        errors.append(f"{name} must be a section with the fields "
                      f"{sorted(reference[key].keys())}")


class _Checker:
  """Collects messages about one config."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.errors: list[str] = []

  def value(self, field: str) -> Any:
    node = self.config
    for part in field.split("."):
      node = node[part]
    return node

  def one_of(self, field: str, allowed) -> bool:
    value = self.value(field)
    if value not in allowed:
      self.errors.append(
          f"{field}={value!r} is invalid; allowed values are {list(allowed)}")
      return False
    return True

  def integer(self, field: str, minimum: int, maximum: int | None = None,
              what: str = "") -> bool:
    value = self.value(field)
    bad_type = isinstance(value, bool) or not isinstance(value, int)
    if bad_type or value < minimum or (maximum is not None and value > maximum):
      limits = (f"an integer >= {minimum}" if maximum is None else
                f"an integer in [{minimum}, {maximum}]")
      self.errors.append(f"{field}={value!r} is invalid; expected {limits}"
                         f"{what}")
      return False
    return True

  def number(self, field: str, minimum: float, maximum: float | None = None,
             strict: bool = False) -> None:
    value = self.value(field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
      ok = value > minimum if strict else value >= minimum
      ok = ok and (maximum is None or value < maximum)
    if not ok:
      low = f"> {minimum}" if strict else f">= {minimum}"
      high = "" if maximum is None else f" and < {maximum}"
      self.errors.append(f"{field}={value!r} is invalid; expected a number "
                         f"{low}{high}")

  def checkpoint(self, field: str, suffix: str = ".pt") -> None:
    path = self.value(field)
    if not path:
      return
    if not path.endswith(suffix):
      self.errors.append(f"{field}={path!r} is invalid; expected a "
                         f"dnn-mode-connectivity {suffix} file or \"\"")
    elif not os.path.exists(path):
      self.errors.append(f"{field}={path!r} does not exist")


def _check_training(check: _Checker, section: str) -> None:
  if not check.value(f"{section}.checkpoint"):
    check.integer(f"{section}.epochs", 1)
  else:
    check.integer(f"{section}.epochs", 0)
  check.checkpoint(f"{section}.checkpoint")
  check.integer(f"{section}.seed", 0)
  check.integer(f"{section}.batch_size", 1)
  check.number(f"{section}.learning_rate", 0.0, strict=True)
  check.number(f"{section}.momentum", 0.0, 1.0)
  check.number(f"{section}.weight_decay", 0.0)
  check.one_of(f"{section}.augment", (True, False))
  check.integer(f"{section}.checkpoint_every", 1)
  check.integer(f"{section}.keep_checkpoints", 1)
  check.integer(f"{section}.eval_batch_size", 1)
  check.integer(f"{section}.log_every_steps", 1)


def _check_permute(check: _Checker, config: ml_collections.ConfigDict,
                   model_ok: bool) -> None:
  if not check.one_of("permute.mode", PERMUTE_MODES):
    return
  mode = config.permute.mode
  two_endpoints = config.endpoint_b.enabled
  if mode in ("swap", "mirror") and two_endpoints:
    check.errors.append(
        f"permute.mode={mode!r} permutes the start endpoint, so it needs "
        "endpoint_b.enabled=False; with two endpoints use 'none' or "
        "'weight_matching'")
  if mode in ("weight_matching", "none") and not two_endpoints:
    check.errors.append(
        f"permute.mode={mode!r} needs a second endpoint: set "
        "endpoint_b.enabled=True, or use 'swap' or 'mirror'")
  check.integer("permute.seed", 0)
  check.number("permute.tolerance", 0.0, strict=True)
  check.integer("permute.batch_size", 1)
  if mode != "swap" or not model_ok:
    return

  units = hidden_layer_units(config)
  layer = resolve_layer(config)
  if layer not in units:
    check.errors.append(
        f"permute.layer={config.permute.layer!r} is invalid; allowed values "
        f"are the depths {list(DEPTHS)} and the layers {list(units)}")
    return
  size = units[layer]
  if config.permute.pairs:
    try:
      pairs = parse_pairs(config.permute.pairs)
    except ValueError as error:
      check.errors.append(f"permute.pairs={config.permute.pairs!r} is "
                          f"invalid: {error}")
      return
    flat = [unit for pair in pairs for unit in pair]
    if any(unit < 0 or unit >= size for unit in flat):
      check.errors.append(
          f"permute.pairs={config.permute.pairs!r} is invalid; {layer} has "
          f"{size} units, so every unit must be in [0, {size - 1}]")
    elif len(set(flat)) != len(flat):
      check.errors.append(
          f"permute.pairs={config.permute.pairs!r} is invalid; each unit may "
          "appear in one pair only")
  else:
    check.integer("permute.num_pairs", 1, size // 2,
                  what=f" ({layer} has {size} units at width "
                  f"{config.model.width})")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field of an experiment config.

  Raises:
    ConfigError: listing each invalid field with its value and the allowed
      values, for example an unknown depth, a number of pairs larger than
      half the layer, negative epochs or an unknown dataset.
  """
  errors: list[str] = []
  _unknown_fields(config, base.get_config(), "", errors)
  if errors:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(errors))

  check = _Checker(config)
  if not isinstance(config.name, str) or not config.name:
    check.errors.append(f"name={config.name!r} is invalid; expected a "
                        "non-empty string")
  check.one_of("dataset.name", DATASETS)
  check.one_of("dataset.source", DATA_SOURCES)
  check.integer("dataset.train_size", 0)
  check.integer("dataset.test_size", 0)
  check.one_of("dataset.download", (True, False))
  model_ok = check.one_of("model.name", tuple(MODELS))
  check.number("model.width", 0.0, strict=True)
  model_ok = model_ok and not any("model.width" in e for e in check.errors)
  check.one_of("model.batch_norm", (True, False))
  check.number("model.dropout_rate", 0.0, 1.0)

  for section in TRAINING_SECTIONS:
    _check_training(check, section)
  check.checkpoint("endpoint_b.checkpoint")
  check.integer("endpoint_b.seed", 0)
  b = config.endpoint_b
  if (b.enabled and b.seed == config.endpoint.seed and not b.checkpoint
      and not config.endpoint.checkpoint):
    check.errors.append(
        f"endpoint_b.seed={b.seed} equals endpoint.seed, so both endpoints "
        "would be the same network; choose another seed")
  _check_permute(check, config, model_ok)

  check.one_of("curve.kind", CURVE_KINDS)
  check.integer("curve.num_bends", 3,
                what=" (the two endpoints and at least one trained bend)")
  check.one_of("curve.regularization", REGULARIZATIONS)
  check.integer("curve.t_per_batch", 1)
  check.integer("evaluate.num_points", 2)
  check.integer("evaluate.train_size", 0)
  check.integer("evaluate.test_size", 0)
  check.integer("evaluate.batch_size", 1)
  check.integer("analyse.num_points", 2)
  check.integer("analyse.top_layers", 1)
  for field in ("plots.gif_metric", "plots.heatmap_metric"):
    if (check.one_of(field, tuple(analysis.METRICS))
        and check.value(field) in PERMUTATION_METRICS
        and config.permute.mode not in ("swap", "mirror")):
      check.errors.append(
          f"{field}={check.value(field)!r} needs the end of the curve to be "
          f"a permutation of the start, so permute.mode 'swap' or 'mirror' "
          f"(it is {config.permute.mode!r})")
  check.integer("plots.fps", 1)
  check.one_of("wandb.mode", WANDB_MODES)
  if config.wandb.enabled:
    try:
      import wandb  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      check.errors.append(
          "wandb.enabled=True but the wandb package is not installed; "
          "install it with `pip install 'mcjax[wandb]'` or set "
          "wandb.enabled=False")

  if check.errors:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(check.errors))
