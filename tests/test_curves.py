"""Tests for Bezier and polygonal-chain curves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import curves


def _endpoints():
  k0, k1 = jax.random.split(jax.random.key(0))
  params_0 = {"a": {"kernel": jax.random.normal(k0, (3, 4)),
                    "bias": jnp.arange(4.0)},
              "b": {"kernel": jax.random.normal(k1, (2,))}}
  params_1 = jax.tree.map(lambda x: 2.0 * x + 1.0, params_0)
  return params_0, params_1


def test_bezier_three_bends_quarter():
  np.testing.assert_allclose(curves.bezier_coefficients(0.25, 3),
                             [0.5625, 0.375, 0.0625], rtol=1e-7)


@pytest.mark.parametrize("kind", curves.KINDS)
@pytest.mark.parametrize("num_bends", [2, 3, 4, 7])
def test_coefficients_sum_to_one(kind, num_bends):
  ts = jnp.linspace(0.0, 1.0, 41)
  coeffs = jax.vmap(lambda t: curves.coefficients(kind, t, num_bends))(ts)
  np.testing.assert_allclose(coeffs.sum(axis=1), 1.0, rtol=1e-6)
  assert np.all(np.asarray(coeffs) >= 0.0)


@pytest.mark.parametrize("kind", curves.KINDS)
def test_reversing_t_reverses_coefficients(kind):
  for t in [0.0, 0.1, 0.37, 0.5, 0.9]:
    forward = curves.coefficients(kind, t, 5)
    backward = curves.coefficients(kind, 1.0 - t, 5)
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-6)


def test_bezier_matches_bernstein_formula():
  from scipy.special import comb
  for t in [0.0, 0.2, 0.65, 1.0]:
    expected = [comb(4, i) * t**i * (1 - t)**(4 - i) for i in range(5)]
    np.testing.assert_allclose(curves.bezier_coefficients(t, 5), expected,
                               rtol=1e-6, atol=1e-7)


def test_polychain_bends_at_even_spacing():
  np.testing.assert_allclose(curves.polychain_coefficients(0.5, 3), [0, 1, 0])
  np.testing.assert_allclose(curves.polychain_coefficients(0.25, 3),
                             [0.5, 0.5, 0])
  np.testing.assert_allclose(curves.polychain_coefficients(0.8, 3),
                             [0, 0.4, 0.6], atol=1e-6)


@pytest.mark.parametrize("factory", [curves.bezier, curves.polychain])
def test_point_at_ends_equals_endpoints_exactly(factory):
  params_0, params_1 = _endpoints()
  curve = factory(params_0, params_1, num_bends=4)
  for t, expected in [(0.0, params_0), (1.0, params_1)]:
    got = curve_point = curves.point(curve, t)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
    jitted = jax.jit(curves.point)(curve, t)
    jax.tree.map(np.testing.assert_array_equal, jitted, expected)
    del curve_point


def test_initial_bezier_is_the_straight_line():
  params_0, params_1 = _endpoints()
  curve = curves.bezier(params_0, params_1, num_bends=3)
  middle = jax.tree.map(lambda x: x[1], curve.bends)
  jax.tree.map(lambda m, a, b: np.testing.assert_allclose(m, (a + b) / 2, rtol=1e-6),
               middle, params_0, params_1)
  for t in [0.1, 0.6]:
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6),
                 curves.point(curve, t), curves.linear_point(params_0, params_1, t))


@pytest.mark.parametrize("kind", curves.KINDS)
def test_vmapped_points_equal_loop(kind):
  params_0, params_1 = _endpoints()
  middle = jax.tree.map(lambda x: x * 0.0 + 3.0, params_0)
  curve = curves.from_bends([params_0, middle, params_1], kind=kind)
  ts = jnp.linspace(0.0, 1.0, 7)
  batched = jax.vmap(curves.point, in_axes=(None, 0))(curve, ts)
  for i, t in enumerate(np.asarray(ts)):
    single = curves.point(curve, float(t))
    jax.tree.map(lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-6),
                 batched, single)


def test_point_matches_direct_bezier_sum():
  params_0, params_1 = _endpoints()
  middle = jax.tree.map(lambda x: -x, params_0)
  curve = curves.from_bends([params_0, middle, params_1])
  t = 0.3
  expected = jax.tree.map(
      lambda a, m, b: (1 - t)**2 * a + 2 * t * (1 - t) * m + t**2 * b,
      params_0, middle, params_1)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6),
               curves.point(curve, t), expected)


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_t_outside_unit_interval_raises(t):
  params_0, params_1 = _endpoints()
  curve = curves.bezier(params_0, params_1)
  with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
    curves.point(curve, t)


def test_endpoint_shape_mismatch_names_path():
  params_0, params_1 = _endpoints()
  params_1["a"]["bias"] = jnp.zeros(5)
  with pytest.raises(ValueError, match="'a/bias' has shape \\(4,\\)"):
    curves.bezier(params_0, params_1)


def test_endpoint_structure_mismatch_names_path():
  params_0, params_1 = _endpoints()
  del params_1["b"]
  with pytest.raises(ValueError, match="'b/kernel' is in the first"):
    curves.polychain(params_0, params_1)


def test_too_few_bends_raises():
  params_0, params_1 = _endpoints()
  with pytest.raises(ValueError, match="num_bends=1"):
    curves.bezier(params_0, params_1, num_bends=1)


def test_interior_mask():
  np.testing.assert_array_equal(curves.interior_mask(4), [0, 1, 1, 0])
  np.testing.assert_array_equal(curves.interior_mask(2), [0, 0])
