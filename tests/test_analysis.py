"""Tests for per-layer distances along a curve and the locality summary."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from mcjax import analysis
from mcjax import curves
from mcjax import models
from mcjax import permutations as perm
from mcjax import pytrees

TS = np.linspace(0.0, 1.0, 11)
KINDS = ["bezier", "polychain"]
LAYERS = ["block0_conv0", "block0_bn0", "block1_conv0", "block1_bn0", "fc1",
          "fc2", "fc3"]


def _random_like(params, seed, scale=1.0):
  """Returns float32 NumPy normals shaped like `params`.

  NumPy keeps the tests free of one XLA compilation per leaf shape.
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: (scale * rng.standard_normal(np.shape(x))).astype(np.float32),
      params)


_MODEL = models.VGG(blocks=((32,), (48,)), width=1 / 8, batch_norm=True)
_IMAGES = np.zeros((1, 8, 8, 1), np.float32)


@functools.lru_cache(maxsize=None)
def _shapes():
  return jax.eval_shape(_MODEL.init, jax.random.key(0), _IMAGES)


def _small_vgg_params(seed=0):
  """Parameters of a 2-block VGG with batch norm on 8x8 images.

  Convolutions have 4 and 6 channels and the classifier has 64 hidden units.
  Two 2x2 max-pools leave 2x2 maps, so fc1 reads 2 * 2 * 6 inputs.
  """
  return _random_like(_shapes()["params"], seed)


@functools.lru_cache(maxsize=None)
def _spec():
  return perm.infer_spec(_MODEL, _shapes(), _IMAGES)


def _line(params_0, params_1, num_bends, kind):
  """Builds a curve with bends evenly spaced on the straight line, in NumPy."""
  fractions = np.linspace(0.0, 1.0, num_bends, dtype=np.float32)
  bends = jax.tree.map(
      lambda a, b: np.stack([(1 - s) * a + s * b for s in fractions]),
      params_0, params_1)
  return curves.Curve(bends=bends, kind=kind)


def _swapped(params, group, units):
  """Returns params with two units of `group` swapped by the permutation module."""
  p = perm.swap(_spec(), group, pairs=[units])
  return perm.apply(_spec(), p, {"params": params})["params"]


def _curve(kind, num_bends=3, seed=0):
  params_0 = _small_vgg_params(seed)
  params_1 = _random_like(params_0, seed + 1)
  line = _line(params_0, params_1, num_bends, kind)
  offsets = _random_like(line.bends, seed + 2, scale=0.3)
  offsets = jax.tree.map(lambda o: o * (np.arange(num_bends) % (num_bends - 1)
                                        > 0).reshape((-1,) + (1,) * (o.ndim - 1)),
                         offsets)
  bends = jax.tree.map(lambda b, o: (b + o).astype(np.float32), line.bends,
                       offsets)
  return curves.Curve(bends=bends, kind=kind)


def _swap_curve(kind, group="block1_conv0", units=(1, 4), seed=0):
  params_0 = _small_vgg_params(seed)
  params_1 = jax.tree.map(np.asarray, _swapped(params_0, group, units))
  line = _line(params_0, params_1, 3, kind)
  offsets = _random_like(params_0, seed + 3, scale=0.1)
  bends = jax.tree.map(lambda b, o: np.stack([b[0], b[1] + o, b[2]]),
                       line.bends, offsets)
  return curves.Curve(bends=bends, kind=kind), params_1


def _layer_vector(params, layer):
  flat = pytrees.flatten_with_names(params)
  return np.concatenate([np.asarray(v, np.float64).ravel()
                         for path, v in flat.items()
                         if path.rpartition("/")[0] == layer])


def _materialise(curve, t):
  """Returns theta(t) as a float64 NumPy pytree, sum_i c_i(t) w_i."""
  degree = curve.num_bends - 1
  if curve.kind == "bezier":
    i = np.arange(curve.num_bends)
    coeffs = scipy.special.comb(degree, i) * t**i * (1 - t)**(degree - i)
  else:
    coeffs = np.maximum(0.0, 1.0 - np.abs(t * degree - np.arange(degree + 1)))
  return jax.tree.map(
      lambda b: np.tensordot(coeffs, np.asarray(b, np.float64), axes=1),
      curve.bends)


