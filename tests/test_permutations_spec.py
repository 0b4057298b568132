"""Tests for permutation specs: inference from models and validation."""

import dataclasses
import functools
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mcjax import models
from mcjax import permutations as perm
import permutation_models


def _init(model, x):
  return jax.eval_shape(model.init, jax.random.key(0), x)


@functools.lru_cache(maxsize=None)
def _spec(batch_norm=False, size=32, blocks=models.VGG16_BLOCKS):
  model = models.VGG(blocks=blocks, width=1 / 8, batch_norm=batch_norm)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = _init(model, x)
  return perm.infer_spec(model, variables, x), variables


def test_vgg16_layers_in_forward_order():
  spec, _ = _spec()
  convs = [f"block{b}_conv{l}" for b, block in enumerate(models.VGG16_BLOCKS)
           for l in range(len(block))]
  assert spec.layers == tuple(convs) + ("fc1", "fc2")
  assert spec.output_layer == "fc3"


def test_vgg16_group_sizes():
  spec, _ = _spec()
  assert spec.sizes["block0_conv0"] == 8
  assert spec.sizes["block2_conv1"] == 32
  assert spec.sizes["block4_conv2"] == 64
  assert spec.sizes["fc2"] == 64


def test_vgg16_axes():
  spec, _ = _spec()
  assert spec.axes["params/block0_conv0/kernel"] == (None, None, None,
                                                     "block0_conv0")
  assert spec.axes["params/block2_conv1/kernel"] == (None, None,
                                                     "block2_conv0",
                                                     "block2_conv1")
  assert spec.axes["params/block2_conv1/bias"] == ("block2_conv1",)
  assert spec.axes["params/fc1/kernel"] == ("block4_conv2", "fc1")
  assert spec.axes["params/fc3/kernel"] == ("fc2", None)
  assert spec.axes["params/fc3/bias"] == (None,)


def test_vgg16_consumers():
  spec, _ = _spec()
  assert spec.consumers["block0_conv1"] == "block1_conv0"
  assert spec.consumers["block4_conv2"] == "fc1"
  assert spec.consumers["fc2"] == "fc3"
  assert set(spec.consumers) == set(spec.layers)


def test_batch_norm_axes():
  spec, _ = _spec(batch_norm=True)
  for path in ["params/block2_bn1/scale", "params/block2_bn1/bias",
               "batch_stats/block2_bn1/mean", "batch_stats/block2_bn1/var"]:
    assert spec.axes[path] == ("block2_conv1",)
  assert "block2_bn1" not in spec.sizes
  assert spec.collections == ("params", "batch_stats")


def test_spec_covers_every_leaf():
  spec, variables = _spec(batch_norm=True)
  paths = set(permutation_models.pytrees.flatten_with_names(variables))
  assert set(spec.axes) == paths


def test_flatten_copies_for_64px_input():
  # Five pools leave a 2x2 map: fc1 reads 4 spatial copies of 64 channels.
  spec, variables = _spec(size=64)
  assert variables["params"]["fc1"]["kernel"].shape == (256, 64)
  assert spec.num_copies("params/fc1/kernel", 0) == 4
  assert spec.num_copies("params/fc1/kernel", 1) == 1
  assert spec.sizes["block4_conv2"] == 64


def test_flatten_copies_for_three_blocks():
  blocks = models.VGG16_BLOCKS[:3]
  spec, _ = _spec(blocks=blocks)
  # 32 / 2**3 = 4: a 4x4 map of 32 channels.
  assert spec.num_copies("params/fc1/kernel", 0) == 16
  assert spec.axes["params/fc1/kernel"] == ("block2_conv2", "fc1")


def test_flatten_without_copies_at_32px():
  spec, _ = _spec()
  assert spec.num_copies("params/fc1/kernel", 0) == 1


def test_group_axes_of_swapped_layer():
  spec, _ = _spec(batch_norm=True)
  assert sorted(spec.group_axes["block2_conv1"]) == [
      ("batch_stats/block2_bn1/mean", 0),
      ("batch_stats/block2_bn1/var", 0),
      ("params/block2_bn1/bias", 0),
      ("params/block2_bn1/scale", 0),
      ("params/block2_conv1/bias", 0),
      ("params/block2_conv1/kernel", 3),
      ("params/block2_conv2/kernel", 2),
  ]


