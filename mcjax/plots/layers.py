"""Per-layer pictures of a distance metric along a curve: a GIF and a heatmap.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so the
library never changes the caller's backend or global figure state.
"""

from __future__ import annotations

from collections.abc import Sequence
import io

from absl import logging
import imageio.v3 as iio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import tqdm

from mcjax.analysis import distances as distances_lib
from mcjax import files

BAR_COLOR = "#4c72b0"
HIGHLIGHT_COLOR = "#dd4444"


def _select(distances: distances_lib.Distances, metric: str,
            include_all: bool) -> tuple[list[str], np.ndarray]:
  """Returns the layer names and the (T, layers) values to draw."""
  values = distances.metric(metric)
  names = list(distances.layers)
  if not include_all:
    names, values = names[:-1], values[:, :-1]
  return names, values


def _check_highlight(names: Sequence[str], highlight: Sequence[str]) -> None:
  unknown = [name for name in highlight if name not in names]
  if unknown:
    raise ValueError(f"Highlighted layers {unknown} are not drawn; the layers "
                     f"are {list(names)}.")


def _label(metric: str) -> str:
  formula = distances_lib.METRICS.get(metric)
  return f"{metric}: {formula}" if formula else metric


def _render(figure: Figure) -> np.ndarray:
  canvas = figure.canvas
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def layer_frames(distances: distances_lib.Distances, metric: str = "deviation",
                 highlight: Sequence[str] = (), include_all: bool = False,
                 figsize: tuple[float, float] = (10.0, 4.5),
                 dpi: int = 80, progress: bool = True) -> np.ndarray:
  """Draws one bar chart of `metric` over the layers per t.

  Every frame shares the vertical scale (0 to 1.05 times the largest value
  over all t and layers) and the figure size, so frames compare directly.

  Args:
    distances: per-layer distances along a curve.
    metric: a metric name from `analysis.METRICS`.
    highlight: layers drawn in the highlight colour, e.g. the swapped layer
      and its consumer.
    include_all: also draw the whole-network column "all"; off by default
      because it dwarfs single layers.
    figsize: figure size in inches.
    dpi: dots per inch; frames are figsize * dpi pixels.
    progress: show a tqdm progress bar over frames.

  Returns:
    uint8 (T, height, width, 3) RGB frames.
  """
  names, values = _select(distances, metric, include_all)
  _check_highlight(names, highlight)
  finite = values[np.isfinite(values)]
  top = float(finite.max()) if finite.size else 1.0
  top = 1.05 * top if top > 0 else 1.0

  figure = Figure(figsize=figsize, dpi=dpi)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  colors = [HIGHLIGHT_COLOR if name in highlight else BAR_COLOR
            for name in names]
  bars = axes.bar(np.arange(len(names)), np.nan_to_num(values[0]),
                  color=colors)
  axes.set_xticks(np.arange(len(names)), names, rotation=60, ha="right",
                  fontsize=8)
  for tick, name in zip(axes.get_xticklabels(), names):
    if name in highlight:
      tick.set_color(HIGHLIGHT_COLOR)
      tick.set_fontweight("bold")
  axes.set_ylim(0.0, top)
  axes.set_ylabel(metric)
  axes.set_title(_label(metric), fontsize=10)
  stamp = axes.text(0.99, 0.95, "", transform=axes.transAxes, ha="right",
                    va="top", fontsize=12, family="monospace")
  figure.subplots_adjust(bottom=0.3, top=0.9, left=0.08, right=0.98)

  frames = []
  rows = tqdm.tqdm(range(len(distances.ts)), desc=f"frames ({metric})",
                   unit="frame", disable=not progress)
  for row in rows:
    for bar, value in zip(bars, np.nan_to_num(values[row])):
      bar.set_height(value)
    stamp.set_text(f"t = {distances.ts[row]:.3f}")
    frames.append(_render(figure))
  return np.stack(frames)


def save_layer_animation(path: str, distances: distances_lib.Distances,
                         metric: str = "deviation",
                         highlight: Sequence[str] = (),
                         include_all: bool = False,
                         frame_duration_ms: int = 120,
                         progress: bool = True, **figure_options) -> str:
  """Writes an animated GIF of per-layer bars of `metric`, one frame per t.

  Args:
    path: the output file; written under a temporary name, then renamed.
    distances, metric, highlight, include_all, progress: see `layer_frames`.
    frame_duration_ms: display time of each frame in milliseconds.
    **figure_options: `figsize` and `dpi` for `layer_frames`.

  Returns:
    `path`.
  """
  frames = layer_frames(distances, metric, highlight, include_all,
                        progress=progress, **figure_options)
  data = iio.imwrite("<bytes>", frames, extension=".gif",
                     duration=frame_duration_ms, loop=0)
  files.atomic_write(path, lambda file: file.write(data))
  logging.info("Wrote %d frames of %s to %s.", len(frames), metric, path)
  return path


def save_heatmap(path: str, distances: distances_lib.Distances,
                 metric: str = "deviation", highlight: Sequence[str] = (),
                 include_all: bool = False,
                 figsize: tuple[float, float] = (9.0, 6.0),
                 dpi: int = 100) -> str:
  """Writes a PNG heatmap of `metric` with layers as rows and t as columns.

  Args:
    path: the output file; written under a temporary name, then renamed.
    distances: per-layer distances along a curve.
    metric: a metric name from `analysis.METRICS`.
    highlight: layers whose row labels are drawn in the highlight colour.
    include_all: also draw the whole-network row "all".
    figsize: figure size in inches.
    dpi: dots per inch.

  Returns:
    `path`.
  """
  names, values = _select(distances, metric, include_all)
  _check_highlight(names, highlight)
  ts = distances.ts

  figure = Figure(figsize=figsize, dpi=dpi)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  # Cell edges halfway between the t values, so each column is centred on t.
  if len(ts) > 1:
    middle = (ts[1:] + ts[:-1]) / 2
    edges = np.concatenate([[2 * ts[0] - middle[0]], middle,
                            [2 * ts[-1] - middle[-1]]])
  else:
    edges = np.array([ts[0] - 0.5, ts[0] + 0.5])
  mesh = axes.pcolormesh(edges, np.arange(len(names) + 1) - 0.5, values.T,
                         cmap="viridis", shading="flat")
  axes.set_yticks(np.arange(len(names)), names, fontsize=8)
  axes.invert_yaxis()
  for tick, name in zip(axes.get_yticklabels(), names):
    if name in highlight:
      tick.set_color(HIGHLIGHT_COLOR)
      tick.set_fontweight("bold")
  axes.set_xlabel("t")
  axes.set_title(_label(metric), fontsize=10)
  figure.colorbar(mesh, ax=axes, label=metric)
  figure.tight_layout()

  def write(file):
    figure.savefig(file, format="png")

  files.atomic_write(path, write)
  logging.info("Wrote the %s heatmap to %s.", metric, path)
  return path

