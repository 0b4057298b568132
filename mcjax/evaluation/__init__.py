"""Loss and error along curves and lines, with barrier and length statistics.

Example:

  result = evaluation.evaluate_curve(model, dataset, curve,
                                     batch_stats=(stats_0, stats_1))
  line = evaluation.evaluate_line(model, dataset, variables_0, variables_1)
  for path in (result, line):
    evaluation.save(path, evaluation.summarize(path), out_dir, path.name)
"""

from mcjax.evaluation.geometry import arc_weights
from mcjax.evaluation.geometry import path_length
from mcjax.evaluation.geometry import speed
from mcjax.evaluation.passes import choose_points_per_pass
from mcjax.evaluation.passes import metric_sums
from mcjax.evaluation.passes import recompute_batch_stats
from mcjax.evaluation.paths import evaluate_curve
from mcjax.evaluation.paths import evaluate_line
from mcjax.evaluation.summary import BARRIER_DEFINITION
from mcjax.evaluation.summary import SERIES
from mcjax.evaluation.summary import PathEvaluation
from mcjax.evaluation.summary import barrier
from mcjax.evaluation.summary import length_weighted_mean
from mcjax.evaluation.summary import load
from mcjax.evaluation.summary import save
from mcjax.evaluation.summary import summarize
