"""Per-unit deviation from the straight line inside a permuted layer.

A permutation group acts on the output units of one layer: kernel[..., u],
bias[u], and the scale, bias and statistics of a batch norm after it. It also
acts on the input units of the layer's consumer: kernel[..., u, :] of a conv,
row u of a dense kernel, and every spatial copy of channel u where a flatten
feeds a dense layer. For each side and each unit u this module measures
||theta_u(t) - line_u(t)||, the curve's correction restricted to the
parameters of unit u, from per-unit Gram matrices, and compares the swapped
units with the distribution over the other units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import numpy as np

from mcjax import curves
from mcjax import pytrees
from mcjax.analysis import distances as distances_lib
from mcjax.analysis import grams as grams_lib

PyTree = Any
OUTPUT = "output"
INPUT = "input"


@dataclasses.dataclass(frozen=True)
class UnitDeviation:
  """Per-unit deviation on one side of a permutation group.

  Attributes:
    group: the permutation group (the name of the permuted layer).
    side: "output" (the permuted layer and its batch norm) or "input" (the
      consumer's input units).
    paths: the parameter leaf paths measured, with the permuted axis of each.
    deviation: float64 (T, units), ||theta_u(t) - line_u(t)|| per unit.
    rms: float64 (units,), the root mean square of `deviation` over t (the
      trapezoid rule over ts, divided by the span of ts).
    swapped_units: the units under study (for a swap, both units of each
      pair).
    stats: {"swapped_rms": list, "swapped_rank": list (1 = largest rms of
      all units), "others_mean", "others_std", "swapped_zscore": list}.
  """

  group: str
  side: str
  paths: tuple[tuple[str, int], ...]
  deviation: np.ndarray
  rms: np.ndarray
  swapped_units: tuple[int, ...]
  stats: dict[str, Any]


def _strip_collection(path: str) -> str | None:
  """Maps a spec path such as 'params/fc1/kernel' to 'fc1/kernel'."""
  head, sep, rest = path.partition("/")
  if sep and head == "params":
    return rest
  if sep and head == "batch_stats":
    return None
  return path


def _spec_axes(spec) -> Mapping[str, Sequence[str | None]]:
  return spec.axes if hasattr(spec, "axes") else spec


def group_axes(spec, group: str,
               params: PyTree) -> dict[str, list[tuple[str, int]]]:
  """Finds the parameter leaves a permutation group acts on, by side.

  Args:
    spec: a `mcjax.permutations.PermutationSpec`, or its `axes` mapping
      {leaf path: per-axis group name or None}. Paths may carry a 'params/'
      prefix, and 'batch_stats/' paths are skipped because they are not
      parameters.
    group: the group name.
    params: the params pytree the paths refer to (one endpoint).

  Returns:
    {"output": [(path, axis)], "input": [(path, axis)]}: a leaf belongs to the
    output side when the group acts on its last axis (kernel output axis,
    bias, batch-norm vectors), otherwise to the input side.

  Raises:
    ValueError: if no parameter leaf carries the group.
  """
  axes = _spec_axes(spec)
  flat = pytrees.flatten_with_names(params)
  sides: dict[str, list[tuple[str, int]]] = {OUTPUT: [], INPUT: []}
  for spec_path, per_axis in axes.items():
    path = _strip_collection(spec_path)
    if path is None or path not in flat:
      continue
    for axis, name in enumerate(per_axis):
      if name != group:
        continue
      side = OUTPUT if axis == np.ndim(flat[path]) - 1 else INPUT
      sides[side].append((path, axis))
  if not sides[OUTPUT] and not sides[INPUT]:
    groups = sorted({name for per_axis in axes.values() for name in per_axis
                     if name is not None})
    raise ValueError(f"No parameter carries the permutation group {group!r}; "
                     f"the spec's groups are {groups}.")
  return sides


def touched_layers(spec, group: str, params: PyTree) -> list[str]:
  """Returns the layers a permutation group changes, output side first.

  For a swap in `block2_conv1` with batch norm these are `block2_conv1`,
  `block2_bn1` and the consumer `block2_conv2`.
  """
  sides = group_axes(spec, group, params)
  names: list[str] = []
  for side in (OUTPUT, INPUT):
    for path, _ in sides[side]:
      module = path.rpartition("/")[0] or path
      if module not in names:
        names.append(module)
  return names


def _unit_grams(bends: np.ndarray, axis: int, num_units: int,
                path: str) -> np.ndarray:
  """Returns float64 (units, K, K) Grams of one leaf's chord/offset basis.

  `bends` is (n, *leaf shape) and `axis` the permuted leaf axis. An axis of
  size k * num_units is a flatten of k spatial positions with the channel
  fastest (NHWC order), so unit u owns indices u, u + units, u + 2 units, ...
  """
  num_bends = bends.shape[0]
  moved = np.moveaxis(bends, axis + 1, -1)
  size = moved.shape[-1]
  if size % num_units:
    raise ValueError(
        f"Axis {axis} of {path!r} has size {size}, which is not a multiple of "
        f"the group's {num_units} units.")
  per_unit = moved.reshape(num_bends, -1, num_units).astype(np.float64)
  basis = grams_lib.basis_rows(per_unit, [])
  return np.einsum("krn,jrn->nkj", basis, basis)


def unit_deviation(curve: curves.Curve, spec, group: str,
                   swapped_units: Sequence[int],
                   ts=None) -> dict[str, UnitDeviation]:
  """Measures the per-unit deviation from the straight line on both sides.

  Args:
    curve: a `curves.Curve` over a params pytree.
    spec: the permutation spec or its `axes` (see `group_axes`).
    group: the permuted layer's group name, e.g. "block2_conv1".
    swapped_units: the units under study, e.g. [3, 17] for one swapped pair.
    ts: (T,) t values; default 61 evenly spaced in [0, 1].

  Returns:
    {"output": UnitDeviation, "input": UnitDeviation}; a side the group does
    not act on is left out.

  Raises:
    ValueError: if the group is unknown, a swapped unit is out of range, or
      the permuted axes disagree on the number of units.
  """
  ts = distances_lib.default_ts() if ts is None else distances_lib.check_ts(ts)
  start = grams_lib.endpoint_shapes(curve)
  sides = group_axes(spec, group, start)
  flat_bends = pytrees.flatten_with_names(curve.bends)
  flat_start = pytrees.flatten_with_names(start)

  output_sizes = {np.shape(flat_start[path])[axis]
                  for path, axis in sides[OUTPUT]}
  if len(output_sizes) > 1:
    raise ValueError(f"Group {group!r} acts on output axes of different sizes "
                     f"{sorted(output_sizes)}.")
  if output_sizes:
    num_units = output_sizes.pop()
  else:
    num_units = min(np.shape(flat_start[path])[axis]
                    for path, axis in sides[INPUT])
  swapped = tuple(int(u) for u in swapped_units)
  bad = [u for u in swapped if not 0 <= u < num_units]
  if bad or not swapped:
    raise ValueError(f"swapped_units {list(swapped)} is invalid for group "
                     f"{group!r}: expected at least one unit in "
                     f"[0, {num_units}).")

  coords = distances_lib.start_coordinates(curve.kind, ts, curve.num_bends,
                                           curve.num_bends - 1)
  coords[:, 0] -= ts
  results = {}
  for side, leaves in sides.items():
    if not leaves:
      continue
    gram = np.zeros((num_units, curve.num_bends - 1, curve.num_bends - 1))
    for path, axis in leaves:
      gram += _unit_grams(np.asarray(flat_bends[path]), axis, num_units, path)
    squared = np.maximum(np.einsum("tk,ukj,tj->tu", coords, gram, coords), 0.0)
    rms = _root_mean_square(squared, ts)
    results[side] = UnitDeviation(
        group=group, side=side, paths=tuple(leaves), deviation=np.sqrt(squared),
        rms=rms, swapped_units=swapped, stats=_compare(rms, swapped))
  return results


def _root_mean_square(squared: np.ndarray, ts: np.ndarray) -> np.ndarray:
  if len(ts) < 2 or ts[-1] == ts[0]:
    return np.sqrt(squared.mean(axis=0))
  return np.sqrt(np.trapezoid(squared, ts, axis=0) / (ts[-1] - ts[0]))


def _compare(rms: np.ndarray, swapped: tuple[int, ...]) -> dict[str, Any]:
  """Compares the swapped units' rms with the other units' distribution."""
  others = np.delete(rms, list(swapped))
  # Rank 1 is the largest rms; ties share the better rank.
  ranks = [int(np.sum(rms > rms[u])) + 1 for u in swapped]
  mean = float(others.mean()) if others.size else float("nan")
  std = float(others.std()) if others.size else float("nan")
  with np.errstate(divide="ignore", invalid="ignore"):
    zscores = [float((rms[u] - mean) / std) if std > 0 else float("nan")
               for u in swapped]
  return {"swapped_rms": [float(rms[u]) for u in swapped],
          "swapped_rank": ranks, "num_units": int(rms.size),
          "others_mean": mean, "others_std": std, "swapped_zscore": zscores}
