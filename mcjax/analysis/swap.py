"""The whole analysis of a curve between a network and its neuron-swapped copy."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

from absl import logging

from mcjax import curves
from mcjax.analysis import distances as distances_lib
from mcjax.analysis import grams
from mcjax.analysis import locality
from mcjax.analysis import units as units_lib


@dataclasses.dataclass(frozen=True)
class SwapAnalysis:
  """The results of `analyze_swap`.

  Attributes:
    distances: per-layer distances, with the permutation metrics.
    units: per-unit deviations by side ("output", "input").
    summary: the locality summary (`locality.locality_summary`).
    swap: JSON-ready swap metadata: layer, pairs, units, consumer and the
      touched layers.
  """

  distances: distances_lib.Distances
  units: dict[str, units_lib.UnitDeviation]
  summary: dict[str, Any]
  swap: dict[str, Any]

  def save(self, prefix: str) -> tuple[str, str]:
    """Writes `prefix`.npz and `prefix`.json; see `locality.save_analysis`."""
    return locality.save_analysis(prefix, self.distances, self.summary,
                                  self.swap, self.units)


def analyze_swap(curve: curves.Curve, spec, layer: str,
                 pairs: Sequence[Sequence[int]], ts=None,
                 top_k: int = 5) -> SwapAnalysis:
  """Measures where a curve between theta_0 and its swapped copy bends.

  The curve's end endpoint should be P theta_0 with P = `perm.swap(spec,
  layer, pairs=pairs)`. The distances to P theta_0 are computed from the
  start endpoint and P, so a mismatch shows as a nonzero `reordered` at t = 1.

  Args:
    curve: a `curves.Curve` over a params pytree.
    spec: the model's `mcjax.permutations.PermutationSpec`.
    layer: the swapped layer (a group name or a depth preset such as "mid").
    pairs: the swapped (i, j) unit pairs.
    ts: (T,) t values; default 61 evenly spaced in [0, 1].
    top_k: how many layers the summary lists by deviation.

  Returns:
    A `SwapAnalysis`.
  """
  from mcjax import permutations as perm  # pylint: disable=g-import-not-at-top
  layer = perm.resolve_layer(spec, layer)
  pairs = [[int(u) for u in pair] for pair in pairs]
  permutation = perm.swap(spec, layer, pairs=[tuple(pair) for pair in pairs])
  ts = distances_lib.default_ts() if ts is None else distances_lib.check_ts(ts)

  start = grams.endpoint_shapes(curve)
  distances = distances_lib.curve_distances(
      curve, ts, permuted_start=grams.permute_start(curve, spec, permutation))
  swapped_units = [unit for pair in pairs for unit in pair]
  sides = units_lib.unit_deviation(curve, spec, layer, swapped_units, ts)
  touched = units_lib.touched_layers(spec, layer, start)
  summary = locality.locality_summary(distances, touched, sides, top_k)
  swap = {"layer": layer, "pairs": pairs, "units": swapped_units,
          "consumer": spec.consumers.get(layer),
          "touched_layers": touched}
  logging.info("Swap in %s: %.3f of the squared deviation is in %s.", layer,
               summary["share_integrated"] or float("nan"), touched)
  return SwapAnalysis(distances=distances, units=sides, summary=summary,
                      swap=swap)
