"""Tests for permutations as data: apply, compose, invert, reverse, swap."""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcjax import models
from mcjax import permutations as perm
from mcjax import pytrees
import permutation_models

_SETTINGS = hypothesis.settings(
    max_examples=3, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])

# (batch_norm, image size, blocks): the plain and batch-norm VGG16 at 32px
# (1x1 map before fc1) and a three-block VGG with batch norm, whose fc1
# reads a 4x4 map.
_VARIANTS = {
    "vgg16": (False, 32, models.VGG16_BLOCKS),
    "vgg16_bn": (True, 32, models.VGG16_BLOCKS),
    "vgg3_blocks_bn": (True, 32, models.VGG16_BLOCKS[:3]),
}


@functools.lru_cache(maxsize=None)
def _setup(variant):
  batch_norm, size, blocks = _VARIANTS[variant]
  model, variables, images = permutation_models.vgg_setup(
      batch_norm=batch_norm, size=size, blocks=blocks)
  spec = perm.infer_spec(model, variables, images)
  forward = jax.jit(functools.partial(model.apply, train=False))
  return spec, variables, images, forward, forward(variables, images)


def _assert_same_function(variant, p):
  spec, variables, images, forward, logits = _setup(variant)
  permuted_logits = forward(perm.apply(spec, p, variables), images)
  np.testing.assert_allclose(permuted_logits, logits, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(jnp.argmax(permuted_logits, -1),
                                jnp.argmax(logits, -1))


def _assert_trees_equal(a, b):
  flat_a, flat_b = pytrees.flatten_with_names(a), pytrees.flatten_with_names(b)
  assert list(flat_a) == list(flat_b)
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=path)


@pytest.mark.parametrize("variant", list(_VARIANTS))
@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_random_permutation_keeps_logits(variant, seed):
  spec = _setup(variant)[0]
  _assert_same_function(variant, perm.random(spec, jax.random.key(seed)))


@pytest.mark.parametrize("variant", ["vgg16_bn", "vgg3_blocks_bn"])
@_SETTINGS
@hypothesis.given(data=st.data())
def test_swap_keeps_logits(variant, data):
  spec = _setup(variant)[0]
  layer = data.draw(st.sampled_from(spec.layers), label="layer")
  n = spec.sizes[layer]
  num_pairs = data.draw(st.integers(1, n // 2), label="num_pairs")
  seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
  _assert_same_function(
      variant, perm.swap(spec, layer, num_pairs=num_pairs, seed=seed))


@pytest.mark.parametrize("variant", ["vgg16", "vgg3_blocks_bn"])
def test_reverse_keeps_logits(variant):
  _assert_same_function(variant, perm.reverse(_setup(variant)[0]))


def test_random_permutation_changes_weights():
  spec, variables = _setup("vgg16_bn")[:2]
  permuted = perm.apply(spec, perm.random(spec, jax.random.key(0)), variables)
  kernel = variables["params"]["block2_conv1"]["kernel"]
  assert not np.array_equal(permuted["params"]["block2_conv1"]["kernel"],
                            kernel)


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_invert_undoes_apply(seed):
  spec, variables = _setup("vgg3_blocks_bn")[:2]
  p = perm.random(spec, jax.random.key(seed))
  restored = perm.apply(spec, perm.invert(p), perm.apply(spec, p, variables))
  _assert_trees_equal(restored, variables)


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_compose_with_inverse_is_identity(seed):
  spec = _setup("vgg16")[0]
  p = perm.random(spec, jax.random.key(seed))
  _assert_trees_equal(perm.compose(p, perm.invert(p)), perm.identity(spec))
  _assert_trees_equal(perm.compose(perm.invert(p), p), perm.identity(spec))


@_SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31 - 1))
def test_compose_is_associative(seed):
  spec = _setup("vgg16")[0]
  key = jax.random.key(seed)
  p, q, r = (perm.random(spec, jax.random.fold_in(key, i)) for i in range(3))
  _assert_trees_equal(perm.compose(perm.compose(p, q), r),
                      perm.compose(p, perm.compose(q, r)))


def test_compose_order_convention():
  spec, variables = _setup("vgg3_blocks_bn")[:2]
  p = perm.random(spec, jax.random.key(1))
  q = perm.random(spec, jax.random.key(2))
  _assert_trees_equal(
      perm.apply(spec, perm.compose(p, q), variables),
      perm.apply(spec, p, perm.apply(spec, q, variables)))


def test_compose_of_small_arrays():
  p = {"g": jnp.array([1, 2, 0])}
  q = {"g": jnp.array([2, 0, 1])}
  # q acts first: unit i of the result is unit q[p[i]] of the input.
  np.testing.assert_array_equal(perm.compose(p, q)["g"], [0, 1, 2])
  np.testing.assert_array_equal(perm.compose(p, p)["g"], [2, 0, 1])


