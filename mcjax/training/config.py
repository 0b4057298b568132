"""Validation of the training sections of an experiment config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcjax import curves

REGULARIZATIONS = ("reg", "noreg")

_MISSING = object()


def _get(config: Mapping[str, Any] | Any, name: str):
  try:
    return config[name]
  except (KeyError, AttributeError):
    return _MISSING


def _require(config, name: str, check, expected: str):
  value = _get(config, name)
  if value is _MISSING:
    raise ValueError(
        f"Training config field {name!r} is missing; expected {expected}.")
  if not check(value):
    raise ValueError(
        f"Training config field {name}={value!r} is invalid; expected "
        f"{expected}.")
  return value


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_endpoint_config(config) -> None:
  """Raises ValueError for a missing or invalid endpoint training field.

  Args:
    config: an `ml_collections.ConfigDict` (or a mapping) with the fields
      epochs, batch_size, learning_rate, momentum, weight_decay, augment,
      checkpoint_every, keep_checkpoints, eval_batch_size and
      log_every_steps.
  """
  _require(config, "epochs", lambda v: _is_int(v) and v >= 1,
           "an integer >= 1")
  _require(config, "batch_size", lambda v: _is_int(v) and v >= 1,
           "an integer >= 1")
  _require(config, "learning_rate", lambda v: _is_real(v) and v > 0,
           "a number > 0")
  _require(config, "momentum", lambda v: _is_real(v) and 0 <= v < 1,
           "a number in [0, 1)")
  _require(config, "weight_decay", lambda v: _is_real(v) and v >= 0,
           "a number >= 0")
  _require(config, "augment", lambda v: isinstance(v, bool),
           "True or False")
  _require(config, "checkpoint_every", lambda v: _is_int(v) and v >= 1,
           "an integer >= 1 (epochs between checkpoints)")
  _require(config, "keep_checkpoints", lambda v: _is_int(v) and v >= 1,
           "an integer >= 1 (checkpoints to keep)")
  _require(config, "eval_batch_size", lambda v: _is_int(v) and v >= 1,
           "an integer >= 1")
  _require(config, "log_every_steps", lambda v: _is_int(v) and v >= 1,
           "an integer >= 1")


def validate_curve_config(config) -> None:
  """Raises ValueError for a missing or invalid curve training field.

  A curve config has every endpoint field (see `validate_endpoint_config`)
  plus num_bends (an integer >= 3, so at least one bend is trained), kind
  ("bezier" or "polychain"), regularization ("reg" or "noreg") and
  t_per_batch (an integer >= 1).
  """
  validate_endpoint_config(config)
  _require(config, "num_bends", lambda v: _is_int(v) and v >= 3,
           "an integer >= 3 (two fixed endpoints and at least one trained "
           "bend)")
  _require(config, "kind", lambda v: v in curves.KINDS,
           f"one of {curves.KINDS}")
  _require(config, "regularization", lambda v: v in REGULARIZATIONS,
           f"one of {REGULARIZATIONS}")
  _require(config, "t_per_batch", lambda v: _is_int(v) and v >= 1,
           "an integer >= 1")
