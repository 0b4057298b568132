"""Tests for evaluation along curves and lines."""

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


def _init(model, seed):
  # Jitted, because eager init compiles every op of VGG16 one at a time.
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 1))))
  return init(jax.random.key(seed))


@jax.jit
def _curve(params_0, params_1):
  """A 3-bend Bezier curve whose middle bend is off the straight line."""
  curve = curves.bezier(params_0, params_1, num_bends=3)
  leaves, treedef = jax.tree.flatten(curve.bends)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  bent = [leaf.at[1].add(0.05 * jax.random.normal(key, leaf.shape[1:]))
          for leaf, key in zip(leaves, keys)]
  return curves.Curve(bends=jax.tree.unflatten(treedef, bent), kind=curve.kind)


def _direct_metrics(model, variables, split, mean, std):
  """Returns mean nll, error (%), nll sum and correct count over a split.

  The logits come from one jitted `model.apply` per 50 examples, and the
  log-softmax runs in float64 NumPy.
  """
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  x = transforms.normalize(split.images, mean, std)
  logits = np.concatenate([np.asarray(apply(variables, x[i:i + 50]),
                                      np.float64)
                           for i in range(0, len(split), 50)])
  labels = np.asarray(split.labels)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  nll = -log_probs[np.arange(labels.size), labels]
  correct = logits.argmax(axis=1) == labels
  return nll.mean(), 100.0 * (1.0 - correct.mean()), nll.sum(), correct.sum()


@pytest.fixture(scope="module")
def plain_curve():
  return _curve(_init(MODEL, 0)["params"], _init(MODEL, 1)["params"])


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
      nll, error, _, _ = _direct_metrics(MODEL, {"params": params}, split,
                                         dataset.mean, dataset.std)
      np.testing.assert_allclose(one_at_a_time.series[f"{prefix}_nll"][index],
                                 nll, rtol=1e-5)
      assert one_at_a_time.series[f"{prefix}_error"][index] == error


def test_partial_last_batch_counted_once(dataset, plain_curve):
  assert NUM_TEST % BATCH != 0
  params = curves.endpoints(plain_curve)[0]
  stacked = jax.tree.map(lambda leaf: leaf[None], params)
  nll_sum, num_correct = evaluation.metric_sums(
      MODEL, dataset.test, stacked, None, mean=dataset.mean, std=dataset.std,
      batch_size=BATCH)
  _, _, direct_sum, direct_correct = _direct_metrics(
      MODEL, {"params": params}, dataset.test, dataset.mean, dataset.std)
  np.testing.assert_allclose(nll_sum[0], direct_sum, rtol=1e-5)
  assert num_correct[0] == direct_correct


def test_train_loss_adds_l2_term(plain_curve, one_at_a_time):
  params = jax.jit(curves.point)(plain_curve, 0.5)
  squared = sum(float(np.sum(np.square(np.asarray(leaf, np.float64))))
                for leaf in jax.tree.leaves(params))
  np.testing.assert_allclose(
      one_at_a_time.series["train_loss"][1],
      one_at_a_time.series["train_nll"][1] + 0.5 * 5e-4 * squared, rtol=1e-5)


def _random_stats(template, seed):
  key_mean, key_var = jax.random.split(jax.random.key(seed))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: (
          0.1 * jax.random.normal(key_mean, leaf.shape)
          if pytrees.path_to_str(path).endswith("mean")
          else jax.random.uniform(key_var, leaf.shape, minval=0.5, maxval=1.5)),
      template)


def test_batch_norm_curve_endpoints_match(dataset):
  variables = [_init(BN_MODEL, seed) for seed in (0, 1)]
  stats = [_random_stats(v["batch_stats"], seed)
           for seed, v in zip((3, 4), variables)]
  curve = _curve(variables[0]["params"], variables[1]["params"])
  result = evaluation.evaluate_curve(
      BN_MODEL, dataset, curve, batch_stats=tuple(stats), num_points=2,
      points_per_pass=1, batch_size=BATCH, progress=False)
  for index, (v, s) in zip((0, -1), zip(variables, stats)):
    nll, error, _, _ = _direct_metrics(
        BN_MODEL, {"params": v["params"], "batch_stats": s}, dataset.test,
        dataset.mean, dataset.std)
    np.testing.assert_allclose(result.series["test_nll"][index], nll,
                               rtol=1e-5, atol=1e-5)
    assert result.series["test_error"][index] == error


def _tiny_variables(seed):
  return TinyBN().init(jax.random.key(seed), jnp.zeros((1, 32, 32, 1)))


def _numpy_conv_moments(params, split, mean, std):
  x = transforms.normalize(split.images, mean, std)
  conv = nn.Conv(4, (3, 3)).apply({"params": params["conv"]}, x)
  conv = np.asarray(conv, np.float64).reshape(-1, 4)
  return conv.mean(axis=0), conv.var(axis=0)


def test_recomputed_stats_match_numpy(dataset):
  params = [_tiny_variables(seed)["params"] for seed in (0, 1)]
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
  variables = [_tiny_variables(seed) for seed in (0, 1)]
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
  nll, _, _, _ = _direct_metrics(
      TinyBN(), {"params": middle, "batch_stats": direct_stats}, dataset.test,
      dataset.mean, dataset.std)
  np.testing.assert_allclose(together.series["test_nll"][1], nll, rtol=1e-5)
  np.testing.assert_allclose(together.series["test_nll"],
                             single.series["test_nll"], rtol=1e-5)


def test_line_length_is_endpoint_distance():
  params_0, params_1 = _init(MODEL, 0)["params"], _init(MODEL, 1)["params"]
  distance = np.sqrt(sum(
      np.sum(np.square(np.asarray(b, np.float64) - np.asarray(a, np.float64)))
      for a, b in zip(jax.tree.leaves(params_0), jax.tree.leaves(params_1))))
  for curve in (curves.bezier(params_0, params_1, num_bends=2),
                curves.polychain(params_0, params_1, num_bends=4)):
    np.testing.assert_allclose(evaluation.path_length(curve), distance,
                               rtol=1e-6)


def test_bezier_length_matches_scipy_quad():
  bends = np.asarray(jax.random.normal(jax.random.key(0), (4, 6)), np.float64)
  curve = curves.from_bends([jnp.asarray(b, jnp.float32) for b in bends])
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
  curve = curves.from_bends([jnp.zeros(()), jnp.zeros(()), jnp.ones(())])
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
