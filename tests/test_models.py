"""Tests for the VGG models."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import models


def _param_count(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _init(model, shape=(2, 32, 32, 3), seed=0):
  return jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros(shape))


@pytest.mark.parametrize("factory, batch_norm, expected", [
    (models.VGG16, False, 15_245_130),
    # Each batch norm adds a scale and a bias per channel: 2 * 4224 for VGG16.
    (models.VGG16, True, 15_245_130 + 2 * 4224),
    (models.VGG19, False, 20_554_826),
])
def test_parameter_count_cifar10(factory, batch_norm, expected):
  variables = _init(factory(num_classes=10, batch_norm=batch_norm))
  assert _param_count(variables["params"]) == expected


def test_vgg16_eighth_width_shapes():
  variables = _init(models.VGG16(width=1 / 8))
  params = variables["params"]
  assert params["block0_conv0"]["kernel"].shape == (3, 3, 3, 8)
  assert params["block4_conv2"]["kernel"].shape == (3, 3, 64, 64)
  assert params["fc1"]["kernel"].shape == (64, 64)
  assert params["fc2"]["kernel"].shape == (64, 64)
  assert params["fc3"]["kernel"].shape == (64, 10)


def test_layer_names_match_params():
  model = models.VGG16()
  params = _init(model)["params"]
  assert sorted(models.layer_names(model)) == sorted(params)
  assert len(models.layer_names(model)) == 16


def test_batch_norm_names_and_stats():
  variables = _init(models.VGG16(width=1 / 8, batch_norm=True))
  assert variables["batch_stats"]["block2_bn1"]["mean"].shape == (32,)
  assert set(variables["params"]["block2_bn1"]) == {"scale", "bias"}


def test_flatten_size_for_larger_input():
  # 64x64 input leaves a 2x2 map after five pools: fc1 reads 2 * 2 * 64 features.
  variables = _init(models.VGG16(width=1 / 8), shape=(1, 64, 64, 3))
  assert variables["params"]["fc1"]["kernel"].shape == (256, 64)


def test_logits_shape_and_dtype():
  model = models.VGG16(width=1 / 8, num_classes=7)
  x = jnp.ones((3, 32, 32, 1))
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x)
  assert logits.shape == (3, 7)
  assert logits.dtype == jnp.float32


@pytest.fixture(scope="module")
def vgg16_params():
  init = jax.jit(models.VGG16().init)
  return init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]


def test_conv_init_std_matches_he_fan_out(vgg16_params):
  params = vgg16_params
  for name in ["block1_conv0", "block3_conv2", "block4_conv1"]:
    kernel = np.asarray(params[name]["kernel"])
    expected = math.sqrt(2.0 / (9 * kernel.shape[-1]))
    assert abs(kernel.std() / expected - 1.0) < 0.1, name
    assert np.all(np.asarray(params[name]["bias"]) == 0.0)


def test_dense_init_matches_torch_linear_bounds(vgg16_params):
  params = vgg16_params
  bound = 1.0 / math.sqrt(512)
  for name in ["fc1", "fc2", "fc3"]:
    for leaf in params[name].values():
      assert float(jnp.max(jnp.abs(leaf))) <= bound
  # U(-b, b) has std b / sqrt(3).
  assert abs(float(params["fc1"]["kernel"].std()) / (bound / math.sqrt(3)) - 1) < 0.05


@pytest.mark.parametrize("batch_norm", [False, True])
def test_conv_impls_agree(batch_norm):
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  xla = models.VGG16(width=1 / 8, batch_norm=batch_norm, conv_impl="xla")
  patches = models.VGG16(width=1 / 8, batch_norm=batch_norm, conv_impl="patches")
  variables = xla.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, jax.eval_shape(patches.init, jax.random.key(0), x))
  np.testing.assert_allclose(patches.apply(variables, x),
                             xla.apply(variables, x), rtol=1e-4, atol=1e-5)


def test_patches_conv_matches_lax_conv():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 4))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
  expected = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(models.conv3x3_patches(x, kernel), expected,
                             rtol=1e-5, atol=1e-5)


def test_auto_impl_picks_patches_for_small_cpu_maps():
  assert jax.default_backend() == "cpu"
  assert models.layers.resolve_conv_impl("auto", 2, 2) == "patches"
  assert models.layers.resolve_conv_impl("auto", 64, 64) == "xla"
  with pytest.raises(ValueError, match="conv_impl='fast'"):
    models.layers.resolve_conv_impl("fast", 2, 2)


def test_dropout_only_in_train_mode():
  model = models.VGG16(width=1 / 8)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  eval_a = model.apply(variables, x)
  eval_b = model.apply(variables, x)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = model.apply(variables, x, train=True,
                      rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(train, eval_a)


def test_bad_image_size_raises():
  with pytest.raises(ValueError, match="multiples of 32; got 28x28"):
    models.VGG16(width=1 / 8).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