def _materialised_metrics(curve, ts, layers, permuted=None):
  """Computes the metrics on materialised curve points, in float64."""
  start, end = curves.endpoints(curve)
  rows = {name: [] for name in ("to_start", "to_end", "deviation",
                                "norm_change_start", "norm_change_end",
                                "to_permuted_start")}
  for t in ts:
    theta = _materialise(curve, t)
    values = {name: [] for name in rows}
    for layer in layers:
      x = _layer_vector(theta, layer)
      w0, w1 = _layer_vector(start, layer), _layer_vector(end, layer)
      line = (1.0 - t) * w0 + t * w1
      values["to_start"].append(np.linalg.norm(x - w0))
      values["to_end"].append(np.linalg.norm(x - w1))
      values["deviation"].append(np.linalg.norm(x - line))
      values["norm_change_start"].append(
          abs(np.linalg.norm(x) - np.linalg.norm(w0)))
      values["norm_change_end"].append(
          abs(np.linalg.norm(x) - np.linalg.norm(w1)))
      if permuted is not None:
        values["to_permuted_start"].append(
            np.linalg.norm(x - _layer_vector(permuted, layer)))
    for name in rows:
      rows[name].append(values[name])
  return {name: np.asarray(value) for name, value in rows.items() if value[0]}


def test_float32_points_agree_with_float64_reference():
  curve = _curve("bezier")
  point = jax.jit(curves.point)
  for t in (0.3, 0.7):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        point(curve, t), _materialise(curve, t))