def test_reverse_twice_is_identity():
  spec = _setup("vgg16")[0]
  r = perm.reverse(spec)
  _assert_trees_equal(perm.compose(r, r), perm.identity(spec))
  np.testing.assert_array_equal(r["block0_conv0"], np.arange(8)[::-1])


def test_identity_keeps_variables():
  spec, variables = _setup("vgg16_bn")[:2]
  _assert_trees_equal(perm.apply(spec, perm.identity(spec), variables),
                      variables)


def test_permutations_are_int32():
  spec = _setup("vgg16")[0]
  for p in [perm.identity(spec), perm.reverse(spec),
            perm.random(spec, jax.random.key(0)),
            perm.swap(spec, "mid", seed=0)]:
    assert all(index.dtype == jnp.int32 for index in p.values())


def test_random_is_deterministic():
  spec = _setup("vgg16")[0]
  _assert_trees_equal(perm.random(spec, jax.random.key(7)),
                      perm.random(spec, jax.random.key(7)))


def test_apply_under_jit_matches_eager():
  spec, variables = _setup("vgg3_blocks_bn")[:2]
  p = perm.random(spec, jax.random.key(3))
  jitted = jax.jit(functools.partial(perm.apply, spec))(p, variables)
  _assert_trees_equal(jitted, perm.apply(spec, p, variables))


def test_apply_params_alone_for_batch_norm_spec():
  spec, variables = _setup("vgg16_bn")[:2]
  p = perm.random(spec, jax.random.key(3))
  permuted = perm.apply(spec, p, {"params": variables["params"]})
  assert set(permuted) == {"params"}
  _assert_trees_equal(permuted["params"],
                      perm.apply(spec, p, variables)["params"])


def test_apply_partial_collection_raises():
  spec, variables = _setup("vgg16_bn")[:2]
  stats = dict(variables["batch_stats"])
  del stats["block2_bn1"]
  with pytest.raises(ValueError, match="batch_stats/block2_bn1"):
    perm.apply(spec, perm.identity(spec),
               {"params": variables["params"], "batch_stats": stats})


def test_flatten_copies_permuted_together():
  # Three blocks leave a 4x4 map of 32 channels: fc1 row (h * 4 + w) * 32 + c
  # is channel c.
  spec, variables = _setup("vgg3_blocks_bn")[:2]
  p = perm.swap(spec, "block2_conv2", pairs=[(0, 5)])
  kernel = np.asarray(variables["params"]["fc1"]["kernel"])
  permuted = perm.apply(spec, p, variables)
  permuted_kernel = np.asarray(permuted["params"]["fc1"]["kernel"])
  expected = kernel.copy()
  for position in range(16):
    rows = [position * 32, position * 32 + 5]
    expected[rows] = kernel[rows[::-1]]
  np.testing.assert_array_equal(permuted_kernel, expected)


@pytest.mark.parametrize("variant", ["vgg16_bn", "vgg3_blocks_bn"])
@_SETTINGS
@hypothesis.given(data=st.data())
def test_swap_changes_only_swapped_slices(variant, data):
  spec, variables = _setup(variant)[:2]
  layer = data.draw(st.sampled_from(spec.layers), label="layer")
  n = spec.sizes[layer]
  i, j = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2,
                            unique=True), label="pair")
  permuted = perm.apply(spec, perm.swap(spec, layer, pairs=[(i, j)]),
                        variables)

  consumer = spec.consumers[layer]
  flat_before = pytrees.flatten_with_names(variables)
  flat_after = pytrees.flatten_with_names(permuted)
  for path, old in flat_before.items():
    old, new = np.asarray(old), np.asarray(flat_after[path])
    groups = spec.axes[path]
    if layer not in groups:
      np.testing.assert_array_equal(new, old, err_msg=path)
      continue
    axis = groups.index(layer)
    copies = spec.num_copies(path, axis)
    if path.rsplit("/", 2)[-2] == consumer:
      assert path.endswith("kernel"), path
    units_old = np.moveaxis(old, axis, 0).reshape(copies, n, -1)
    units_new = np.moveaxis(new, axis, 0).reshape(copies, n, -1)
    others = np.setdiff1d(np.arange(n), [i, j])
    np.testing.assert_array_equal(units_new[:, others], units_old[:, others],
                                  err_msg=path)
    np.testing.assert_array_equal(units_new[:, i], units_old[:, j],
                                  err_msg=path)
    np.testing.assert_array_equal(units_new[:, j], units_old[:, i],
                                  err_msg=path)


def test_swap_touches_expected_paths():
  spec, variables = _setup("vgg16_bn")[:2]
  permuted = perm.apply(spec, perm.swap(spec, "mid", pairs=[(3, 17)]),
                        variables)
  flat_before = pytrees.flatten_with_names(variables)
  flat_after = pytrees.flatten_with_names(permuted)
  changed = {path for path in flat_before
             if not np.array_equal(flat_before[path], flat_after[path])}
  assert changed == {
      "params/block2_conv1/kernel", "params/block2_conv1/bias",
      "params/block2_bn1/scale", "params/block2_bn1/bias",
      "batch_stats/block2_bn1/mean", "batch_stats/block2_bn1/var",
      "params/block2_conv2/kernel"}
  kernel = flat_before["params/block2_conv2/kernel"]
  np.testing.assert_array_equal(
      flat_after["params/block2_conv2/kernel"][:, :, 3], kernel[:, :, 17])


