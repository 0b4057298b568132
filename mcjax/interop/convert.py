"""Conversion between dnn-mode-connectivity state dicts and mcjax pytrees.

A state dict here is a mapping from PyTorch key to a numpy array (or
anything `np.asarray` accepts), so these functions need no torch. The
`files` module reads and writes the `.pt` files around them.

Import checks the state dict against the shapes of the configured model
before converting anything, and raises ValueError naming the first missing
keys, unexpected keys and shape mismatches.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
import re
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mcjax import curves
from mcjax import pytrees
from mcjax.interop import layout
from mcjax.models import vgg

PyTree = Any
StateDict = Mapping[str, Any]

# How many keys of each kind of mismatch an error message lists.
MAX_LISTED = 5


def expected_variables(model: vgg.VGG, example_input) -> dict[str, Any]:
  """Returns {'params/...' or 'batch_stats/...': ShapeDtypeStruct} of `model`.

  Args:
    model: an mcjax VGG.
    example_input: an array or ShapeDtypeStruct of shape (batch, height,
      width, channels), the input size the model will see; it fixes the
      size of `fc1`.
  """
  layout.check_model(model)
  spec = jax.ShapeDtypeStruct(np.shape(example_input), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), spec)
  return pytrees.flatten_with_names(variables)


def _last_conv_path(model: vgg.VGG) -> str:
  last_block = len(model.blocks) - 1
  last_conv = len(model.blocks[-1]) - 1
  return f"{vgg.conv_name(last_block, last_conv)}/kernel"


def _describe(model: vgg.VGG, example_input=None) -> str:
  sizes = tuple(len(block) for block in model.blocks)
  text = (f"VGG(convolutions per block {sizes}, "
          f"num_classes={model.num_classes}, "
          f"width={model.width}, batch_norm={model.batch_norm})")
  if example_input is not None:
    text += f" at input shape {tuple(np.shape(example_input))}"
  return text


def _listed(keys: list[str]) -> str:
  shown = ", ".join(repr(key) for key in keys[:MAX_LISTED])
  if len(keys) > MAX_LISTED:
    shown += f", ... ({len(keys) - MAX_LISTED} more)"
  return shown


def _hints(state_dict: StateDict, expected: Mapping[str, tuple[int, ...]],
           model: vgg.VGG, curve: bool) -> list[str]:
  """Returns sentences that name the likely cause of a mismatch."""
  hints = []
  keys = list(state_dict)
  is_curve = any(key.startswith(layout.CURVE_PREFIX) for key in keys)
  if is_curve and not curve:
    hints.append("The keys start with 'net.', as in a dnn-mode-connectivity "
                 "curve checkpoint; load it with load_curve.")
  if not is_curve and curve and keys:
    hints.append("The keys lack the 'net.' prefix of a curve checkpoint; load "
                 "an endpoint checkpoint with load_endpoint.")

  has_batch_norm = any(key.endswith(".running_mean") for key in keys)
  if has_batch_norm and not model.batch_norm:
    hints.append("The checkpoint has batch-norm layers; configure the model "
                 "with batch_norm=True.")
  if model.batch_norm and keys and not has_batch_norm:
    hints.append("The checkpoint has no batch-norm layers; configure the "
                 "model with batch_norm=False.")

  for key, shape in expected.items():
    if not re.fullmatch(r"(net\.fc3|classifier\.6)\.weight(_\d+)?", key):
      continue
    found = np.shape(state_dict[key]) if key in state_dict else None
    if found is not None and len(found) == 2 and found[0] != shape[0]:
      hints.append(f"The checkpoint has {found[0]} classes ({key} has shape "
                   f"{found}) but the model has num_classes={shape[0]}; set "
                   f"num_classes={found[0]}.")
    break
  return hints


def _check_state_dict(state_dict: StateDict,
                      expected: Mapping[str, tuple[int, ...]],
                      optional: set[str], model: vgg.VGG, example_input,
                      curve: bool) -> None:
  """Raises ValueError if the keys or shapes of `state_dict` differ.

  Args:
    state_dict: {key: array} read from a checkpoint.
    expected: {key: shape} for the configured model.
    optional: expected keys that may be missing (`num_batches_tracked`,
      absent from checkpoints written before PyTorch 0.4.1).
    model, example_input: the configured model, named in the message.
    curve: whether a curve checkpoint was expected, for the hints.
  """
  missing = [key for key in expected
             if key not in state_dict and key not in optional]
  unexpected = [key for key in state_dict if key not in expected]
  wrong_shape = [key for key in expected if key in state_dict
                 and tuple(np.shape(state_dict[key])) != tuple(expected[key])]
  if not (missing or unexpected or wrong_shape):
    return

  problems = []
  if missing:
    problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
  if wrong_shape:
    shapes = [f"{key!r} has shape {tuple(np.shape(state_dict[key]))} in the "
              f"checkpoint but {tuple(expected[key])} in the model"
              for key in wrong_shape[:MAX_LISTED]]
    more = (f", ... ({len(wrong_shape) - MAX_LISTED} more)"
            if len(wrong_shape) > MAX_LISTED else "")
    problems.append(f"{len(wrong_shape)} shape mismatches: "
                    + "; ".join(shapes) + more)
  message = (f"The PyTorch state dict does not fit "
             f"{_describe(model, example_input)}. "
             + ". ".join(problems) + ".")
  hints = _hints(state_dict, expected, model, curve)
  if hints:
    message += " " + " ".join(hints)
  raise ValueError(message)


def _untrained_batch_norm_layers(state_dict: StateDict,
                                 entries: list[layout.Entry]) -> list[str]:
  """Returns the batch-norm layers whose running statistics are initial."""
  untrained = []
  for entry in entries:
    if not entry.path.endswith("/mean"):
      continue
    mean = np.asarray(state_dict[entry.key])
    var = np.asarray(state_dict[entry.key.replace("running_mean",
                                                  "running_var")])
    if np.all(mean == 0) and np.all(var == 1):
      untrained.append(entry.path.split("/")[0])
  return untrained


def _warn_untrained_batch_norm(state_dict: StateDict,
                               entries: list[layout.Entry]) -> None:
  untrained = _untrained_batch_norm_layers(state_dict, entries)
  total = sum(entry.path.endswith("/mean") for entry in entries)
  # All layers initial means an untrained network, not the skipped layers.
  if untrained and len(untrained) < total:
    logging.warning(
        "%d of %d batch-norm layers (%s) have their initial running "
        "statistics (mean 0, variance 1), so they never ran in training. "
        "With batch norm, dnn-mode-connectivity's VGGBase and VGGCurve pair "
        "each block's layers with one ReLU per convolution and skip the "
        "layers left over (github.com/timgaripov/dnn-mode-connectivity/"
        "issues/2). mcjax runs every layer, so its logits will differ from "
        "those of the PyTorch model.", len(untrained), total,
        _listed(untrained))


def _to_array(value, dtype) -> np.ndarray:
  return np.asarray(value, dtype=dtype)


def endpoint_from_state_dict(state_dict: StateDict, model: vgg.VGG,
                             example_input) -> dict[str, PyTree]:
  """Converts a `VGGBase` state dict to mcjax variables.

  Args:
    state_dict: {key: array} with keys like `layer_blocks.0.0.weight` and
      `classifier.1.weight` (the `model_state` of a dnn-mode-connectivity
      checkpoint).
    model: the mcjax VGG to load into; `blocks`, `width`, `batch_norm` and
      `num_classes` must match the checkpoint.
    example_input: an array or ShapeDtypeStruct (batch, height, width,
      channels) of the input size the model will see.

  Returns:
    {'params': {...}} and, with batch norm, {'batch_stats': {...}}, shaped
    like `model.init(key, example_input)`, as float32 jax arrays.

  Raises:
    ValueError: if keys or shapes do not fit the model; the message lists
      the first missing keys, unexpected keys and shape mismatches.
  """
  shapes = expected_variables(model, example_input)
  entries = layout.entries(model, curve=False)
  expected, optional = {}, set()
  for entry in entries:
    if entry.collection == "counter":
      expected[entry.key] = ()
      optional.add(entry.key)
    else:
      leaf = shapes[f"{entry.collection}/{entry.path}"]
      expected[entry.key] = layout.torch_shape(leaf.shape, entry.transform)
  _check_state_dict(state_dict, expected, optional, model, example_input,
                    curve=False)
  _warn_untrained_batch_norm(state_dict, entries)

  channels = shapes["params/" + _last_conv_path(model)].shape[-1]
  flat = {}
  for entry in entries:
    if entry.collection == "counter":
      continue
    name = f"{entry.collection}/{entry.path}"
    array = _to_array(state_dict[entry.key], shapes[name].dtype)
    flat[name] = jnp.asarray(
        layout.to_mcjax(array, entry.transform, channels))
  return pytrees.unflatten_names(flat)


def _flat_variables(model: vgg.VGG, variables: PyTree, entries,
                    what: str) -> dict[str, Any]:
  flat = pytrees.flatten_with_names(variables)
  names = [f"{entry.collection}/{entry.path}" for entry in entries
           if entry.collection != "counter"]
  missing = [name for name in names if name not in flat]
  unexpected = [name for name in flat if name not in names]
  if missing or unexpected:
    raise ValueError(
        f"The {what} do not fit {_describe(model)}: "
        f"{len(missing)} missing leaves ({_listed(missing)}), "
        f"{len(unexpected)} unexpected leaves ({_listed(unexpected)}).")
  return flat


def endpoint_to_state_dict(model: vgg.VGG,
                           variables: PyTree) -> dict[str, np.ndarray]:
  """Converts mcjax variables to a `VGGBase` state dict.

  Args:
    model: the mcjax VGG the variables belong to.
    variables: {'params': ..., 'batch_stats': ...?} as from `model.init`.

  Returns:
    An ordered {key: numpy array} that `VGGBase.load_state_dict` accepts,
    with `num_batches_tracked` set to 0 for every batch-norm layer.
  """
  entries = layout.entries(model, curve=False)
  flat = _flat_variables(model, variables, entries, "variables")
  channels = np.shape(flat["params/" + _last_conv_path(model)])[-1]
  state_dict = collections.OrderedDict()
  for entry in entries:
    if entry.collection == "counter":
      state_dict[entry.key] = np.array(0, np.int64)
      continue
    array = np.array(flat[f"{entry.collection}/{entry.path}"])
    state_dict[entry.key] = np.ascontiguousarray(
        layout.to_torch(array, entry.transform, channels))
  return state_dict


def count_bends(state_dict: StateDict) -> int:
  """Returns the number of bends of a `CurveNet` state dict (0 if none)."""
  pattern = re.compile(r"net\.fc3\.weight_(\d+)")
  indices = [int(match.group(1)) for key in state_dict
             if (match := pattern.fullmatch(key))]
  return max(indices) + 1 if indices else 0


def curve_kind(state_dict: StateDict) -> str | None:
  """Returns "bezier" or "polychain" from the `coeff_layer.` buffers.

  Returns:
    None when the state dict has no `coeff_layer.` buffers.

  Raises:
    ValueError: for `coeff_layer.` buffers of neither kind.
  """
  names = {key[len(layout.COEFF_PREFIX):] for key in state_dict
           if key.startswith(layout.COEFF_PREFIX)}
  if not names:
    return None
  for kind, buffers in layout.COEFF_BUFFERS.items():
    if names == set(buffers):
      return kind
  raise ValueError(
      f"The curve's coefficient buffers {sorted(names)} match neither a "
      f"Bezier curve {list(layout.COEFF_BUFFERS['bezier'])} nor a polygonal "
      f"chain {list(layout.COEFF_BUFFERS['polychain'])}.")


def _resolve_curve(state_dict: StateDict, num_bends: int | None,
                   kind: str | None) -> tuple[int, str]:
  found_bends = count_bends(state_dict)
  if num_bends is None:
    if found_bends < 2:
      raise ValueError(
          "The state dict has no per-bend key 'net.fc3.weight_{k}', so it is "
          "not a dnn-mode-connectivity curve; pass num_bends to see which "
          "keys are missing, or load an endpoint with load_endpoint.")
    num_bends = found_bends
  elif found_bends and found_bends != num_bends:
    raise ValueError(
        f"The checkpoint contains a curve with {found_bends} bends "
        f"('net.fc3.weight_0' to 'net.fc3.weight_{found_bends - 1}'), but "
        f"num_bends={num_bends} was requested; set num_bends={found_bends}.")

  found_kind = curve_kind(state_dict)
  if kind is None:
    kind = found_kind or "bezier"
  elif found_kind is not None and found_kind != kind:
    raise ValueError(
        f"The checkpoint's coefficient buffers are those of a {found_kind} "
        f"curve, but kind={kind!r} was requested; set kind={found_kind!r}.")
  return num_bends, kind


def curve_from_state_dict(
    state_dict: StateDict, model: vgg.VGG, example_input,
    num_bends: int | None = None, kind: str | None = None,
) -> tuple[curves.Curve, PyTree | None]:
  """Converts a `CurveNet` state dict to an mcjax curve.

  Args:
    state_dict: {key: array} with keys like `net.layer_blocks.0.0.weight_1`
      and `net.fc1.weight_1` (the `model_state` of a curve checkpoint).
    model: the mcjax VGG whose parameters the curve joins.
    example_input: an array or ShapeDtypeStruct (batch, height, width,
      channels) of the input size the model will see.
    num_bends: the expected number of bends; None takes the checkpoint's.
    kind: "bezier" or "polychain"; None takes the kind of the checkpoint's
      `coeff_layer.` buffers, or "bezier" when it has none.

  Returns:
    (curve, batch_stats). `curve.bends` is the params pytree of `model`
    with a leading axis of length num_bends on every leaf. `batch_stats` is
    None without batch norm; with it, the one set of running statistics the
    PyTorch curve shares between all bends, shaped like
    `variables['batch_stats']` of `model`. dnn-mode-connectivity
    recomputes these statistics at every t before evaluating a point, so
    they describe no particular point.

  Raises:
    ValueError: if the bend count, kind, keys or shapes do not fit; the
      message lists the first missing keys, unexpected keys and shape
      mismatches.
  """
  num_bends, kind = _resolve_curve(state_dict, num_bends, kind)
  shapes = expected_variables(model, example_input)
  entries = layout.entries(model, curve=True)
  expected, optional = {}, set()
  for key, buffer in layout.coeff_buffers(kind, num_bends).items():
    expected[key] = buffer.shape
    # Only a curve stripped of its coefficient module lacks these.
    optional.add(key)
  for entry in entries:
    if entry.collection == "counter":
      expected[entry.key] = ()
      optional.add(entry.key)
      continue
    shape = layout.torch_shape(shapes[f"{entry.collection}/{entry.path}"].shape,
                               entry.transform)
    for bend in range(num_bends if entry.per_bend else 1):
      expected[layout.bend_key(entry, bend)] = shape
  _check_state_dict(state_dict, expected, optional, model, example_input,
                    curve=True)
  _warn_untrained_batch_norm(state_dict, entries)

  channels = shapes["params/" + _last_conv_path(model)].shape[-1]
  params, batch_stats = {}, {}
  for entry in entries:
    if entry.collection == "counter":
      continue
    dtype = shapes[f"{entry.collection}/{entry.path}"].dtype
    if entry.per_bend:
      array = np.stack([
          layout.to_mcjax(_to_array(state_dict[layout.bend_key(entry, bend)],
                                    dtype), entry.transform, channels)
          for bend in range(num_bends)])
      params[entry.path] = jnp.asarray(array)
    else:
      batch_stats[entry.path] = jnp.asarray(
          _to_array(state_dict[entry.key], dtype))
  curve = curves.Curve(bends=pytrees.unflatten_names(params), kind=kind)
  return curve, (pytrees.unflatten_names(batch_stats) if batch_stats else None)


def curve_to_state_dict(model: vgg.VGG, curve: curves.Curve,
                        batch_stats: PyTree | None = None
                        ) -> dict[str, np.ndarray]:
  """Converts an mcjax curve to a `CurveNet` state dict.

  Args:
    model: the mcjax VGG whose parameters the curve joins.
    curve: a `Curve` whose bends are params pytrees of `model` stacked
      along a leading axis.
    batch_stats: for a model with batch norm, the running statistics to
      store (shaped like `variables['batch_stats']`); None writes mean 0
      and variance 1, the statistics of a freshly built PyTorch curve.

  Returns:
    An ordered {key: numpy array} that `CurveNet.load_state_dict` accepts,
    including the `coeff_layer.` buffers of `curve.kind`.
  """
  entries = layout.entries(model, curve=True)
  if batch_stats is not None and not model.batch_norm:
    raise ValueError("batch_stats were given, but the model has no batch "
                     "norm (batch_norm=False); pass batch_stats=None.")
  param_entries = [entry for entry in entries if entry.collection == "params"]
  flat = _flat_variables(model, {"params": curve.bends}, param_entries,
                         "curve bends")
  stats = {}
  if model.batch_norm:
    stat_entries = [entry for entry in entries
                    if entry.collection == "batch_stats"]
    if batch_stats is None:
      for entry in stat_entries:
        scale = flat[f"params/{entry.path.split('/')[0]}/scale"]
        initial = 0.0 if entry.path.endswith("/mean") else 1.0
        stats[f"batch_stats/{entry.path}"] = np.full(
            np.shape(scale)[1:], initial, np.float32)
    else:
      stats = _flat_variables(model, {"batch_stats": batch_stats},
                              stat_entries, "batch_stats")

  num_bends = curve.num_bends
  channels = np.shape(flat["params/" + _last_conv_path(model)])[-1]
  state_dict = collections.OrderedDict(
      layout.coeff_buffers(curve.kind, num_bends))
  for entry in entries:
    if entry.collection == "counter":
      state_dict[entry.key] = np.array(0, np.int64)
    elif entry.collection == "batch_stats":
      state_dict[entry.key] = np.array(stats[f"batch_stats/{entry.path}"])
    else:
      bends = np.array(flat[f"params/{entry.path}"])
      for bend in range(num_bends):
        state_dict[layout.bend_key(entry, bend)] = np.ascontiguousarray(
            layout.to_torch(bends[bend], entry.transform, channels))
  return state_dict
