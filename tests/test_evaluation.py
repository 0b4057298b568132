"""Tests for evaluation along curves and lines."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from mcjax import curves
from mcjax import evaluation
from mcjax import models
from mcjax import pytrees
from mcjax.data import core
from mcjax.data import fashion_mnist
from mcjax.data import transforms
from mcjax.evaluation import passes

NUM_TRAIN = 250  # not a multiple of BATCH, so the last batch is partial
NUM_TEST = 200
BATCH = 64
MODEL = models.VGG16(width=1 / 8)
BN_MODEL = models.VGG16(width=1 / 8, batch_norm=True)


class TinyBN(nn.Module):
  """Conv-BatchNorm-ReLU-mean-Dense: the BatchNorm input is a conv output."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(10, name="dense")(x)


@pytest.fixture(scope="module")
def dataset():
  if not os.path.isdir(fashion_mnist.DEFAULT_DIR):
    pytest.skip(f"Fashion-MNIST not found in {fashion_mnist.DEFAULT_DIR}")
  train = fashion_mnist.read_split(fashion_mnist.DEFAULT_DIR, "train")
  test = fashion_mnist.read_split(fashion_mnist.DEFAULT_DIR, "test")
  return core.Dataset(
      name="fashion_mnist",
      train=core.to_split(train[0][:NUM_TRAIN], train[1][:NUM_TRAIN]),
      test=core.to_split(test[0][:NUM_TEST], test[1][:NUM_TEST]),
      num_classes=10, mean=transforms.FASHION_MNIST_MEAN,
      std=transforms.FASHION_MNIST_STD)


