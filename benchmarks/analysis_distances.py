r"""Per-layer distances at 61 t: Grams against materialised points.

Builds a full-width VGG16 (CIFAR-10 shapes, 15,245,130 parameters), its copy
with two units of `block2_conv1` swapped, and a 3-bend Bezier curve between
them whose middle bend is off the straight line. Then computes every metric
of `mcjax.analysis` at 61 evenly spaced t in two ways, each in its own
subprocess so that peak memory is measured separately:

  grams:  analysis.curve_distances (one pass over the bends, then quadratic
          forms).
  points: a loop over t that materialises theta(t) with a jitted
          curves.point and computes the same per-layer metrics with a jitted
          reduction.

Peak memory is the peak resident set size (VmHWM in /proc/self/status) above
the resident size just before the method starts. The peak is reset through
/proc/self/clear_refs first, and it counts NumPy and XLA CPU buffers alike. The curve
itself is resident before the reset, so "peak below two copies of the curve"
means this extra memory is below one copy (num_bends * 4 bytes * params).

Run:
  PYTHONPATH=. python3 benchmarks/analysis_distances.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mcjax import analysis
from mcjax import curves
from mcjax import models
from mcjax import permutations as perm

_METHOD = flags.DEFINE_enum("method", None, ["grams", "points"],
                            "Run one method in this process and print JSON.")
_NUM_POINTS = flags.DEFINE_integer("num_points", 61, "Number of t values.")
_REPEATS = flags.DEFINE_integer("repeats", 3,
                                "Timed repeats of the Gram method.")
_WIDTH = flags.DEFINE_float("width", 1.0, "VGG16 width multiplier.")
_SERIES_DIR = flags.DEFINE_string(
    "series_dir", None, "Folder where a child process saves its metrics for "
    "the comparison; the parent passes a temporary folder.")

SWAP_LAYER = "block2_conv1"
SWAP_PAIR = (3, 17)
COMPARED = ("to_start", "to_end", "deviation", "norm_change_start",
            "norm_change_end", "to_permuted_start")


def _rss_kib(field: str) -> int:
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"{field} not found in /proc/self/status.")


def _reset_peak() -> None:
  # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
  with open("/proc/self/clear_refs", "w") as file:
    file.write("5")


def _build_curve():
  """Returns (curve, permuted start, spec) for a swapped VGG16."""
  model = models.VGG16(width=_WIDTH.value)
  images = jnp.zeros((1, 32, 32, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.default_rng(0)
  params_0 = jax.tree.map(
      lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
      shapes["params"])
  spec = perm.infer_spec(model, shapes, images)
  p = perm.swap(spec, SWAP_LAYER, pairs=[SWAP_PAIR])
  params_1 = perm.apply(spec, p, {"params": params_0})["params"]
  bends = jax.tree.map(
      lambda a, b: jnp.stack([
          a, 0.5 * (a + b)
          + (0.01 * rng.standard_normal(a.shape)).astype(np.float32), b]),
      params_0, params_1)
  curve = curves.Curve(bends=jax.block_until_ready(bends), kind="bezier")
  return curve, params_1, spec


def _run_grams(curve, permuted, ts):
  times = []
  for _ in range(_REPEATS.value):
    begin = time.perf_counter()
    distances = analysis.curve_distances(curve, ts, permuted_start=permuted)
    times.append(time.perf_counter() - begin)
  return distances, times


@jax.jit
def _point_metrics(theta, start, end, permuted, t):
  """Per-layer squared distances and squared norms at one materialised t."""
  line = jax.tree.map(lambda a, b: (1.0 - t) * a + t * b, start, end)

  def per_layer(fn, *trees):
    values = jax.tree.map(fn, *trees)
    return {layer: sum(jax.tree.leaves(tree)) for layer, tree in values.items()}

  def square(a, b):
    return jnp.sum((a - b) ** 2)

  return {"to_start": per_layer(square, theta, start),
          "to_end": per_layer(square, theta, end),
          "deviation": per_layer(square, theta, line),
          "to_permuted_start": per_layer(square, theta, permuted),
          "theta": per_layer(lambda a: jnp.sum(a * a), theta),
          "start": per_layer(lambda a: jnp.sum(a * a), start),
          "end": per_layer(lambda a: jnp.sum(a * a), end)}


def _run_points(curve, permuted, ts, layers):
  point = jax.jit(curves.point)
  start, end = curves.endpoints(curve)
  rows = {name: [] for name in COMPARED}
  begin = time.perf_counter()
  for t in ts:
    theta = point(curve, jnp.float32(t))
    squares = jax.device_get(_point_metrics(theta, start, end, permuted,
                                            jnp.float32(t)))
    columns = {name: np.array([squares[name][layer] for layer in layers])
               for name in squares}
    columns = {name: np.append(value, value.sum())
               for name, value in columns.items()}
    for name in ("to_start", "to_end", "deviation", "to_permuted_start"):
      rows[name].append(np.sqrt(columns[name]))
    theta_norm = np.sqrt(columns["theta"])
    rows["norm_change_start"].append(
        np.abs(theta_norm - np.sqrt(columns["start"])))
    rows["norm_change_end"].append(
        np.abs(theta_norm - np.sqrt(columns["end"])))
  elapsed = time.perf_counter() - begin
  return {name: np.asarray(value) for name, value in rows.items()}, elapsed


def _child() -> None:
  curve, permuted, _ = _build_curve()
  ts = np.linspace(0.0, 1.0, _NUM_POINTS.value)
  layers = list(analysis.layer_groups(curve.bends))
  curve_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(curve.bends))
  num_params = sum(leaf[0].size for leaf in jax.tree.leaves(curve.bends))

  # Warm-up outside the measured window: XLA compiles for the points loop,
  # imports and the coefficient jit for the Grams.
  if _METHOD.value == "points":
    _run_points(curve, permuted, ts[:2], layers)
  else:
    analysis.curve_distances(curves.Curve(
        bends=jax.tree.map(lambda b: b[:, :1], curve.bends), kind="bezier"),
                             ts)

  before = _rss_kib("VmRSS")
  _reset_peak()
  traced_mib = None
  if _METHOD.value == "grams":
    distances, times = _run_grams(curve, permuted, ts)
    series = {name: distances.metric(name) for name in COMPARED}
    seconds = min(times)
  else:
    series, seconds = _run_points(curve, permuted, ts, layers)
    times = [seconds]
  peak = _rss_kib("VmHWM")
  if _METHOD.value == "grams":
    # RSS misses memory that the allocator reuses from earlier frees, so
    # also count the NumPy allocations of one more run with tracemalloc.
    tracemalloc.start()
    analysis.curve_distances(curve, ts, permuted_start=permuted)
    traced_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
  np.savez(os.path.join(_SERIES_DIR.value, f"{_METHOD.value}.npz"), **series)
  print(json.dumps({"method": _METHOD.value, "seconds": seconds,
                    "times": times, "extra_peak_mib": (peak - before) / 1024,
                    "traced_peak_mib": traced_mib,
                    "curve_mib": curve_bytes / 2**20,
                    "num_params": int(num_params)}))


def _spawn(method: str, series_dir: str) -> dict:
  command = [sys.executable, __file__, f"--method={method}",
             f"--series_dir={series_dir}",
             f"--num_points={_NUM_POINTS.value}",
             f"--repeats={_REPEATS.value}", f"--width={_WIDTH.value}"]
  result = subprocess.run(command, capture_output=True, text=True,
                          env=dict(os.environ), check=False)
  if result.returncode:
    raise RuntimeError(f"The {method} run failed with exit status "
                       f"{result.returncode}:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _METHOD.value is not None:
    _child()
    return

  with tempfile.TemporaryDirectory() as series_dir:
    grams = _spawn("grams", series_dir)
    points = _spawn("points", series_dir)
    from_grams = dict(np.load(os.path.join(series_dir, "grams.npz")))
    from_points = dict(np.load(os.path.join(series_dir, "points.npz")))
  worst = {}
  for name in COMPARED:
    reference = from_points[name]
    scale = np.abs(reference).max()
    worst[name] = float(np.abs(from_grams[name] - reference).max() / scale)
  print(f"VGG16 width {_WIDTH.value}: {grams['num_params']:,} parameters, "
        f"3 bends, curve {grams['curve_mib']:.1f} MiB, "
        f"{_NUM_POINTS.value} t")
  print(f"grams : {grams['seconds']:.2f} s (min of {grams['times']}), "
        f"extra peak RSS {grams['extra_peak_mib']:.1f} MiB, tracemalloc peak "
        f"{grams['traced_peak_mib']:.1f} MiB")
  print(f"points: {points['seconds']:.2f} s, extra peak RSS "
        f"{points['extra_peak_mib']:.1f} MiB")
  print(f"speedup {points['seconds'] / grams['seconds']:.1f}x; grams extra "
        f"peak = {grams['extra_peak_mib'] / grams['curve_mib']:.2f} curve "
        f"copies")
  print("max |grams - points| / max |points| per metric: "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


if __name__ == "__main__":
  app.run(main)
