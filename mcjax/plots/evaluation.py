"""Train loss and test error along t, for the curve and the straight line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from mcjax import files

PATHS = ("curve", "line")
QUANTITIES = ("train_loss", "test_error")
STYLES = {"curve": {"color": "#4c72b0", "linestyle": "-", "label": "curve"},
          "line": {"color": "#888888", "linestyle": "--",
                   "label": "straight line"}}
TITLES = {"train_loss": "train loss", "test_error": "test error"}


def _check_series(series: Mapping[str, Mapping[str, Any]]) -> dict:
  """Returns {path: {name: float64 array}}, raising for missing or bad data."""
  if "curve" not in series:
    raise ValueError(f"series needs a 'curve' entry (and optionally 'line'); "
                     f"got {sorted(series)}.")
  checked = {}
  for path in PATHS:
    if path not in series:
      continue
    entry = series[path]
    missing = [key for key in ("ts",) + QUANTITIES if key not in entry]
    if missing:
      raise ValueError(f"series[{path!r}] is missing {missing}; expected "
                       f"arrays ts, train_loss and test_error.")
    arrays = {key: np.asarray(entry[key], np.float64)
              for key in ("ts",) + QUANTITIES}
    lengths = {key: value.shape for key, value in arrays.items()}
    if len({shape for shape in lengths.values()}) != 1 or arrays["ts"].ndim != 1:
      raise ValueError(f"series[{path!r}] arrays must be 1-D of one length; "
                       f"got shapes {lengths}.")
    checked[path] = arrays
  return checked


def save_loss_along_t(path: str, series: Mapping[str, Mapping[str, Any]],
                      figsize: tuple[float, float] = (10.0, 4.0),
                      dpi: int = 100) -> str:
  """Writes a PNG of train loss and test error along t, curve against line.

  Args:
    path: the output file; written under a temporary name, then renamed.
    series: {"curve": {"ts", "train_loss", "test_error"}, "line": {...}},
      each a 1-D array of one length; "line" is optional. The test error is
      drawn as given (a fraction or a percentage).
    figsize: figure size in inches.
    dpi: dots per inch.

  Returns:
    `path`.
  """
  checked = _check_series(series)
  figure = Figure(figsize=figsize, dpi=dpi)
  FigureCanvasAgg(figure)
  for column, quantity in enumerate(QUANTITIES):
    axes = figure.add_subplot(1, len(QUANTITIES), column + 1)
    for name, arrays in checked.items():
      axes.plot(arrays["ts"], arrays[quantity], marker=".", markersize=3,
                **STYLES[name])
    axes.set_xlabel("t")
    axes.set_title(TITLES[quantity])
    axes.grid(alpha=0.3)
    axes.legend()
  figure.tight_layout()

  def write(file):
    figure.savefig(file, format="png")

  files.atomic_write(path, write)
  logging.info("Wrote the loss and error plot to %s.", path)
  return path
