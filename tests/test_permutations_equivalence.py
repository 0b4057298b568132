"""Tests for compare_networks, the batched equivalence check."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import data
from mcjax import permutations as perm
import permutation_models


# Cached, so that every test passes the same apply_fn and reuses the compiled
# comparison.
@functools.lru_cache(maxsize=None)
def _mlp_setup():
  model = permutation_models.MLP()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, size=(23, 2, 2, 3)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 5, size=(23,)), jnp.int32)
  variables_a = permutation_models.random_variables(model, images, seed=0)
  variables_b = permutation_models.random_variables(model, images, seed=1)
  apply_fn = model.apply
  return apply_fn, variables_a, variables_b, images, labels


_MEAN, _STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _preprocess(x):
  return data.normalize(x, _MEAN, _STD)


@pytest.mark.parametrize("batch_size", [1, 5, 23, 100])
def test_matches_direct_computation(batch_size):
  apply_fn, a, b, images, labels = _mlp_setup()
  metrics = perm.compare_networks(apply_fn, a, b, images, labels,
                                  batch_size=batch_size,
                                  preprocess=_preprocess)
  x = _preprocess(images)
  logits_a, logits_b = np.asarray(apply_fn(a, x)), np.asarray(apply_fn(b, x))
  pred_a, pred_b = logits_a.argmax(-1), logits_b.argmax(-1)
  np.testing.assert_allclose(metrics["max_abs_logit_diff"],
                             np.abs(logits_a - logits_b).max(), rtol=1e-5)
  assert metrics["agreement"] == np.mean(pred_a == pred_b)
  assert metrics["accuracy_a"] == np.mean(pred_a == np.asarray(labels))
  assert metrics["accuracy_b"] == np.mean(pred_b == np.asarray(labels))
  assert metrics["num_examples"] == 23


def test_last_partial_batch_counted_once():
  # With 23 images and batch_size 7 the last batch is images 16..22, which
  # overlaps the third batch; an image counted twice would change the sums.
  apply_fn, a, _, images, _ = _mlp_setup()
  labels = jnp.asarray(
      np.argmax(np.asarray(apply_fn(a, _preprocess(images))), -1))
  labels = labels.at[-2:].set((labels[-2:] + 1) % 5)
  metrics = perm.compare_networks(apply_fn, a, a, images, labels,
                                  batch_size=7, preprocess=_preprocess)
  assert metrics["agreement"] == 1.0
  assert metrics["max_abs_logit_diff"] == 0.0
  assert metrics["accuracy_a"] == 21 / 23


def test_without_labels_has_no_accuracy():
  apply_fn, a, b, images, _ = _mlp_setup()
  x = _preprocess(images)
  metrics = perm.compare_networks(apply_fn, a, b, x, batch_size=10)
  assert set(metrics) == {"max_abs_logit_diff", "agreement", "num_examples"}


def test_permuted_mlp_is_equivalent():
  apply_fn, a, _, images, labels = _mlp_setup()
  spec = perm.infer_spec(permutation_models.MLP(), a, images)
  permuted = perm.apply(spec, perm.random(spec, jax.random.key(0)), a)
  metrics = perm.compare_networks(apply_fn, a, permuted, images, labels,
                                  batch_size=10, preprocess=_preprocess)
  assert metrics["max_abs_logit_diff"] < 1e-5
  assert metrics["agreement"] == 1.0
  assert metrics["accuracy_a"] == metrics["accuracy_b"]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"labels": jnp.zeros((3,), jnp.int32)}, r"labels must have shape \(23,\)"),
])
def test_invalid_arguments_raise(kwargs, message):
  apply_fn, a, b, images, _ = _mlp_setup()
  with pytest.raises(ValueError, match=message):
    perm.compare_networks(apply_fn, a, b, images, **kwargs)