def _random_variables(model, seed):
  """Variables shaped like `model.init`, drawn with NumPy.

  NumPy keeps the tests free of XLA compiles of VGG16's initialisers, which
  cost more CPU time than every evaluation here. Kernels are He-normal on
  their fan-in; batch-norm statistics are random so that an endpoint's own
  statistics differ from recomputed ones.
  """
  shapes = passes.variable_shapes(model, (32, 32, 1))
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = pytrees.path_to_str(path)
    if name.endswith("kernel"):
      fan_in = int(np.prod(shape.shape[:-1]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape.shape)
    elif name.endswith("scale"):
      value = 1.0 + 0.1 * rng.normal(size=shape.shape)
    elif name.endswith("var"):
      value = rng.uniform(0.5, 1.5, shape.shape)
    else:  # biases, BatchNorm biases and running means
      value = 0.1 * rng.normal(size=shape.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _curve(params_0, params_1, seed=2):
  """A 3-bend Bezier curve whose middle bend is off the straight line."""
  rng = np.random.default_rng(seed)

  def stack(w0, w1):
    w0, w1 = np.asarray(w0), np.asarray(w1)
    middle = 0.5 * (w0 + w1) + 0.05 * rng.normal(size=w0.shape)
    return jnp.asarray(np.stack([w0, middle, w1]), jnp.float32)

  return curves.Curve(bends=jax.tree.map(stack, params_0, params_1),
                      kind="bezier")


@functools.lru_cache(maxsize=None)
def _jitted_apply(model):
  return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def _direct_metrics(model, variables, split, mean, std):
  """Returns float64 nll sum, correct count and near-tie count over a split.

  The logits come from one jitted `model.apply` per 50 examples, and the
  log-softmax runs in float64 NumPy. A near tie is an example whose two
  largest logits differ by less than 1e-4, where float32 rounding in a
  differently batched computation may change the argmax.
  """
  apply = _jitted_apply(model)
  x = transforms.normalize(split.images, mean, std)
  logits = np.concatenate([np.asarray(apply(variables, x[i:i + 50]),
                                      np.float64)
                           for i in range(0, len(split), 50)])
  labels = np.asarray(split.labels)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  nll = -log_probs[np.arange(labels.size), labels]
  top_two = np.sort(logits, axis=1)[:, -2:]
  near_ties = int(np.sum(top_two[:, 1] - top_two[:, 0] < 1e-4))
  return nll.sum(), int(np.sum(logits.argmax(axis=1) == labels)), near_ties


def _assert_error_matches(error, num_correct, near_ties, num_examples):
  """Checks an error (%) against a direct correct count, up to near ties."""
  evaluated_correct = num_examples * (1.0 - error / 100.0)
  assert abs(evaluated_correct - num_correct) <= near_ties + 1e-9


@pytest.fixture(scope="module")
def plain_curve():
  return _curve(_random_variables(MODEL, 0)["params"],
                _random_variables(MODEL, 1)["params"])


@pytest.fixture(scope="module")
def one_at_a_time(dataset, plain_curve):
  return evaluation.evaluate_curve(MODEL, dataset, plain_curve, num_points=3,
                                   points_per_pass=1, weight_decay=5e-4,
                                   batch_size=BATCH, progress=False)


def test_several_points_per_pass_match_single(dataset, plain_curve,
                                              one_at_a_time):
  together = evaluation.evaluate_curve(
      MODEL, dataset, plain_curve, num_points=3, points_per_pass=3,
      vmap_points=3, weight_decay=5e-4, batch_size=BATCH, progress=False)
  for name in ("train_nll", "test_nll", "train_loss", "param_norm"):
    np.testing.assert_allclose(together.series[name],
                               one_at_a_time.series[name], rtol=2e-5,
                               err_msg=name)
  for name in ("train_error", "test_error"):
    np.testing.assert_array_equal(together.series[name],
                                  one_at_a_time.series[name], err_msg=name)


def test_endpoints_equal_direct_evaluation(dataset, plain_curve,
                                           one_at_a_time):
  for index, params in zip((0, -1), curves.endpoints(plain_curve)):
    for split, prefix in ((dataset.train, "train"), (dataset.test, "test")):
      nll_sum, num_correct, near_ties = _direct_metrics(
          MODEL, {"params": params}, split, dataset.mean, dataset.std)
      np.testing.assert_allclose(one_at_a_time.series[f"{prefix}_nll"][index],
                                 nll_sum / len(split), rtol=1e-5)
      _assert_error_matches(one_at_a_time.series[f"{prefix}_error"][index],
                            num_correct, near_ties, len(split))


def test_partial_last_batch_counted_once(dataset, plain_curve):
  assert NUM_TEST % BATCH != 0
  params = curves.endpoints(plain_curve)[0]
  stacked = jax.tree.map(lambda leaf: leaf[None], params)
  nll_sum, num_correct = evaluation.metric_sums(
      MODEL, dataset.test, stacked, None, mean=dataset.mean, std=dataset.std,
      batch_size=BATCH)
  direct_sum, direct_correct, near_ties = _direct_metrics(
      MODEL, {"params": params}, dataset.test, dataset.mean, dataset.std)
  np.testing.assert_allclose(nll_sum[0], direct_sum, rtol=1e-5)
  assert abs(num_correct[0] - direct_correct) <= near_ties


def test_train_loss_adds_l2_term(plain_curve, one_at_a_time):
  params = jax.jit(curves.point)(plain_curve, 0.5)
  squared = sum(float(np.sum(np.square(np.asarray(leaf, np.float64))))
                for leaf in jax.tree.leaves(params))
  np.testing.assert_allclose(
      one_at_a_time.series["train_loss"][1],
      one_at_a_time.series["train_nll"][1] + 0.5 * 5e-4 * squared, rtol=1e-5)


def test_batch_norm_curve_endpoints_match(dataset):
  variables = [_random_variables(BN_MODEL, seed) for seed in (0, 1)]
  stats = [v["batch_stats"] for v in variables]
  curve = _curve(variables[0]["params"], variables[1]["params"])
  result = evaluation.evaluate_curve(
      BN_MODEL, dataset, curve, batch_stats=tuple(stats), num_points=2,
      points_per_pass=1, batch_size=BATCH, progress=False)
  for index, (v, s) in zip((0, -1), zip(variables, stats)):
    nll_sum, num_correct, near_ties = _direct_metrics(
        BN_MODEL, {"params": v["params"], "batch_stats": s}, dataset.test,
        dataset.mean, dataset.std)
    np.testing.assert_allclose(result.series["test_nll"][index],
                               nll_sum / NUM_TEST, rtol=1e-5, atol=1e-5)
    _assert_error_matches(result.series["test_error"][index], num_correct,
                          near_ties, NUM_TEST)


def _numpy_conv_moments(params, split, mean, std):
  x = transforms.normalize(split.images, mean, std)
  conv = nn.Conv(4, (3, 3)).apply({"params": params["conv"]}, x)
  conv = np.asarray(conv, np.float64).reshape(-1, 4)
  return conv.mean(axis=0), conv.var(axis=0)


def test_recomputed_stats_match_numpy(dataset):
  params = [_random_variables(TinyBN(), seed)["params"] for seed in (0, 1)]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
  stats = evaluation.recompute_batch_stats(
      TinyBN(), dataset.train, stacked, mean=dataset.mean, std=dataset.std,
      batch_size=BATCH)
  for index, point_params in enumerate(params):
    mean, var = _numpy_conv_moments(point_params, dataset.train, dataset.mean,
                                    dataset.std)
    np.testing.assert_allclose(stats["bn"]["mean"][index], mean, atol=1e-5)
    np.testing.assert_allclose(stats["bn"]["var"][index], var, rtol=1e-5)


def test_batch_norm_interior_uses_recomputed_stats(dataset):
  variables = [_random_variables(TinyBN(), seed) for seed in (0, 1)]
  curve = _curve(variables[0]["params"], variables[1]["params"])
  endpoint_stats = tuple(v["batch_stats"] for v in variables)
  kwargs = dict(batch_stats=endpoint_stats, num_points=3, batch_size=BATCH,
                progress=False)
  together = evaluation.evaluate_curve(TinyBN(), dataset, curve,
                                       points_per_pass=3, **kwargs)
  single = evaluation.evaluate_curve(TinyBN(), dataset, curve,
                                     points_per_pass=1, **kwargs)
  middle = jax.jit(curves.point)(curve, 0.5)
  mean, var = _numpy_conv_moments(middle, dataset.train, dataset.mean,
                                  dataset.std)
  direct_stats = {"bn": {"mean": jnp.asarray(mean, jnp.float32),
                         "var": jnp.asarray(var, jnp.float32)}}
  nll_sum, _, _ = _direct_metrics(
      TinyBN(), {"params": middle, "batch_stats": direct_stats}, dataset.test,
      dataset.mean, dataset.std)
  np.testing.assert_allclose(together.series["test_nll"][1],
                             nll_sum / NUM_TEST, rtol=1e-5)
  np.testing.assert_allclose(together.series["test_nll"],
                             single.series["test_nll"], rtol=1e-5)


def test_line_length_is_endpoint_distance():
  params_0 = _random_variables(MODEL, 0)["params"]
  params_1 = _random_variables(MODEL, 1)["params"]
  distance = np.sqrt(sum(
      np.sum(np.square(np.asarray(b, np.float64) - np.asarray(a, np.float64)))
      for a, b in zip(jax.tree.leaves(params_0), jax.tree.leaves(params_1))))
  # NumPy stacking, because eager jnp.stack compiles once per leaf shape.
  line = jax.tree.map(lambda a, b: np.stack([a, b]), params_0, params_1)
  chain = jax.tree.map(
      lambda a, b: np.stack([a, (2 * a + b) / 3, (a + 2 * b) / 3, b]),
      params_0, params_1)
  for curve in (curves.Curve(bends=line, kind="bezier"),
                curves.Curve(bends=chain, kind="polychain")):
    np.testing.assert_allclose(evaluation.path_length(curve), distance,
                               rtol=1e-6)


def test_bezier_length_matches_scipy_quad():
  bends = np.asarray(jax.random.normal(jax.random.key(0), (4, 6)), np.float64)
  curve = curves.Curve(bends=jnp.asarray(bends, jnp.float32))
  bends = np.asarray(curve.bends, np.float64)
  degree = 3

  def speed(t):
    from scipy.special import comb
    basis = [comb(degree - 1, i) * t**i * (1 - t)**(degree - 1 - i)
             for i in range(degree)]
    velocity = degree * sum(b * (bends[i + 1] - bends[i])
                            for i, b in enumerate(basis))
    return np.linalg.norm(velocity)

  expected, _ = integrate.quad(speed, 0.0, 1.0, epsabs=1e-12)
  np.testing.assert_allclose(evaluation.path_length(curve), expected,
                             rtol=1e-9)
  np.testing.assert_allclose(evaluation.speed(curve, [0.3])[0], speed(0.3),
                             rtol=1e-9)


def test_integral_on_quadratic_path():
  # theta(t) = t^2 (bends 0, 0, 1), so the speed is 2t and the length 1.
  curve = curves.Curve(bends=jnp.array([0.0, 0.0, 1.0]))
  t = np.linspace(0.0, 1.0, 5)
  weights = evaluation.arc_weights(curve, t)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)
  # int_0^1 t * 2t dt = 2/3; f = t is linear, so the interpolant is exact.
  np.testing.assert_allclose(evaluation.length_weighted_mean(t, weights),
                             2.0 / 3.0, rtol=1e-12)
  np.testing.assert_allclose(
      evaluation.length_weighted_mean(np.full(5, 3.0), weights), 3.0,
      rtol=1e-12)


def test_integral_at_constant_speed_is_trapezoid():
  values = np.array([1.0, 4.0, 2.0, 0.0, 3.0])
  weights = np.full((4, 2), 0.125 * 7.0)  # length 7, constant speed
  expected = np.mean(0.5 * (values[:-1] + values[1:]))
  assert evaluation.length_weighted_mean(values, weights) == pytest.approx(
      expected, rel=1e-12)


def test_barrier_known_values():
  assert evaluation.barrier([10.0, 30.0, 20.0, 12.0]) == 18.0
  assert evaluation.barrier([0.1, 0.5, 0.05, 0.2]) == pytest.approx(0.3)
  assert evaluation.barrier([5.0, 4.0, 3.0]) == 0.0


def _hand_built_result():
  t = np.linspace(0.0, 1.0, 4)
  series = {name: np.array([1.0, 3.0, 2.0, 1.5]) for name in evaluation.SERIES}
  series["test_error"] = np.array([10.0, 30.0, 20.0, 12.0])
  series["train_loss"] = np.array([0.1, 0.5, 0.05, 0.2])
  return evaluation.PathEvaluation(
      name="curve", kind="bezier", num_bends=3, t=t, series=series,
      arc_weights=np.full((3, 2), 0.5), weight_decay=5e-4)


def test_summary_of_hand_built_series():
  summary = evaluation.summarize(_hand_built_result())
  assert summary["barriers"]["test_error"] == 18.0
  assert summary["barriers"]["train_loss"] == pytest.approx(0.3)
  assert summary["length"] == 3.0
  stats = summary["series"]["test_error"]
  assert (stats["min"], stats["max"], stats["mean"]) == (10.0, 30.0, 18.0)
  # Trapezoid mean: (20 + 25 + 16) / 3.
  assert stats["integral"] == pytest.approx(61.0 / 3.0)
  assert summary["barrier_definition"] == evaluation.BARRIER_DEFINITION


def test_save_load_round_trip(tmp_path):
  result = _hand_built_result()
  summary = evaluation.summarize(result)
  evaluation.save(result, summary, str(tmp_path), "curve")
  loaded, loaded_summary = evaluation.load(str(tmp_path), "curve")
  assert sorted(os.listdir(tmp_path)) == ["curve.json", "curve.npz"]
  assert loaded_summary == json.loads(json.dumps(summary))
  np.testing.assert_array_equal(loaded.t, result.t)
  np.testing.assert_array_equal(loaded.arc_weights, result.arc_weights)
  assert loaded.series.keys() == result.series.keys()
  for name, values in result.series.items():
    np.testing.assert_array_equal(loaded.series[name], values)
  assert (loaded.name, loaded.kind, loaded.num_bends, loaded.weight_decay) == (
      "curve", "bezier", 3, 5e-4)


def test_invalid_arguments_raise(dataset, plain_curve):
  with pytest.raises(ValueError, match="num_points"):
    evaluation.evaluate_curve(MODEL, dataset, plain_curve, num_points=1)
  with pytest.raises(ValueError, match="no batch norm"):
    evaluation.evaluate_curve(MODEL, dataset, plain_curve,
                              batch_stats=({}, {}))