def test_mlp_spec():
  model = permutation_models.MLP()
  x = jnp.zeros((2, 3, 4))
  variables = _init(model, x)
  spec = perm.infer_spec(model, variables, x)
  assert spec.layers == ("Dense_0", "Dense_1")
  assert dict(spec.sizes) == {"Dense_0": 20, "Dense_1": 30}
  assert spec.axes["params/Dense_0/kernel"] == (None, "Dense_0")
  assert spec.axes["params/Dense_1/kernel"] == ("Dense_0", "Dense_1")
  assert spec.axes["params/Dense_2/kernel"] == ("Dense_1", None)
  assert spec.output_layer == "Dense_2"


class _Nested(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = permutation_models.MLP(name="body")(x)
    return nn.Dense(3, name="head")(nn.relu(x))


def test_nested_module_group_names():
  model = _Nested()
  x = jnp.zeros((2, 12))
  variables = _init(model, x)
  spec = perm.infer_spec(model, variables, x)
  assert spec.layers == ("body/Dense_0", "body/Dense_1", "body/Dense_2")
  assert spec.axes["params/head/kernel"] == ("body/Dense_2", None)


class _Residual(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(8)(x)
    h = nn.Dense(16)(h)
    return nn.Dense(2)(jnp.concatenate([h, x], axis=-1))


def test_non_sequential_model_raises():
  model = _Residual()
  x = jnp.zeros((2, 4))
  variables = _init(model, x)
  with pytest.raises(ValueError, match="Dense_2"):
    perm.infer_spec(model, variables, x)


def test_validate_unknown_path():
  spec, variables = _spec()
  variables = {"params": dict(variables["params"])}
  variables["params"]["extra"] = {"kernel": jnp.zeros((3,))}
  with pytest.raises(ValueError, match="params/extra/kernel"):
    perm.validate(spec, variables)


def test_validate_missing_path():
  spec, variables = _spec()
  params = dict(variables["params"])
  del params["fc2"]
  with pytest.raises(ValueError, match="params/fc2/bias"):
    perm.validate(spec, {"params": params})


def test_validate_rank_mismatch():
  spec, variables = _spec()
  params = dict(variables["params"])
  params["fc2"] = {"kernel": jnp.zeros((64, 64, 1)), "bias": jnp.zeros((64,))}
  with pytest.raises(ValueError, match=r"params/fc2/kernel.*rank 3"):
    perm.validate(spec, {"params": params})


def test_validate_group_size_mismatch():
  spec, variables = _spec()
  params = dict(variables["params"])
  params["fc2"] = {"kernel": jnp.zeros((64, 64)), "bias": jnp.zeros((65,))}
  with pytest.raises(ValueError, match=r"params/fc2/bias.*65"):
    perm.validate(spec, {"params": params})


def test_spec_with_two_sizes_for_group():
  axes = {"params/a/kernel": ("g", None), "params/b/kernel": (None, "g")}
  spec = perm.PermutationSpec(axes=axes, sizes={"g": 3})
  variables = {"params": {"a": {"kernel": jnp.zeros((3, 2))},
                          "b": {"kernel": jnp.zeros((2, 4))}}}
  with pytest.raises(ValueError, match=r"'g'.*params/b/kernel.*4"):
    perm.validate(spec, variables)


def test_validate_accepts_params_alone():
  spec, variables = _spec(batch_norm=True)
  perm.validate(spec, {"params": variables["params"]})


def test_validate_rejects_bare_params():
  spec, variables = _spec()
  with pytest.raises(ValueError, match="not a collection of the spec"):
    perm.validate(spec, variables["params"])


def test_spec_is_frozen():
  spec, _ = _spec()
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.sizes = {}
  with pytest.raises(TypeError):
    spec.sizes["fc1"] = 3


def test_spec_pickles_and_hashes():
  spec, _ = _spec(batch_norm=True, size=64)
  restored = pickle.loads(pickle.dumps(spec))
  assert restored == spec
  assert hash(restored) == hash(spec)
  assert restored.num_copies("params/fc1/kernel", 0) == 4
