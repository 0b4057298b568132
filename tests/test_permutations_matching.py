"""Tests for weight matching and its linear assignment solver."""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mcjax import permutations as perm
from mcjax import pytrees
import permutation_models

_SETTINGS = hypothesis.settings(max_examples=6, deadline=None,
                                derandomize=True)


# Two sizes only, because the solver compiles once per size.
@_SETTINGS
@hypothesis.given(n=st.sampled_from([8, 20]), seed=st.integers(0, 2**31 - 1))
def test_linear_assignment_matches_scipy(n, seed):
  similarity = np.random.default_rng(seed).normal(size=(n, n)).astype(
      np.float32)
  p = np.asarray(perm.linear_assignment(jnp.asarray(similarity)))
  rows, cols = optimize.linear_sum_assignment(similarity, maximize=True)
  assert sorted(p.tolist()) == list(range(n))
  np.testing.assert_allclose(similarity[np.arange(n), p].sum(),
                             similarity[rows, cols].sum(), rtol=1e-5)


def test_linear_assignment_under_jit():
  similarity = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
  _, cols = optimize.linear_sum_assignment(similarity, maximize=True)
  p = jax.jit(perm.linear_assignment)(jnp.asarray(similarity))
  np.testing.assert_array_equal(p, cols)


def _sq_distance(a, b):
  flat_a, flat_b = pytrees.flatten_with_names(a), pytrees.flatten_with_names(b)
  return sum(float(jnp.sum((flat_a[k] - flat_b[k])**2)) for k in flat_a)


@functools.lru_cache(maxsize=None)
def _mlp():
  model = permutation_models.MLP()
  x = jnp.zeros((2, 12))
  variables = permutation_models.random_variables(model, x)
  return perm.infer_spec(model, variables, x), variables


@functools.lru_cache(maxsize=None)
def _vgg():
  model, variables, images = permutation_models.vgg_setup(batch_norm=True)
  return perm.infer_spec(model, variables, images), variables


@pytest.mark.parametrize("setup", [_mlp, _vgg], ids=["mlp", "vgg16_bn"])
def test_recovers_known_permutation(setup):
  spec, variables_a = setup()
  p_true = perm.random(spec, jax.random.key(42))
  variables_b = perm.apply(spec, p_true, variables_a)
  assert _sq_distance(variables_a, variables_b) > 1.0

  p = perm.weight_matching(spec, variables_a, variables_b, jax.random.key(0))
  for group in spec.layers:
    np.testing.assert_array_equal(p[group], perm.invert(p_true)[group],
                                  err_msg=group)
  aligned = perm.apply(spec, p, variables_b)
  assert _sq_distance(variables_a, aligned) == 0.0


def test_objective_never_decreases():
  spec, variables_a = _vgg()
  model, variables_b, _ = permutation_models.vgg_setup(batch_norm=True, seed=1)
  del model
  _, objectives = perm.weight_matching(
      spec, variables_a, variables_b, jax.random.key(0), max_iter=5,
      return_objectives=True)
  steps = np.diff(objectives)
  assert len(objectives) > len(spec.layers)
  assert np.all(steps >= -1e-5 * abs(objectives[-1])), steps.min()
  assert objectives[-1] > objectives[0]


def test_objective_trace_matches_direct_sum():
  spec, variables_a = _mlp()
  variables_b = permutation_models.random_variables(
      permutation_models.MLP(), jnp.zeros((2, 12)), seed=3)
  p, objectives = perm.weight_matching(
      spec, variables_a, variables_b, jax.random.key(0),
      return_objectives=True)
  aligned = perm.apply(spec, p, variables_b)
  flat_a = pytrees.flatten_with_names(variables_a)
  flat_b = pytrees.flatten_with_names(aligned)
  direct = sum(float(jnp.vdot(flat_a[k], flat_b[k])) for k in flat_a)
  np.testing.assert_allclose(objectives[-1], direct, rtol=1e-5)


def test_deterministic_for_fixed_key():
  spec, variables_a = _mlp()
  variables_b = permutation_models.random_variables(
      permutation_models.MLP(), jnp.zeros((2, 12)), seed=5)
  runs = [perm.weight_matching(spec, variables_a, variables_b,
                               jax.random.key(3)) for _ in range(2)]
  for group in spec.layers:
    np.testing.assert_array_equal(runs[0][group], runs[1][group])


def test_matching_ignores_batch_stats():
  spec, variables_a = _vgg()
  p_true = perm.random(spec, jax.random.key(1))
  variables_b = perm.apply(spec, p_true, variables_a)
  p = perm.weight_matching(spec, variables_a,
                           {"params": variables_b["params"]},
                           jax.random.key(0))
  aligned = perm.apply(spec, p, variables_b)
  assert _sq_distance(variables_a, aligned) == 0.0


def test_invalid_max_iter_raises():
  spec, variables = _mlp()
  with pytest.raises(ValueError, match="max_iter must be at least 1"):
    perm.weight_matching(spec, variables, variables, jax.random.key(0),
                         max_iter=0)
