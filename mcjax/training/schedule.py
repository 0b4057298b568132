"""The per-epoch learning-rate schedule of dnn-mode-connectivity.

Garipov et al. (github.com/timgaripov/dnn-mode-connectivity, train.py,
`learning_rate_schedule`) count epochs from 1 and set, with
alpha = epoch / epochs,

    factor = 1                                   if alpha <= 0.5
    factor = 1 - (alpha - 0.5) / 0.4 * 0.99      if alpha <= 0.9
    factor = 0.01                                otherwise,

so the rate stays at its base value for the first half of training, falls
linearly to 1% at 90% and stays there. The rate is constant within an epoch;
the training loop passes each epoch's rate to the jitted step.
"""

from __future__ import annotations

import numpy as np


def learning_rate_factor(epoch: int, epochs: int) -> float:
  """Returns the schedule factor for a 0-based `epoch` of `epochs`.

  The reference counts epochs from 1, so 0-based epoch e uses
  alpha = (e + 1) / epochs.
  """
  alpha = (epoch + 1) / epochs
  if alpha <= 0.5:
    return 1.0
  if alpha <= 0.9:
    return 1.0 - (alpha - 0.5) / 0.4 * 0.99
  return 0.01


def learning_rates(base_rate: float, epochs: int) -> np.ndarray:
  """Returns the float32 (epochs,) learning rate of every 0-based epoch."""
  return np.asarray(
      [base_rate * learning_rate_factor(e, epochs) for e in range(epochs)],
      np.float32)