@pytest.mark.parametrize("kind", KINDS)
def test_start_distances_zero_at_t0(kind):
  distances = analysis.curve_distances(_curve(kind), TS)
  for name in ("to_start", "to_start_normalized", "to_start_relative",
               "norm_change_start"):
    np.testing.assert_allclose(distances.metric(name)[0], 0.0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_to_start_at_t1_is_endpoint_distance(kind):
  curve = _curve(kind)
  distances = analysis.curve_distances(curve, TS)
  start, end = curves.endpoints(curve)
  expected = [np.linalg.norm(_layer_vector(end, layer)
                             - _layer_vector(start, layer))
              for layer in LAYERS]
  np.testing.assert_allclose(distances.metric("to_start")[-1, :-1], expected,
                             rtol=1e-6)
  np.testing.assert_allclose(distances.metric("to_end")[-1], 0.0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_bends", [3, 5])
def test_grams_match_materialised_points(kind, num_bends):
  curve = _curve(kind, num_bends)
  distances = analysis.curve_distances(curve, TS)
  expected = _materialised_metrics(curve, TS, LAYERS)
  for name, values in expected.items():
    np.testing.assert_allclose(distances.metric(name)[:, :-1], values,
                               rtol=1e-5, atol=1e-6, err_msg=name)


def test_whole_network_column_matches_materialised():
  curve = _curve("bezier")
  distances = analysis.curve_distances(curve, TS)
  start, end = curves.endpoints(curve)
  flat = lambda p: np.concatenate(
      [np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(p)])
  w0, w1 = flat(start), flat(end)
  for row, t in enumerate(TS):
    theta = flat(_materialise(curve, t))
    np.testing.assert_allclose(distances.metric("to_start")[row, -1],
                               np.linalg.norm(theta - w0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(distances.metric("deviation")[row, -1],
                               np.linalg.norm(theta - (1 - t) * w0 - t * w1),
                               rtol=1e-5, atol=1e-6)


def test_normalized_and_relative_scaling():
  curve = _curve("bezier")
  distances = analysis.curve_distances(curve, TS)
  start, _ = curves.endpoints(curve)
  counts = [_layer_vector(start, layer).size for layer in LAYERS]
  norms = [np.linalg.norm(_layer_vector(start, layer)) for layer in LAYERS]
  raw = distances.metric("to_start")[:, :-1]
  np.testing.assert_array_equal(distances.param_counts[:-1], counts)
  np.testing.assert_allclose(distances.metric("to_start_normalized")[:, :-1],
                             raw / np.sqrt(counts), rtol=1e-12)
  np.testing.assert_allclose(distances.metric("to_start_relative")[:, :-1],
                             raw / np.asarray(norms), rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_straight_line_has_no_deviation(kind):
  params_0 = _small_vgg_params(0)
  params_1 = _random_like(params_0, 1)
  curve = _line(params_0, params_1, 4, kind)
  distances = analysis.curve_distances(curve, TS)
  scale = distances.metric("to_end")[0]
  assert np.all(distances.metric("deviation") <= 1e-6 * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_swapped_layer_reordered_zero_at_ends(kind):
  curve, params_1 = _swap_curve(kind)
  distances = analysis.curve_distances(curve, TS, permuted_start=params_1)
  reordered = distances.metric("reordered")
  for layer in ("block1_conv0", "fc1"):
    column = distances.column(layer)
    assert distances.metric("to_start")[-1, column] > 0.1
    assert reordered[0, column] == pytest.approx(0.0, abs=1e-6)
    assert reordered[-1, column] == pytest.approx(0.0, abs=1e-6)


def test_reordered_equals_to_start_in_untouched_layers():
  curve, params_1 = _swap_curve("bezier")
  distances = analysis.curve_distances(curve, TS, permuted_start=params_1)
  for layer in ("block0_conv0", "block0_bn0", "fc2", "fc3"):
    column = distances.column(layer)
    np.testing.assert_allclose(distances.metric("reordered")[:, column],
                               distances.metric("to_start")[:, column],
                               rtol=1e-12)


def test_permute_start_is_permuted_endpoint():
  curve, params_1 = _swap_curve("bezier")
  p = perm.swap(_spec(), "block1_conv0", pairs=[(1, 4)])
  permuted = analysis.permute_start(curve, _spec(), p)
  jax.tree.map(np.testing.assert_array_equal, permuted, params_1)


def test_to_permuted_start_matches_materialised():
  curve, params_1 = _swap_curve("polychain")
  distances = analysis.curve_distances(curve, TS, permuted_start=params_1)
  expected = _materialised_metrics(curve, TS, LAYERS, permuted=params_1)
  np.testing.assert_allclose(distances.metric("to_permuted_start")[:, :-1],
                             expected["to_permuted_start"], rtol=1e-5,
                             atol=1e-6)


def test_reference_shape_mismatch_raises():
  curve = _curve("bezier")
  bad = _small_vgg_params(0)
  bad["fc2"]["bias"] = np.zeros((4,), np.float32)
  with pytest.raises(ValueError, match="fc2/bias"):
    analysis.curve_distances(curve, TS, permuted_start=bad)


def test_chunking_does_not_change_grams():
  curve = _curve("bezier", 4)
  whole = analysis.curve_grams(curve)
  chunked = analysis.curve_grams(curve, chunk_size=7)
  np.testing.assert_allclose(chunked.gram, whole.gram, rtol=1e-12)
  np.testing.assert_allclose(chunked.start_dot, whole.start_dot, rtol=1e-12)


def test_whole_network_row_is_layer_sum():
  grams = analysis.curve_grams(_curve("bezier"))
  np.testing.assert_allclose(grams.gram[-1], grams.gram[:-1].sum(axis=0))
  assert grams.layers[-1] == "all"
  assert grams.param_counts[-1] == sum(
      x[0].size for x in jax.tree.leaves(_curve("bezier").bends))


def test_layer_order_follows_vgg16():
  model = models.VGG16(width=0.125, batch_norm=True)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 32, 32, 3)))
  order = list(analysis.layer_groups(variables["params"]))
  expected = []
  for name in models.layer_names(model):
    expected.append(name)
    if "_conv" in name:
      expected.append(name.replace("_conv", "_bn"))
  assert order == expected


def test_layer_order_explicit():
  params = _small_vgg_params()
  order = ["fc3", "fc2", "fc1", "block1_bn0", "block1_conv0", "block0_bn0",
           "block0_conv0"]
  assert list(analysis.layer_groups(params, order)) == order


def test_layer_order_missing_layer_raises():
  with pytest.raises(ValueError, match="missing"):
    analysis.layer_groups(_small_vgg_params(), ["fc1", "fc2"])


def test_invalid_ts_raises():
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    analysis.curve_distances(_curve("bezier"), [0.0, 1.5])


@pytest.mark.parametrize("kind", KINDS)
def test_single_layer_bend_is_fully_local(kind):
  params_0 = _small_vgg_params(0)
  params_1 = _random_like(params_0, 1)
  bends = _line(params_0, params_1, 3, kind).bends
  bends["block1_conv0"]["kernel"][1] += 0.5
  distances = analysis.curve_distances(curves.Curve(bends=bends, kind=kind), TS)
  summary = analysis.locality_summary(distances, ["block1_conv0"])
  assert summary["share_integrated"] == pytest.approx(1.0, abs=1e-9)
  assert summary["share_at_max"] == pytest.approx(1.0, abs=1e-9)
  assert summary["t_max"] == 0.5
  assert summary["top_layers"][0]["layer"] == "block1_conv0"


def test_shares_of_all_layers_sum_to_one():
  distances = analysis.curve_distances(_curve("bezier"), TS)
  summary = analysis.locality_summary(distances, LAYERS, top_k=len(LAYERS))
  assert summary["share_integrated"] == pytest.approx(1.0, rel=1e-9)
  assert sum(row["share"] for row in summary["top_layers"]) == pytest.approx(
      1.0, rel=1e-9)


def test_locality_unknown_layer_raises():
  distances = analysis.curve_distances(_curve("bezier"), TS)
  with pytest.raises(ValueError, match="block9_conv9"):
    analysis.locality_summary(distances, ["block9_conv9"])


def test_touched_layers_of_group():
  spec, params = _spec(), _small_vgg_params()
  assert analysis.touched_layers(spec, "block0_conv0", params) == [
      "block0_conv0", "block0_bn0", "block1_conv0"]
  assert analysis.touched_layers(spec, "block1_conv0", params) == [
      "block1_conv0", "block1_bn0", "fc1"]


def test_touched_layers_from_axes_mapping():
  axes = dict(_spec().axes)
  assert analysis.touched_layers(axes, "fc1", _small_vgg_params()) == [
      "fc1", "fc2"]


def _unit_reference(curve, path, axis, units, ts):
  """Per-unit deviation from materialised points; (T, units)."""
  bends = np.asarray(pytrees.flatten_with_names(curve.bends)[path], np.float64)
  rows = []
  for t in ts:
    theta = np.asarray(_materialise(curve, t)[path.split("/")[0]][
        path.split("/")[1]])
    diff = theta - (1.0 - t) * bends[0] - t * bends[-1]
    moved = np.moveaxis(diff, axis, -1).reshape(-1, units)
    rows.append(np.sqrt((moved ** 2).sum(axis=0)))
  return np.asarray(rows)


@pytest.mark.parametrize("kind", KINDS)
def test_unit_deviation_matches_materialised(kind):
  curve, _ = _swap_curve(kind)
  sides = analysis.unit_deviation(curve, _spec(), "block1_conv0",
                                  [1, 4], TS)
  # The input side is fc1's kernel, read through the flatten: unit u owns the
  # rows u, u + 6, u + 12, u + 18.
  np.testing.assert_allclose(
      sides["input"].deviation,
      _unit_reference(curve, "fc1/kernel", 0, 6, TS), rtol=1e-5, atol=1e-6)
  kernel = _unit_reference(curve, "block1_conv0/kernel", 3, 6, TS)
  squares = kernel**2 + sum(
      _unit_reference(curve, path, 0, 6, TS)**2
      for path in ("block1_conv0/bias", "block1_bn0/scale", "block1_bn0/bias"))
  np.testing.assert_allclose(sides["output"].deviation, np.sqrt(squares),
                             rtol=1e-5, atol=1e-6)


def test_unit_deviation_ranks_moved_units_first():
  params_0 = _small_vgg_params(0)
  bends = _line(params_0, params_0, 3, "bezier").bends
  kernel = bends["block0_conv0"]["kernel"]
  kernel[1, ..., 2] += 1.0
  kernel[1, ..., 0] += 0.5
  kernel[1, ..., 3] += 0.01
  curve = curves.Curve(bends=bends, kind="bezier")
  sides = analysis.unit_deviation(curve, _spec(), "block0_conv0",
                                  [2, 0], TS)
  stats = sides["output"].stats
  # The offsets have norms 3 (unit 2), 1.5 (unit 0), 0.03 (unit 3) and 0
  # (unit 1), and each unit's deviation is c_1(t) = 2 t (1 - t) times its norm.
  bump = np.sqrt(np.trapezoid((2 * TS * (1 - TS))**2, TS))
  assert stats["swapped_rank"] == [1, 2]
  np.testing.assert_allclose(stats["swapped_rms"], [3.0 * bump, 1.5 * bump],
                             rtol=1e-6)
  assert stats["others_mean"] == pytest.approx(0.015 * bump, rel=1e-4)
  assert stats["others_std"] == pytest.approx(0.015 * bump, rel=1e-4)
  assert sides["input"].stats["swapped_rank"] == [1, 1]
  np.testing.assert_array_equal(sides["input"].rms, 0.0)


def test_unit_deviation_unknown_group_raises():
  curve, _ = _swap_curve("bezier")
  with pytest.raises(ValueError, match="block1_conv0"):
    analysis.unit_deviation(curve, _spec(), "nope", [0], TS)


def test_unit_deviation_unit_out_of_range_raises():
  curve, _ = _swap_curve("bezier")
  with pytest.raises(ValueError, match=r"\[0, 6\)"):
    analysis.unit_deviation(curve, _spec(), "block1_conv0", [6], TS)


def test_save_and_load_roundtrip(tmp_path):
  curve, params_1 = _swap_curve("bezier")
  distances = analysis.curve_distances(curve, TS, permuted_start=params_1)
  sides = analysis.unit_deviation(curve, _spec(), "block1_conv0",
                                  [1, 4], TS)
  layers = analysis.touched_layers(_spec(), "block1_conv0",
                                   curves.endpoints(curve)[0])
  summary = analysis.locality_summary(distances, layers, sides)
  swap = {"layer": "block1_conv0", "pairs": [[1, 4]], "consumer": "fc1"}
  npz_path, json_path = analysis.save_analysis(
      str(tmp_path / "distances"), distances, summary, swap, sides)

  loaded, loaded_swap = analysis.load_distances(npz_path)
  assert loaded.layers == distances.layers
  assert loaded_swap == swap
  for name, values in distances.metrics.items():
    np.testing.assert_array_equal(loaded.metric(name), values)
  with open(json_path) as file:
    document = json.load(file)
  assert document["share_integrated"] == pytest.approx(
      summary["share_integrated"])
  assert document["units"]["input"]["swapped_rank"] == (
      summary["units"]["input"]["swapped_rank"])
  assert sorted(os.listdir(tmp_path)) == ["distances.json", "distances.npz"]


def test_analyze_swap_end_to_end(tmp_path):
  curve, _ = _swap_curve("bezier")
  result = analysis.analyze_swap(curve, _spec(), "block1_conv0", [(1, 4)], TS)
  assert result.swap == {"layer": "block1_conv0", "pairs": [[1, 4]],
                         "units": [1, 4], "consumer": "fc1",
                         "touched_layers": ["block1_conv0", "block1_bn0",
                                            "fc1"]}
  column = result.distances.column("block1_conv0")
  assert result.distances.metric("reordered")[-1, column] == pytest.approx(
      0.0, abs=1e-6)
  assert 0.0 < result.summary["share_integrated"] < 1.0
  npz_path, _ = result.save(str(tmp_path / "swap"))
  loaded, swap = analysis.load_distances(npz_path)
  assert swap == result.swap
