"""Series along a path, their summary statistics, and their files.

The barrier of a series f evaluated at t_0 = 0 < ... < t_(T-1) = 1 is

  barrier(f) = max_k f(t_k) - max(f(t_0), f(t_(T-1))),

how much worse the worst evaluated point of the path is than the worse of
its two endpoints. It is never negative, and 0 when no interior point is
worse than both endpoints. It is reported for the test error and the train
loss (and stored for every series).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from mcjax import files

BARRIER_DEFINITION = (
    "barrier = max over the evaluated t of the series minus the larger of "
    "its values at t = 0 and t = 1; 0 when no point is worse than both "
    "endpoints")
INTEGRAL_DEFINITION = (
    "integral = int f ds / int ds over the path's arc length s in parameter "
    "space, with f linear in t between evaluated points and ds = "
    "||d theta / dt|| dt from the bends; the mean over t when the path has "
    "length 0")
# Series in every PathEvaluation; errors and accuracies are in percent.
SERIES = ("train_loss", "train_nll", "train_error", "train_accuracy",
          "test_nll", "test_error", "test_accuracy", "param_norm")
BARRIER_SERIES = ("test_error", "train_loss")


@dataclasses.dataclass(frozen=True)
class PathEvaluation:
  """Metrics of the networks at evenly spaced t along one path.

  Attributes:
    name: the path, for example "curve" or "line".
    kind: "bezier" or "polychain"; a line is a Bezier curve with 2 bends.
    num_bends: number of bends of the path.
    t: float64 (T,), the evaluated t, from 0 to 1.
    series: name -> float64 (T,) for every name in `SERIES`: train_nll and
      test_nll are the mean cross-entropy; train_loss is train_nll plus
      0.5 * weight_decay * param_norm^2; *_error and *_accuracy are in
      percent; param_norm is ||theta(t)|| over the params.
    arc_weights: float64 (T - 1, 2), see `geometry.arc_weights`; the path
      length is its sum.
    weight_decay: the coefficient of the L2 term in train_loss.
    batch_norm: how the batch-norm statistics were set: "none", or a
      sentence saying where they were recomputed.
  """

  name: str
  kind: str
  num_bends: int
  t: np.ndarray
  series: dict[str, np.ndarray]
  arc_weights: np.ndarray
  weight_decay: float = 0.0
  batch_norm: str = "none"

  @property
  def length(self) -> float:
    return float(np.sum(self.arc_weights))


def barrier(values) -> float:
  """Returns max(values) - max(values[0], values[-1]); see the module doc."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or values.size < 2:
    raise ValueError(
        f"A series needs shape (T,) with T >= 2, got shape {values.shape}.")
  return float(np.max(values) - max(values[0], values[-1]))


def length_weighted_mean(values, arc_weights) -> float:
  """Returns the integral of a series over arc length divided by the length.

  Args:
    values: float (T,), the series at the grid of `arc_weights`.
    arc_weights: float (T - 1, 2) from `geometry.arc_weights`.

  Returns:
    sum_k (A_k f_k + B_k f_(k+1)) / sum_k (A_k + B_k), or the mean of the
    trapezoid rule in t when the path has length 0 (every point is the same
    network).
  """
  values = np.asarray(values, np.float64)
  arc_weights = np.asarray(arc_weights, np.float64)
  if arc_weights.shape != (values.size - 1, 2):
    raise ValueError(
        f"arc_weights of shape {arc_weights.shape} do not fit a series of "
        f"{values.size} values; expected ({values.size - 1}, 2).")
  length = np.sum(arc_weights)
  if length == 0.0:
    return float(np.mean(0.5 * (values[:-1] + values[1:])))
  weighted = arc_weights[:, 0] * values[:-1] + arc_weights[:, 1] * values[1:]
  return float(np.sum(weighted) / length)


def summarize(result: PathEvaluation) -> dict[str, Any]:
  """Summarises every series of a path.

  Returns:
    A JSON-ready dict: "name", "kind", "num_bends", "num_points",
    "weight_decay", "batch_norm", "length" (arc length in parameter space),
    "barriers" {"test_error", "train_loss"}, the definitions of barrier and
    integral, and "series" mapping each name to {"start", "end", "min",
    "max", "mean", "integral", "barrier"}, where "mean" is over the evaluated
    t and "integral" is `length_weighted_mean`.
  """
  series = {}
  for name, values in result.series.items():
    values = np.asarray(values, np.float64)
    series[name] = {
        "start": float(values[0]),
        "end": float(values[-1]),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "mean": float(np.mean(values)),
        "integral": length_weighted_mean(values, result.arc_weights),
        "barrier": barrier(values),
    }
  return {
      "name": result.name,
      "kind": result.kind,
      "num_bends": int(result.num_bends),
      "num_points": int(result.t.size),
      "weight_decay": float(result.weight_decay),
      "batch_norm": result.batch_norm,
      "length": result.length,
      "barriers": {name: series[name]["barrier"] for name in BARRIER_SERIES
                   if name in series},
      "barrier_definition": BARRIER_DEFINITION,
      "integral_definition": INTEGRAL_DEFINITION,
      "error_unit": "percent",
      "series": series,
  }


def save(result: PathEvaluation, summary: dict[str, Any], out_dir: str,
         prefix: str) -> tuple[str, str]:
  """Writes the series as `{prefix}.npz` and the summary as `{prefix}.json`.

  Each file is written under a temporary name in `out_dir` and renamed with
  `os.replace`, so a crash leaves either the complete file or none.

  Returns:
    The (npz path, json path).
  """
  os.makedirs(out_dir, exist_ok=True)
  npz_path = os.path.join(out_dir, f"{prefix}.npz")
  json_path = os.path.join(out_dir, f"{prefix}.json")
  metadata = {"name": result.name, "kind": result.kind,
              "num_bends": int(result.num_bends),
              "weight_decay": float(result.weight_decay),
              "batch_norm": result.batch_norm}
  arrays = {"t": result.t, "arc_weights": result.arc_weights,
            "metadata": np.array(json.dumps(metadata))}
  arrays.update({f"series/{name}": values
                 for name, values in result.series.items()})
  files.atomic_write(npz_path, lambda f: np.savez(f, **arrays))
  text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
  files.atomic_write(json_path, lambda f: f.write(text.encode("utf-8")))
  return npz_path, json_path


def load(out_dir: str, prefix: str) -> tuple[PathEvaluation, dict[str, Any]]:
  """Reads back what `save` wrote: (PathEvaluation, summary dict)."""
  with np.load(os.path.join(out_dir, f"{prefix}.npz")) as arrays:
    metadata = json.loads(str(arrays["metadata"]))
    series = {key.split("/", 1)[1]: arrays[key] for key in arrays.files
              if key.startswith("series/")}
    result = PathEvaluation(t=arrays["t"], arc_weights=arrays["arc_weights"],
                            series=series, **metadata)
  with open(os.path.join(out_dir, f"{prefix}.json"), encoding="utf-8") as f:
    summary = json.load(f)
  return result, summary
