"""Benchmark: 61 curve points evaluated several per pass vs one per pass.

Both methods evaluate the same VGG16 curve on the same Fashion-MNIST images
in one process, side by side: `evaluate_curve` with `points_per_pass` points
per pass, against 61 separate single-point evaluations (one pass per point,
`points_per_pass=1`). Each method runs once to compile and is then timed.

  PYTHONPATH=. python3 benchmarks/eval_curve.py --widths=0.125 \
      --num_train=512 --num_test=512 --points_per_pass=61

Prints one JSON line per (width, method) and a Markdown table.
"""

from __future__ import annotations

import json
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mcjax import curves
from mcjax import evaluation
from mcjax import models
from mcjax.data import core
from mcjax.data import fashion_mnist
from mcjax.data import transforms

FLAGS = flags.FLAGS
flags.DEFINE_list("widths", ["0.125"], "VGG16 width multipliers to measure.")
flags.DEFINE_integer("num_points", 61, "Points along the curve.")
flags.DEFINE_integer("num_train", 512, "Training images evaluated.")
flags.DEFINE_integer("num_test", 512, "Test images evaluated.")
flags.DEFINE_integer("batch_size", 128, "Examples per batch.")
flags.DEFINE_integer("points_per_pass", None,
                     "Points per pass for the several-per-pass method "
                     "(default: chosen from the memory budget).")
flags.DEFINE_integer("vmap_points", None,
                     "Points per vmapped model call (default: the backend's).")


def _dataset(num_train: int, num_test: int) -> core.Dataset:
  train = fashion_mnist.read_split(fashion_mnist.DEFAULT_DIR, "train")
  test = fashion_mnist.read_split(fashion_mnist.DEFAULT_DIR, "test")
  return core.Dataset(
      name="fashion_mnist",
      train=core.to_split(train[0][:num_train], train[1][:num_train]),
      test=core.to_split(test[0][:num_test], test[1][:num_test]),
      num_classes=10, mean=transforms.FASHION_MNIST_MEAN,
      std=transforms.FASHION_MNIST_STD)


def _curve(model) -> curves.Curve:
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 1))))
  params_0 = init(jax.random.key(0))["params"]
  params_1 = init(jax.random.key(1))["params"]
  return jax.jit(curves.bezier, static_argnames="num_bends")(
      params_0, params_1, num_bends=3)


def _timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def main(argv):
  del argv
  dataset = _dataset(FLAGS.num_train, FLAGS.num_test)
  rows = []
  for width in [float(w) for w in FLAGS.widths]:
    model = models.VGG16(width=width)
    curve = _curve(model)
    common = dict(num_points=FLAGS.num_points, batch_size=FLAGS.batch_size,
                  vmap_points=FLAGS.vmap_points, progress=False)
    methods = {
        "several per pass": dict(points_per_pass=FLAGS.points_per_pass),
        "one per pass": dict(points_per_pass=1),
    }
    results = {}
    for name, options in methods.items():
      evaluate = lambda: evaluation.evaluate_curve(  # pylint: disable=cell-var-from-loop
          model, dataset, curve, **common, **options)
      _, compile_seconds = _timed(evaluate)
      result, seconds = _timed(evaluate)
      results[name] = result
      row = {"width": width, "method": name, "seconds": seconds,
             "first_call_seconds": compile_seconds,
             "points_per_pass": options["points_per_pass"],
             "num_points": FLAGS.num_points, "num_train": FLAGS.num_train,
             "num_test": FLAGS.num_test, "batch_size": FLAGS.batch_size,
             "backend": jax.default_backend()}
      print(json.dumps(row), flush=True)
      rows.append(row)
    difference = max(
        float(np.max(np.abs(results["several per pass"].series[key]
                            - results["one per pass"].series[key])))
        for key in ("train_nll", "test_nll"))
    print(json.dumps({"width": width, "max_nll_difference": difference}))

  print(f"\nmachine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} {jax.default_backend()} device(s)\n")
  print("| width | method | points per pass | seconds | first call (s) |")
  print("|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['width']} | {row['method']} | {row['points_per_pass']} | "
          f"{row['seconds']:.2f} | {row['first_call_seconds']:.2f} |")


if __name__ == "__main__":
  app.run(main)