def test_swap_index_array():
  spec = _setup("vgg16")[0]
  p = perm.swap(spec, "block0_conv1", pairs=[(0, 7), (2, 3)])
  np.testing.assert_array_equal(p["block0_conv1"], [7, 1, 3, 2, 4, 5, 6, 0])
  for layer in spec.layers:
    if layer != "block0_conv1":
      np.testing.assert_array_equal(p[layer], np.arange(spec.sizes[layer]))


def test_draw_pairs_reproducible_and_disjoint():
  spec = _setup("vgg16")[0]
  pairs = perm.draw_pairs(spec, "late", num_pairs=5, seed=11)
  assert pairs == perm.draw_pairs(spec, "late", num_pairs=5, seed=11)
  assert pairs != perm.draw_pairs(spec, "late", num_pairs=5, seed=12)
  units = [u for pair in pairs for u in pair]
  assert len(set(units)) == 10
  assert all(type(u) is int and 0 <= u < 64 for u in units)
  p = perm.swap(spec, "late", num_pairs=5, seed=11)
  _assert_trees_equal(p, perm.swap(spec, "block4_conv1", pairs=pairs))


def test_resolve_layer_presets():
  spec = _setup("vgg16")[0]
  assert perm.resolve_layer(spec, "early") == "block0_conv0"
  assert perm.resolve_layer(spec, "mid") == "block2_conv1"
  assert perm.resolve_layer(spec, "late") == "block4_conv1"
  assert perm.resolve_layer(spec, "fc1") == "fc1"


def test_resolve_missing_preset_layer():
  spec = _setup("vgg3_blocks_bn")[0]
  with pytest.raises(ValueError, match="block4_conv1"):
    perm.resolve_layer(spec, "late")


def test_unknown_layer_lists_valid_names():
  spec = _setup("vgg16")[0]
  with pytest.raises(ValueError, match=r"Unknown layer 'conv9'.*block0_conv0"):
    perm.swap(spec, "conv9", pairs=[(0, 1)])


def test_output_layer_raises():
  spec = _setup("vgg16")[0]
  with pytest.raises(ValueError, match="'fc3' is the output layer"):
    perm.swap(spec, "fc3", pairs=[(0, 1)])


@pytest.mark.parametrize("pairs, message", [
    ([(3, 3)], "repeats unit 3"),
    ([(0, 1), (1, 2)], "Unit 1 appears"),
    ([(0, 8)], "outside 0..7"),
    ([(0, 1, 2)], "two units"),
    ([(0, 1), (2, 3), (4, 5), (6, 7), (1, 0)], "1 to 4 disjoint pairs"),
])
def test_invalid_pairs_raise(pairs, message):
  spec = _setup("vgg16")[0]
  with pytest.raises(ValueError, match=message):
    perm.swap(spec, "block0_conv0", pairs=pairs)


def test_too_many_drawn_pairs_raise():
  spec = _setup("vgg16")[0]
  with pytest.raises(ValueError, match="1 to 4 disjoint pairs; got 5"):
    perm.swap(spec, "early", num_pairs=5, seed=0)


def test_swap_without_pairs_or_seed_raises():
  spec = _setup("vgg16")[0]
  with pytest.raises(ValueError, match="explicit pairs or a seed"):
    perm.swap(spec, "early")


@pytest.mark.parametrize("index, message", [
    ([0, 1, 1, 3, 4, 5, 6, 7], r"repeated values \[1\]"),
    ([0, 1, 2, 3, 4, 5, 6, 8], r"out-of-range values \[8\]"),
    ([0, 1, 2], r"shape \(8,\)"),
    ([0.0, 1, 2, 3, 4, 5, 6, 7], "integer array"),
])
def test_check_permutation_rejects(index, message):
  spec = _setup("vgg16")[0]
  p = perm.identity(spec)
  p["block0_conv0"] = jnp.array(index)
  with pytest.raises(ValueError, match=message):
    perm.check_permutation(p, spec)


def test_check_permutation_missing_group():
  spec = _setup("vgg16")[0]
  p = perm.identity(spec)
  del p["fc1"]
  with pytest.raises(ValueError, match=r"missing \['fc1'\]"):
    perm.check_permutation(p, spec)


def test_apply_rejects_non_permutation():
  spec, variables = _setup("vgg16")[:2]
  p = perm.identity(spec)
  p["fc2"] = jnp.zeros(64, jnp.int32)
  with pytest.raises(ValueError, match="'fc2' is not a permutation"):
    perm.apply(spec, p, variables)
