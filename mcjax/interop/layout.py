"""State-dict key names of the dnn-mode-connectivity VGG, matched to mcjax.

dnn-mode-connectivity (Garipov et al. 2018, github.com/timgaripov/
dnn-mode-connectivity, models/vgg.py and curves.py) stores its networks as
PyTorch state dicts:

* the base model `VGGBase` keeps block b's layers in the list
  `layer_blocks.{b}`. With batch norm, convolution l sits at index 2l and
  its BatchNorm2d at 2l + 1, and without it convolution l sits at index l.
  The classifier is `classifier.{1,4,6}` (Dropout, Linear, ReLU, Dropout,
  Linear, ReLU, Linear);
* the curve model `CurveNet` wraps a `VGGCurve` in `net.`, names its
  classifier `fc1`, `fc2`, `fc3`, gives every parameter one copy per bend
  (`weight_{k}`, `bias_{k}`), keeps one set of batch-norm running statistics
  for the whole curve, and stores the Bernstein or polygonal-chain
  coefficient buffers under `coeff_layer.`.

This module lists those keys for an mcjax `VGG` in the order PyTorch writes
them, and converts arrays between PyTorch's and mcjax's layouts. It needs
numpy only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from mcjax.models import vgg

Transform = Literal["conv", "dense", "flatten_dense", "vector"]
Collection = Literal["params", "batch_stats", "counter"]

# PyTorch's classifier indices inside VGGBase's nn.Sequential, and the
# matching attribute names of VGGCurve.
BASE_DENSE_KEYS = {"fc1": "classifier.1", "fc2": "classifier.4",
                   "fc3": "classifier.6"}
CURVE_PREFIX = "net."
COEFF_PREFIX = "coeff_layer."
# Buffers of the coefficient module: Bezier stores binomials and the two
# exponent ranges, PolyChain only the bend positions.
COEFF_BUFFERS = {"bezier": ("binom", "range", "rev_range"),
                 "polychain": ("range",)}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One state-dict tensor and the mcjax leaf it corresponds to.

  Attributes:
    key: the PyTorch key without the curve's `_{k}` bend suffix, such as
      `layer_blocks.2.1.weight` or `net.fc1.bias`.
    collection: "params" or "batch_stats" for a leaf of mcjax variables,
      "counter" for `num_batches_tracked`, which has no mcjax counterpart.
    path: the mcjax leaf path inside its collection, such as
      `block2_conv1/kernel`; empty for a counter.
    transform: how the array changes between layouts: "conv" (OIHW to HWIO),
      "dense" ((out, in) to (in, out)), "flatten_dense" (like "dense", and
      the input axis reordered from (c, h, w) to (h, w, c)), "vector" (as is).
    per_bend: whether a curve stores one copy per bend (`{key}_{k}`).
  """

  key: str
  collection: Collection
  path: str
  transform: Transform
  per_bend: bool


def check_model(model) -> None:
  """Raises TypeError unless `model` is an mcjax VGG."""
  if not isinstance(model, vgg.VGG):
    raise TypeError(
        "dnn-mode-connectivity interop supports mcjax.models.VGG only, got "
        f"{type(model).__name__}.")


def entries(model: vgg.VGG, curve: bool) -> list[Entry]:
  """Lists the state-dict entries of `model` in PyTorch's order.

  Args:
    model: an mcjax VGG; its `blocks` and `batch_norm` fix the layout.
    curve: False for the `VGGBase` layout, True for `CurveNet` (without the
      `coeff_layer.` buffers, which `coeff_buffers` builds).

  Returns:
    One `Entry` per tensor, in the order of `state_dict()` of the PyTorch
    module: parameters before buffers within each layer, layers in forward
    order.
  """
  check_model(model)
  prefix = CURVE_PREFIX if curve else ""
  result = []

  def add(key, collection, path, transform, per_bend=True):
    result.append(Entry(prefix + key, collection, path, transform,
                        per_bend and curve))

  for b, block in enumerate(model.blocks):
    for l in range(len(block)):
      conv = vgg.conv_name(b, l)
      index = 2 * l if model.batch_norm else l
      add(f"layer_blocks.{b}.{index}.weight", "params", f"{conv}/kernel",
          "conv")
      add(f"layer_blocks.{b}.{index}.bias", "params", f"{conv}/bias", "vector")
      if model.batch_norm:
        bn = vgg.bn_name(b, l)
        key = f"layer_blocks.{b}.{index + 1}"
        add(f"{key}.weight", "params", f"{bn}/scale", "vector")
        add(f"{key}.bias", "params", f"{bn}/bias", "vector")
        add(f"{key}.running_mean", "batch_stats", f"{bn}/mean", "vector",
            per_bend=False)
        add(f"{key}.running_var", "batch_stats", f"{bn}/var", "vector",
            per_bend=False)
        add(f"{key}.num_batches_tracked", "counter", "", "vector",
            per_bend=False)

  for name in ("fc1", "fc2", "fc3"):
    key = name if curve else BASE_DENSE_KEYS[name]
    add(f"{key}.weight", "params", f"{name}/kernel",
        "flatten_dense" if name == "fc1" else "dense")
    add(f"{key}.bias", "params", f"{name}/bias", "vector")
  return result


