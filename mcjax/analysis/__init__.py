"""Per-layer distances along a curve and the locality of its bend.

Example, all in one call for a curve from theta_0 to its swapped copy:

  result = analysis.analyze_swap(curve, spec, "block2_conv1", [(3, 17)])
  result.save(prefix)          # prefix.npz and prefix.json

or step by step:

  distances = analysis.curve_distances(
      curve, permuted_start=analysis.permute_start(curve, spec, p))
  sides = analysis.unit_deviation(curve, spec.axes, "block2_conv1", [3, 17])
  layers = analysis.touched_layers(spec.axes, "block2_conv1", params)
  summary = analysis.locality_summary(distances, layers, sides)
  analysis.save_analysis(prefix, distances, summary, swap, sides)
"""

from mcjax.analysis.distances import DEFAULT_NUM_POINTS
from mcjax.analysis.distances import Distances
from mcjax.analysis.distances import METRICS
from mcjax.analysis.distances import PERMUTED_START
from mcjax.analysis.distances import curve_distances
from mcjax.analysis.distances import default_ts
from mcjax.analysis.distances import distances_from_grams
from mcjax.analysis.grams import ALL
from mcjax.analysis.grams import CurveGrams
from mcjax.analysis.grams import curve_grams
from mcjax.analysis.grams import layer_groups
from mcjax.analysis.grams import permute_start
from mcjax.analysis.locality import load_distances
from mcjax.analysis.locality import locality_summary
from mcjax.analysis.locality import save_analysis
from mcjax.analysis.swap import SwapAnalysis
from mcjax.analysis.swap import analyze_swap
from mcjax.analysis.units import UnitDeviation
from mcjax.analysis.units import group_axes
from mcjax.analysis.units import touched_layers
from mcjax.analysis.units import unit_deviation
