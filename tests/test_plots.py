"""Tests for the per-layer GIF, the heatmap and the loss-along-t plot."""

import imageio.v3 as iio
from matplotlib import colors
import numpy as np
import pytest

from mcjax import analysis
from mcjax import plots
from mcjax.plots import layers as layers_plots

NUM_TS = 7


def _distances():
  ts = np.linspace(0.0, 1.0, NUM_TS)
  bump = np.sin(np.pi * ts)[:, None]
  deviation = bump * np.array([[0.1, 1.0, 0.3, 0.5]])
  deviation[:, -1] = np.sqrt((deviation[:, :-1] ** 2).sum(axis=1))
  to_start = ts[:, None] * np.array([[1.0, 2.0, 0.5, 2.3]])
  return analysis.Distances(
      ts=ts, layers=("conv0", "conv1", "fc1", "all"),
      param_counts=np.array([10, 20, 5, 35]),
      metrics={"deviation": deviation, "to_start": to_start},
      start_norm=np.ones(4), end_norm=np.ones(4), kind="bezier", num_bends=3)


def _has_color(frame, hex_color, tolerance=12):
  rgb = np.array(colors.to_rgb(hex_color)) * 255
  close = np.all(np.abs(frame[..., :3].astype(float) - rgb) <= tolerance,
                 axis=-1)
  return int(close.sum())


def test_gif_has_one_frame_per_t(tmp_path):
  path = str(tmp_path / "bars.gif")
  plots.save_layer_animation(path, _distances(), progress=False)
  frames = list(iio.imiter(path))
  assert len(frames) == NUM_TS
  assert len({frame.shape for frame in frames}) == 1
  assert frames[0].shape[:2] == (360, 800)


def test_gif_frames_change_with_t(tmp_path):
  path = str(tmp_path / "bars.gif")
  plots.save_layer_animation(path, _distances(), progress=False)
  frames = list(iio.imiter(path))
  assert not np.array_equal(frames[0], frames[NUM_TS // 2])


def test_frames_highlight_swapped_layers():
  plain = layers_plots.layer_frames(_distances(), progress=False)
  marked = layers_plots.layer_frames(_distances(), highlight=["conv1"],
                                     progress=False)
  middle = NUM_TS // 2
  assert _has_color(plain[middle], layers_plots.HIGHLIGHT_COLOR) == 0
  assert _has_color(marked[middle], layers_plots.HIGHLIGHT_COLOR) > 100


def test_frames_share_vertical_scale():
  frames = layers_plots.layer_frames(_distances(), progress=False)
  bar_pixels = [_has_color(frame, layers_plots.BAR_COLOR) for frame in frames]
  # Bars grow with sin(pi t) on a fixed axis, so the coloured area peaks in
  # the middle frame and matches between t and 1 - t.
  assert bar_pixels[0] < bar_pixels[1] < bar_pixels[NUM_TS // 2]
  assert bar_pixels[1] == pytest.approx(bar_pixels[-2], rel=0.02)


def test_frames_metric_is_selectable():
  deviation = layers_plots.layer_frames(_distances(), "deviation",
                                        progress=False)
  to_start = layers_plots.layer_frames(_distances(), "to_start",
                                       progress=False)
  assert not np.array_equal(deviation[-1], to_start[-1])


def test_frames_unknown_metric_raises():
  with pytest.raises(ValueError, match="to_end"):
    layers_plots.layer_frames(_distances(), "to_end", progress=False)


def test_frames_unknown_highlight_raises():
  with pytest.raises(ValueError, match="conv9"):
    layers_plots.layer_frames(_distances(), highlight=["conv9"],
                              progress=False)


def test_heatmap_written(tmp_path):
  path = str(tmp_path / "heatmap.png")
  plots.save_heatmap(path, _distances(), "to_start", highlight=["fc1"],
                     figsize=(6.0, 4.0), dpi=50)
  image = iio.imread(path)
  assert image.shape[:2] == (200, 300)
  assert image[..., :3].std() > 10
  assert list(tmp_path.iterdir()) == [tmp_path / "heatmap.png"]


def _series():
  ts = np.linspace(0.0, 1.0, 9)
  return {"curve": {"ts": ts, "train_loss": 0.1 + 0.05 * np.sin(np.pi * ts),
                    "test_error": 0.08 + 0.01 * np.sin(np.pi * ts)},
          "line": {"ts": ts, "train_loss": 0.1 + 2.0 * np.sin(np.pi * ts),
                   "test_error": 0.08 + 0.8 * np.sin(np.pi * ts)}}


def test_loss_plot_written(tmp_path):
  path = str(tmp_path / "loss.png")
  plots.save_loss_along_t(path, _series(), figsize=(8.0, 3.0), dpi=50)
  image = iio.imread(path)
  assert image.shape[:2] == (150, 400)
  assert _has_color(image, "#4c72b0") > 20
  assert _has_color(image, "#888888") > 20


def test_loss_plot_missing_array_raises(tmp_path):
  series = _series()
  del series["line"]["test_error"]
  with pytest.raises(ValueError, match="test_error"):
    plots.save_loss_along_t(str(tmp_path / "loss.png"), series)


def test_loss_plot_length_mismatch_raises(tmp_path):
  series = _series()
  series["curve"]["train_loss"] = series["curve"]["train_loss"][:-1]
  with pytest.raises(ValueError, match="one length"):
    plots.save_loss_along_t(str(tmp_path / "loss.png"), series)