def bend_key(entry: Entry, bend: int) -> str:
  """Returns the key of `entry` for one bend (`weight_2`), or its plain key."""
  return f"{entry.key}_{bend}" if entry.per_bend else entry.key


def coeff_buffers(kind: str, num_bends: int) -> dict[str, np.ndarray]:
  """Builds the `coeff_layer.` buffers a PyTorch `CurveNet` of `kind` holds.

  Returns:
    {key: float32 array of shape (num_bends,)}: for "bezier" the binomials
    binom(n - 1, i), the exponents 0..n-1 and n-1..0; for "polychain" the
    bend positions 0..n-1.
  """
  if kind not in COEFF_BUFFERS:
    raise ValueError(f"Curve kind {kind!r} is invalid; expected one of "
                     f"{tuple(COEFF_BUFFERS)}.")
  positions = np.arange(num_bends, dtype=np.float32)
  values = {"range": positions}
  if kind == "bezier":
    values["binom"] = np.array(
        [math.comb(num_bends - 1, i) for i in range(num_bends)], np.float32)
    values["rev_range"] = positions[::-1].copy()
  return {COEFF_PREFIX + name: values[name] for name in COEFF_BUFFERS[kind]}


def _split_flatten(in_features: int, channels: int) -> int:
  if in_features % channels:
    raise ValueError(
        f"fc1 has {in_features} inputs, which is not a multiple of the "
        f"{channels} channels of the last convolution.")
  return in_features // channels


def to_mcjax(array: np.ndarray, transform: Transform,
             channels: int | None = None) -> np.ndarray:
  """Converts one PyTorch array to the mcjax layout.

  Args:
    array: the state-dict array (a conv weight (O, I, kh, kw), a Linear
      weight (out, in), or a vector).
    transform: the entry's transform.
    channels: channels of the last convolution; required for
      "flatten_dense", whose input axis PyTorch flattens as (c, h, w) and
      mcjax as (h, w, c).

  Returns:
    A conv kernel (kh, kw, I, O), a Dense kernel (in, out) or the vector.
  """
  if transform == "conv":
    return np.transpose(array, (2, 3, 1, 0))
  if transform == "dense":
    return np.transpose(array)
  if transform == "flatten_dense":
    out_features, in_features = array.shape
    spatial = _split_flatten(in_features, channels)
    # (out, c, hw) -> (hw, c, out): only the product h * w matters, because
    # both layouts flatten h and w in the same row-major order.
    kernel = array.reshape(out_features, channels, spatial)
    return np.transpose(kernel, (2, 1, 0)).reshape(in_features, out_features)
  return array


def to_torch(array: np.ndarray, transform: Transform,
             channels: int | None = None) -> np.ndarray:
  """Converts one mcjax array to the PyTorch layout; inverts `to_mcjax`."""
  if transform == "conv":
    return np.transpose(array, (3, 2, 0, 1))
  if transform == "dense":
    return np.transpose(array)
  if transform == "flatten_dense":
    in_features, out_features = array.shape
    spatial = _split_flatten(in_features, channels)
    kernel = array.reshape(spatial, channels, out_features)
    return np.transpose(kernel, (2, 1, 0)).reshape(out_features, in_features)
  return array


def torch_shape(shape: tuple[int, ...], transform: Transform) -> tuple[int, ...]:
  """Returns the PyTorch shape of an mcjax leaf of `shape`."""
  if transform == "conv":
    kh, kw, in_channels, out_channels = shape
    return (out_channels, in_channels, kh, kw)
  if transform in ("dense", "flatten_dense"):
    return tuple(reversed(shape))
  return tuple(shape)
