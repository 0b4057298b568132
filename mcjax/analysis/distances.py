"""Per-layer distances along a curve, as quadratic forms in its Grams.

Every metric is a (T, L + 1) float64 array: one row per t, one column per
layer and a last column for the whole network ("all"). With theta(t) the curve
point, w_0 and w_1 the start and end endpoints, line(t) = (1 - t) w_0 + t w_1,
and every norm taken over one layer's parameters (weights and bias together):

  to_start            ||theta(t) - w_0||
  to_start_normalized to_start / sqrt(parameter count)
  to_start_relative   to_start / ||w_0||
  norm_change_start   | ||theta(t)|| - ||w_0|| |
  to_end, to_end_normalized, to_end_relative, norm_change_end
                      the same with w_1 (relative: divided by ||w_1||)
  deviation           ||theta(t) - line(t)||, the correction the curve makes
                      to the straight line at the same t
  deviation_normalized, deviation_relative (divided by ||w_0||)

When the Grams carry the reference "permuted_start", P w_0 for the
permutation P that produced the end endpoint, also:

  to_permuted_start   ||theta(t) - P w_0||
  reordered           min(||theta(t) - w_0||, ||theta(t) - P w_0||), the
                      distance to the nearer of the two functionally equal
                      copies of the start network, taken per layer (and, for
                      "all", over the whole network)
  reordered_normalized, reordered_relative (divided by ||w_0||)

For w_1 = P w_0, a layer that P leaves alone has w_0 = P w_0 there, so its
`reordered` equals `to_start`; a layer that P changes reads 0 at both ends
because theta(0) = w_0 and theta(1) = P w_0. A relative metric is NaN in a
layer whose reference norm is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from mcjax import curves
from mcjax.analysis import grams as grams_lib

PyTree = Any
DEFAULT_NUM_POINTS = 61
PERMUTED_START = "permuted_start"

METRICS = {
    "to_start": "||theta(t) - theta_0||",
    "to_start_normalized": "||theta(t) - theta_0|| / sqrt(#params)",
    "to_start_relative": "||theta(t) - theta_0|| / ||theta_0||",
    "norm_change_start": "| ||theta(t)|| - ||theta_0|| |",
    "to_end": "||theta(t) - theta_1||",
    "to_end_normalized": "||theta(t) - theta_1|| / sqrt(#params)",
    "to_end_relative": "||theta(t) - theta_1|| / ||theta_1||",
    "norm_change_end": "| ||theta(t)|| - ||theta_1|| |",
    "deviation": "||theta(t) - line(t)||",
    "deviation_normalized": "||theta(t) - line(t)|| / sqrt(#params)",
    "deviation_relative": "||theta(t) - line(t)|| / ||theta_0||",
    "to_permuted_start": "||theta(t) - P theta_0||",
    "reordered": "min(||theta(t) - theta_0||, ||theta(t) - P theta_0||)",
    "reordered_normalized": "reordered / sqrt(#params)",
    "reordered_relative": "reordered / ||theta_0||",
}


@dataclasses.dataclass(frozen=True)
class Distances:
  """Per-layer distance series along a curve.

  Attributes:
    ts: float64 (T,), the curve parameters.
    layers: the L layer names followed by "all".
    param_counts: int64 (L + 1,).
    metrics: {metric name: float64 (T, L + 1)}; names as in `METRICS`.
    start_norm: float64 (L + 1,), ||w_0|| per column.
    end_norm: float64 (L + 1,), ||w_1|| per column.
    kind: the curve kind.
    num_bends: number of bends of the curve.
  """

  ts: np.ndarray
  layers: tuple[str, ...]
  param_counts: np.ndarray
  metrics: dict[str, np.ndarray]
  start_norm: np.ndarray
  end_norm: np.ndarray
  kind: str
  num_bends: int

  def metric(self, name: str) -> np.ndarray:
    """Returns the (T, L + 1) series of metric `name`."""
    if name not in self.metrics:
      raise ValueError(f"Metric {name!r} is not available; expected one of "
                       f"{sorted(self.metrics)}.")
    return self.metrics[name]

  def column(self, layer: str) -> int:
    """Returns the column index of `layer` ("all" for the whole network)."""
    if layer not in self.layers:
      raise ValueError(f"Layer {layer!r} is not in these distances; the layers "
                       f"are {list(self.layers)}.")
    return self.layers.index(layer)


def default_ts(num_points: int = DEFAULT_NUM_POINTS) -> np.ndarray:
  """Returns `num_points` evenly spaced t in [0, 1], endpoints included."""
  return np.linspace(0.0, 1.0, num_points)


def check_ts(ts) -> np.ndarray:
  """Returns ts as a float64 (T,) array, raising for an invalid one."""
  ts = np.asarray(ts, np.float64)
  if ts.ndim != 1 or ts.size == 0:
    raise ValueError(f"ts must be a non-empty 1-D array, got shape {ts.shape}.")
  if not np.all(np.isfinite(ts)) or ts.min() < 0.0 or ts.max() > 1.0:
    raise ValueError(f"ts must lie in [0, 1]; got values from {ts.min()} to "
                     f"{ts.max()}.")
  return ts


@functools.partial(jax.jit, static_argnums=(0, 1))
def _coefficients_at(kind: str, num_bends: int, ts: jax.Array) -> jax.Array:
  return jax.vmap(lambda t: curves.coefficients(kind, t, num_bends))(ts)


def curve_coefficients(kind: str, ts: np.ndarray,
                       num_bends: int) -> np.ndarray:
  """Returns the float64 (T, num_bends) coefficients c(t) of a curve."""
  coeffs = np.asarray(_coefficients_at(kind, num_bends,
                                       np.asarray(ts, np.float32)), np.float64)
  # The float32 coefficients sum to 1 only up to rounding; the chord/offset
  # coordinates assume an exact affine combination.
  return coeffs / coeffs.sum(axis=1, keepdims=True)


def start_coordinates(kind: str, ts: np.ndarray, num_bends: int,
                      basis_size: int) -> np.ndarray:
  """Returns theta(t) - w_0 in the chord/offset basis, float64 (T, K).

  From w_i = w_0 + s_i Delta + E_i: the chord coordinate is sum_i c_i s_i and
  the offset coordinates are the interior coefficients.
  """
  coeffs = curve_coefficients(kind, ts, num_bends)
  positions = np.arange(num_bends) / (num_bends - 1)
  coords = np.zeros((len(ts), basis_size))
  coords[:, 0] = coeffs @ positions
  coords[:, 1:num_bends - 1] = coeffs[:, 1:num_bends - 1]
  return coords


def _quadratic(coords: np.ndarray, gram: np.ndarray) -> np.ndarray:
  """Returns y(t)^T G_l y(t) for (T, K) coords and (L, K, K) Grams: (T, L)."""
  return np.einsum("tk,lkj,tj->tl", coords, gram, coords)


def _norm(coords: np.ndarray, gram: np.ndarray) -> np.ndarray:
  # Rounding can leave a tiny negative square where the true value is 0.
  return np.sqrt(np.maximum(_quadratic(coords, gram), 0.0))


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(denominator > 0, numerator / denominator, np.nan)


def distances_from_grams(grams: grams_lib.CurveGrams,
                         ts=None) -> Distances:
  """Evaluates every metric at every t from the Grams.

  Args:
    grams: a `CurveGrams` from `curve_grams`.
    ts: the t values, (T,) in [0, 1]; default 61 evenly spaced.

  Returns:
    A `Distances`; the permutation metrics are present when `grams` has the
    reference "permuted_start".
  """
  ts = default_ts() if ts is None else check_ts(ts)
  gram, start_dot = grams.gram, grams.start_dot
  sqrt_counts = np.sqrt(grams.param_counts.astype(np.float64))
  coords = start_coordinates(grams.kind, ts, grams.num_bends, grams.basis_size)
  chord = np.zeros(grams.basis_size)
  chord[0] = 1.0

  start_norm = np.sqrt(grams.start_sq)
  end_sq = grams.start_sq + 2.0 * start_dot[:, 0] + gram[:, 0, 0]
  end_norm = np.sqrt(np.maximum(end_sq, 0.0))

  # ||theta||^2 - ||w_0||^2 = 2 <w_0, x> + x^T G x, and with y = x - chord
  # ||theta||^2 - ||w_1||^2 = 2 <w_0 + G chord, y> + y^T G y; both avoid
  # subtracting two large squared norms.
  to_end_coords = coords - chord
  start_change = 2.0 * coords @ start_dot.T + _quadratic(coords, gram)
  end_change = (2.0 * np.einsum("tk,lk->tl", to_end_coords,
                                start_dot + gram[:, :, 0])
                + _quadratic(to_end_coords, gram))
  theta_norm = np.sqrt(np.maximum(grams.start_sq + start_change, 0.0))

  line_coords = coords.copy()
  line_coords[:, 0] -= ts

  metrics = {}
  metrics["to_start"] = _norm(coords, gram)
  metrics["to_start_normalized"] = metrics["to_start"] / sqrt_counts
  metrics["to_start_relative"] = _divide(metrics["to_start"], start_norm)
  metrics["norm_change_start"] = np.abs(
      _divide(start_change, theta_norm + start_norm))
  metrics["to_end"] = _norm(to_end_coords, gram)
  metrics["to_end_normalized"] = metrics["to_end"] / sqrt_counts
  metrics["to_end_relative"] = _divide(metrics["to_end"], end_norm)
  metrics["norm_change_end"] = np.abs(
      _divide(end_change, theta_norm + end_norm))
  metrics["deviation"] = _norm(line_coords, gram)
  metrics["deviation_normalized"] = metrics["deviation"] / sqrt_counts
  metrics["deviation_relative"] = _divide(metrics["deviation"], start_norm)

  if PERMUTED_START in grams.reference_names:
    permuted_coords = coords.copy()
    permuted_coords[:, grams.reference_index(PERMUTED_START)] -= 1.0
    metrics["to_permuted_start"] = _norm(permuted_coords, gram)
    metrics["reordered"] = np.minimum(metrics["to_start"],
                                      metrics["to_permuted_start"])
    metrics["reordered_normalized"] = metrics["reordered"] / sqrt_counts
    metrics["reordered_relative"] = _divide(metrics["reordered"], start_norm)

  # A zero-norm column has a 0/0 norm change; it is 0 there.
  metrics["norm_change_start"] = np.nan_to_num(metrics["norm_change_start"])
  metrics["norm_change_end"] = np.nan_to_num(metrics["norm_change_end"])
  return Distances(ts=ts, layers=grams.layers, param_counts=grams.param_counts,
                   metrics=metrics, start_norm=start_norm, end_norm=end_norm,
                   kind=grams.kind, num_bends=grams.num_bends)


def curve_distances(curve: curves.Curve, ts=None, *,
                    permuted_start: PyTree | None = None,
                    layers: Sequence[str] | None = None,
                    references: Mapping[str, PyTree] | None = None
                    ) -> Distances:
  """Computes every per-layer metric along a curve without materialising it.

  Cost: one pass over the bends to build the Grams (`curve_grams`), then a
  K x K quadratic form per t and layer, so 61 points cost about as much as
  one.

  Args:
    curve: a `curves.Curve` over a params pytree.
    ts: (T,) t values in [0, 1]; default 61 evenly spaced.
    permuted_start: P w_0, the start endpoint with the permutation applied
      that gave the end endpoint (see `permute_start`); adds the
      `to_permuted_start` and `reordered` metrics.
    layers: layer order, as in `layer_groups`.
    references: further reference pytrees for `curve_grams`.

  Returns:
    A `Distances`.
  """
  ts = default_ts() if ts is None else check_ts(ts)
  references = dict(references or {})
  if permuted_start is not None:
    references[PERMUTED_START] = permuted_start
  grams = grams_lib.curve_grams(curve, references=references, layers=layers)
  return distances_from_grams(grams, ts)
