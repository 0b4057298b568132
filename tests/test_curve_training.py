"""Tests for curve training: fixed endpoints, regulariser, a better path."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import curves
from mcjax import data
from mcjax import models
from mcjax import training

import training_helpers

NUM_TRAIN = 256
NUM_TEST = 200
BATCH_SIZE = 16
MODEL = models.VGG16(width=0.125, batch_norm=True, dropout_rate=0.0)
WEIGHT_DECAY = 5e-4
TS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _config(**overrides):
  values = dict(epochs=4, batch_size=BATCH_SIZE, eval_batch_size=NUM_TEST,
                weight_decay=WEIGHT_DECAY)
  return training_helpers.train_config(**{**values, **overrides})


def _curve_config(**overrides):
  values = dict(num_bends=3, kind="bezier", regularization="reg",
                t_per_batch=1)
  values.update(overrides)
  return _config(**values)


@pytest.fixture(scope="module")
def dataset():
  return training_helpers.fashion_mnist_subset(NUM_TRAIN, NUM_TEST)


@pytest.fixture(scope="module")
def endpoints(dataset, tmp_path_factory):
  return [training.train_endpoint(
      MODEL, dataset, _config(), str(tmp_path_factory.mktemp(f"end{seed}")),
      seed=seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def trained_curve(dataset, endpoints, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("curve"))
  curve = training.train_curve(MODEL, dataset, _curve_config(), workdir,
                               endpoints[0], endpoints[1], seed=0)
  return curve, workdir


@functools.partial(jax.jit, static_argnames=("mean", "std"))
def _recomputed_batch_stats(params, template, images, mean, std):
  """Returns batch-norm statistics of `params` over all of `images` at once.

  Flax's BatchNorm stores momentum * old + (1 - momentum) * batch statistic,
  with momentum 0.9 in VGG. Starting from zeros, dividing by 0.1 leaves the
  batch statistic itself.
  """
  zeros = jax.tree.map(jnp.zeros_like, template)
  _, updates = MODEL.apply(
      {"params": params, "batch_stats": zeros},
      data.normalize(images, mean, std), train=True,
      rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
  return jax.tree.map(lambda stat: stat / 0.1, updates["batch_stats"])


def _worst_test_error(points, template, dataset):
  errors = []
  for params in points:
    batch_stats = _recomputed_batch_stats(
        params, template, dataset.train.images, mean=dataset.mean,
        std=dataset.std)
    metrics = training.evaluate(
        MODEL, {"params": params, "batch_stats": batch_stats}, dataset.test,
        mean=dataset.mean, std=dataset.std)
    errors.append(metrics["error"])
  return max(errors)


def test_endpoints_bit_identical(trained_curve, endpoints):
  curve, _ = trained_curve
  start, end = curves.endpoints(curve)
  for got, expected in ((start, endpoints[0]["params"]),
                        (end, endpoints[1]["params"])):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)


def test_middle_bend_trained(trained_curve, endpoints):
  curve, _ = trained_curve
  middle = jax.tree.map(lambda leaf: leaf[1], curve.bends)
  midpoint = jax.tree.map(lambda a, b: 0.5 * (a + b), endpoints[0]["params"],
                          endpoints[1]["params"])
  moved = [float(jnp.max(jnp.abs(a - b)))
           for a, b in zip(jax.tree.leaves(middle), jax.tree.leaves(midpoint))]
  assert max(moved) > 1e-3


def test_curve_beats_straight_line(trained_curve, endpoints, dataset):
  curve, _ = trained_curve
  template = endpoints[0]["batch_stats"]
  point = jax.jit(curves.point)
  curve_points = [point(curve, t) for t in TS]
  line_points = [curves.linear_point(endpoints[0]["params"],
                                     endpoints[1]["params"], t) for t in TS]
  curve_worst = _worst_test_error(curve_points, template, dataset)
  line_worst = _worst_test_error(line_points, template, dataset)
  assert curve_worst < line_worst


def test_batch_norm_curve_has_no_test_metrics(trained_curve):
  _, workdir = trained_curve
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
  assert all(line["test_error"] is None for line in lines)
  # "reg" adds 0.5 * wd * ||theta(t)||^2 > 0 to the reported loss.
  assert all(line["train_loss"] > line["train_nll"] for line in lines)


def test_finished_curve_not_retrained(trained_curve, dataset, endpoints):
  curve, workdir = trained_curve
  again = training.train_curve(MODEL, dataset, _curve_config(), workdir,
                               endpoints[0], endpoints[1], seed=0)
  assert again.kind == curve.kind
  for a, b in zip(jax.tree.leaves(again.bends), jax.tree.leaves(curve.bends)):
    np.testing.assert_array_equal(a, b)


def test_regularizer_matches_direct(endpoints):
  params = endpoints[0]["params"]
  direct = 0.5 * WEIGHT_DECAY * sum(
      np.sum(np.asarray(leaf, np.float64) ** 2)
      for leaf in jax.tree.leaves(params))
  got = float(training.l2_regularizer(params, WEIGHT_DECAY))
  assert got == pytest.approx(direct, rel=1e-5)


def test_evaluate_loss_adds_regularizer(endpoints, dataset):
  variables = endpoints[0]
  direct = 0.5 * WEIGHT_DECAY * sum(
      np.sum(np.asarray(leaf, np.float64) ** 2)
      for leaf in jax.tree.leaves(variables["params"]))
  metrics = training.evaluate(MODEL, variables, dataset.test,
                              mean=dataset.mean, std=dataset.std,
                              weight_decay=WEIGHT_DECAY)
  assert metrics["loss"] - metrics["nll"] == pytest.approx(direct, rel=1e-5)


def test_curve_config_two_bends_rejected(dataset, endpoints, tmp_path):
  with pytest.raises(ValueError, match="num_bends"):
    training.train_curve(MODEL, dataset, _curve_config(num_bends=2),
                         str(tmp_path), endpoints[0], endpoints[1])


def test_several_t_per_batch_keeps_endpoints(dataset, endpoints, tmp_path):
  # Two t per batch go through the vmapped loss; a polygonal chain without
  # the regulariser covers the other kind and mode.
  config = _curve_config(epochs=1, t_per_batch=2, kind="polychain",
                         regularization="noreg")
  curve = training.train_curve(MODEL, dataset, config, str(tmp_path),
                               endpoints[0], endpoints[1], seed=0)
  assert curve.kind == "polychain"
  start, end = curves.endpoints(curve)
  for got, expected in ((start, endpoints[0]["params"]),
                        (end, endpoints[1]["params"])):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)
  middle = jax.tree.map(lambda leaf: leaf[1], curve.bends)
  midpoint = jax.tree.map(lambda a, b: 0.5 * (a + b), endpoints[0]["params"],
                          endpoints[1]["params"])
  moved = [float(jnp.max(jnp.abs(a - b)))
           for a, b in zip(jax.tree.leaves(middle), jax.tree.leaves(midpoint))]
  assert max(moved) > 1e-4
