"""Passes over a dataset split for a stack of parameter points.

A pass walks a split once in fixed-size batches and serves every parameter
point of a stack (the points of a curve at several t) from the same batch, so
the batch is sliced and normalised once per pass instead of once per point.
Inside a batch the points run either through `jax.vmap` (one batched model
call) or through `jax.lax.map` in groups of `vmap_points`.

The last batch of a split whose size is not a multiple of the batch size is
the final `batch_size` examples with the already-counted ones masked out, so
every example counts exactly once and one compiled step serves every batch.
The batch-norm pass cannot mask (a masked example would still shift the batch
statistics), so it runs its last partial batch at its true size.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcjax.data import core
from mcjax.data import transforms

PyTree = Any

# Flax collection that the batch-norm interceptor sows per-batch moments into.
MOMENTS_COLLECTION = "batch_norm_moments"
# Budget for `choose_points_per_pass` when the device reports no memory limit
# (XLA's CPU backend). A fixed default, not a measured limit of any machine.
DEFAULT_HOST_BUDGET_BYTES = 2 * 1024**3
# Fraction of an accelerator's reported memory limit used by default; the rest
# is left for the dataset, the curve's bends and XLA's scratch space.
DEFAULT_DEVICE_FRACTION = 0.25


def default_vmap_points(points_per_pass: int) -> int:
  """Returns how many points of a pass run as one vmapped model call.

  On accelerators the whole pass is one vmapped call. On the CPU the points
  run one after another (`jax.lax.map`), because XLA's CPU backend lowers a
  convolution vmapped over its kernel to a grouped convolution that took about
  3x longer per point than a plain one (VGG16 at width 1/8, batch 128, 4 to
  16 points; jax 0.10.2 on a loaded 2-core machine).
  """
  if jax.default_backend() == "cpu":
    return 1
  return points_per_pass


def map_points(fn, xs: PyTree, vmap_points: int):
  """Applies `fn` to every slice of `xs` along axis 0, `vmap_points` at a time."""
  num_points = jax.tree.leaves(xs)[0].shape[0]
  if vmap_points >= num_points:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=vmap_points if vmap_points > 1 else None)


def check_batch_size(batch_size: int) -> None:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(
        f"batch_size={batch_size!r} is invalid; pass a positive integer.")


@functools.partial(jax.jit, static_argnames=("size",))
def _window(images: jax.Array, labels: jax.Array, start, size: int):
  """Returns `size` examples from `start`, clamped to the split, and a mask.

  `lax.dynamic_slice` moves a window that would run past the end back to the
  last `size` examples; the mask keeps only indices >= start, so examples
  that an earlier batch already counted are excluded.
  """
  window_images = jax.lax.dynamic_slice_in_dim(images, start, size)
  window_labels = jax.lax.dynamic_slice_in_dim(labels, start, size)
  first = jnp.minimum(start, images.shape[0] - size)
  mask = first + jnp.arange(size) >= start
  return window_images, window_labels, mask


@functools.partial(
    jax.jit, static_argnames=("model", "mean", "std", "vmap_points"))
def _metric_sums_step(model: nn.Module, mean: tuple[float, ...],
                      std: tuple[float, ...], vmap_points: int, params: PyTree,
                      batch_stats: PyTree | None, images: jax.Array,
                      labels: jax.Array, mask: jax.Array):
  x = transforms.normalize(images, mean, std)

  def one_point(point):
    point_params, point_stats = point
    variables = {"params": point_params}
    if point_stats is not None:
      variables["batch_stats"] = point_stats
    logits = model.apply(variables, x, train=False)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels) & mask
    return (jnp.sum(jnp.where(mask, nll, 0.0)),
            jnp.sum(correct.astype(jnp.int32)))

  return map_points(one_point, (params, batch_stats), vmap_points)


def metric_sums(model: nn.Module, split: core.Split, params: PyTree,
                batch_stats: PyTree | None, *, mean, std, batch_size: int,
                vmap_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Sums the cross-entropy and counts correct predictions over a split.

  The model runs in inference mode (`train=False`): dropout is off and batch
  norm uses the given running statistics.

  Args:
    model: a Flax module called as `model.apply(variables, x, train=False)`
      that returns logits of shape (batch, num_classes).
    split: the examples; its images are uint8 (N, H, W, C).
    params: a params pytree whose every leaf has a leading axis of length P,
      one entry per parameter point.
    batch_stats: a batch_stats pytree stacked the same way, or None for a
      model without batch norm.
    mean: per-channel mean for `transforms.normalize`.
    std: per-channel standard deviation for `transforms.normalize`.
    batch_size: examples per batch; a split smaller than this is one batch.
    vmap_points: points per vmapped model call (default
      `default_vmap_points(P)`).

  Returns:
    (nll_sum, num_correct): float64 and int64 arrays of shape (P,), the sum of
    the per-example cross-entropy and the number of correct argmax
    predictions over all N examples.
  """
  check_batch_size(batch_size)
  num_points = jax.tree.leaves(params)[0].shape[0]
  if vmap_points is None:
    vmap_points = default_vmap_points(num_points)
  num_examples = len(split)
  size = min(batch_size, num_examples)
  nll_sum = jnp.zeros((num_points,), jnp.float32)
  num_correct = jnp.zeros((num_points,), jnp.int32)
  for start in range(0, num_examples, size):
    images, labels, mask = _window(split.images, split.labels, start, size)
    batch_nll, batch_correct = _metric_sums_step(
        model, tuple(mean), tuple(std), vmap_points, params, batch_stats,
        images, labels, mask)
    nll_sum = nll_sum + batch_nll
    num_correct = num_correct + batch_correct
  return (np.asarray(nll_sum, np.float64), np.asarray(num_correct, np.int64))


def _sow_batch_norm_moments(next_fun, args, kwargs, context):
  """Records the mean and variance of every BatchNorm input over its batch."""
  module = context.module
  if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
    if kwargs.get("mask") is not None:
      raise ValueError(
          f"BatchNorm {module.name!r} was called with a mask; recomputing "
          "batch-norm statistics supports unmasked batch norm only.")
    x = args[0]
    feature_axes = {axis % x.ndim for axis in np.atleast_1d(module.axis)}
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    batch_mean = jnp.mean(x, axis=reduction_axes)
    batch_var = jnp.mean(
        jnp.square(x - jnp.expand_dims(batch_mean, reduction_axes)),
        axis=reduction_axes)
    module.sow(MOMENTS_COLLECTION, "mean", batch_mean)
    module.sow(MOMENTS_COLLECTION, "var", batch_var)
  return next_fun(*args, **kwargs)


def _unpack_sown(sown: PyTree) -> PyTree:
  """Turns the sown 1-tuples into arrays, raising for a BatchNorm called twice."""

  def unpack(path, values):
    if len(values) != 1:
      raise ValueError(
          f"BatchNorm at {jax.tree_util.keystr(path)} ran {len(values)} times "
          "in one forward pass; recomputing statistics needs each BatchNorm "
          "module to run once.")
    return values[0]

  return jax.tree_util.tree_map_with_path(
      unpack, sown, is_leaf=lambda node: isinstance(node, tuple))


@functools.partial(
    jax.jit, static_argnames=("model", "mean", "std", "vmap_points"))
def _batch_moments_step(model: nn.Module, mean: tuple[float, ...],
                        std: tuple[float, ...], vmap_points: int,
                        params: PyTree, template: PyTree, images: jax.Array,
                        key: jax.Array):
  x = transforms.normalize(images, mean, std)

  def one_point(point_params):
    with nn.intercept_methods(_sow_batch_norm_moments):
      _, state = model.apply(
          {"params": point_params, "batch_stats": template}, x, train=True,
          mutable=["batch_stats", MOMENTS_COLLECTION], rngs={"dropout": key})
    return _unpack_sown(state[MOMENTS_COLLECTION])

  return map_points(one_point, params, vmap_points)


@jax.jit
def _merge_moments(running: PyTree, batch: PyTree, fraction):
  """Pools running (mean, var) over earlier examples with one batch's.

  With f the batch's share of all examples so far, the pooled moments are
  mean + f * delta and (1 - f) var + f var_b + f (1 - f) delta^2, where delta
  is the difference of the two means: the exact mean and (biased) variance
  over the union of the examples.
  """

  def merge(stats, batch_stats):
    delta = batch_stats["mean"] - stats["mean"]
    return {
        "mean": stats["mean"] + fraction * delta,
        "var": ((1.0 - fraction) * stats["var"] + fraction * batch_stats["var"]
                + fraction * (1.0 - fraction) * jnp.square(delta)),
    }

  is_pair = lambda node: isinstance(node, dict) and set(node) == {"mean", "var"}
  return jax.tree.map(merge, running, batch, is_leaf=is_pair)


@functools.lru_cache(maxsize=32)
def variable_shapes(model: nn.Module, image_shape: tuple[int, ...]) -> PyTree:
  """Returns the ShapeDtypeStruct tree of `model.init` on one example."""
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)),
                         train=False))


def zero_batch_stats(model: nn.Module, image_shape) -> PyTree:
  """Returns a batch_stats pytree of zeros shaped like the model's."""
  shapes = variable_shapes(model, tuple(image_shape))
  if "batch_stats" not in shapes:
    raise ValueError(
        f"{type(model).__name__} has no batch_stats collection; batch-norm "
        "statistics apply only to a model with nn.BatchNorm layers.")
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                      shapes["batch_stats"])


def recompute_batch_stats(model: nn.Module, split: core.Split, params: PyTree,
                          *, mean, std, batch_size: int,
                          num_batches: int | None = None,
                          vmap_points: int | None = None) -> PyTree:
  """Recomputes batch-norm running statistics for a stack of parameter points.

  One pass over the first `num_batches` batches of `split`, in order, with
  the model in train mode: each BatchNorm normalises with the statistics of
  its current batch, as in training, and the pass records the mean and the
  biased variance of every BatchNorm input. The result is the pooled mean and
  pooled variance of those inputs over every example of the pass, each example
  weighted equally; the last partial batch runs at its true size.

  The reference (`update_bn` in github.com/timgaripov/dnn-mode-connectivity,
  utils.py) runs the same pass with PyTorch's cumulative averaging: its mean
  is this pooled mean, but its variance averages the per-batch unbiased
  variances, which differs from the pooled variance by the factor
  n / (n - 1) and by the spread of the batch means.

  Args:
    model: a Flax module with `nn.BatchNorm` layers, each run once per call,
      whose statistics are in the `batch_stats` collection. Dropout gets a
      fixed key, `jax.random.key(0)` folded with the batch index.
    split: the examples, normally the training split without augmentation.
    params: a params pytree whose every leaf has a leading axis of length P.
    mean: per-channel mean for `transforms.normalize`.
    std: per-channel standard deviation for `transforms.normalize`.
    batch_size: examples per train-mode batch. The statistics depend on it,
      because every BatchNorm normalises with the moments of its own batch
      and so changes what the later layers see; use the training batch size.
    num_batches: batches to use from the start of the split (default: all,
      the partial last batch included).
    vmap_points: points per vmapped model call (default
      `default_vmap_points(P)`).

  Returns:
    A batch_stats pytree whose leaves `mean` and `var` have a leading axis of
    length P.
  """
  check_batch_size(batch_size)
  num_examples = len(split)
  total_batches = -(-num_examples // batch_size)
  if num_batches is None:
    num_batches = total_batches
  if (not isinstance(num_batches, (int, np.integer)) or num_batches < 1
      or num_batches > total_batches):
    raise ValueError(
        f"num_batches={num_batches!r} is invalid for a split of "
        f"{num_examples} examples in batches of {batch_size}; pass an integer "
        f"from 1 to {total_batches}, or None for all.")
  num_points = jax.tree.leaves(params)[0].shape[0]
  if vmap_points is None:
    vmap_points = default_vmap_points(num_points)

  template = zero_batch_stats(model, split.images.shape[1:])
  running = jax.tree.map(
      lambda leaf: jnp.zeros((num_points, *leaf.shape), jnp.float32), template)
  seen = 0
  for index in range(num_batches):
    start = index * batch_size
    stop = min(start + batch_size, num_examples)
    images, _, _ = _window(split.images, split.labels, start, stop - start)
    key = jax.random.fold_in(jax.random.key(0), index)
    moments = _batch_moments_step(model, tuple(mean), tuple(std), vmap_points,
                                  params, template, images, key)
    if jax.tree.structure(moments) != jax.tree.structure(running):
      raise ValueError(
          "The BatchNorm inputs recorded in train mode do not match the "
          "model's batch_stats collection; every entry of batch_stats must "
          "come from an nn.BatchNorm run once per call.")
    fraction = (stop - start) / (seen + stop - start)
    running = _merge_moments(running, moments, np.float32(fraction))
    seen += stop - start
  return running


def activation_bytes_per_example(model: nn.Module, variables: PyTree,
                                 image_shape) -> int:
  """Returns the bytes of every module output for one example.

  The count comes from `jax.eval_shape` with `capture_intermediates=True`, so
  nothing runs. It sums all outputs, an upper bound on what is live at once,
  since XLA frees an activation once its consumers have run.
  """
  shapes = jax.eval_shape(
      lambda: model.apply(variables, jnp.zeros((1, *image_shape)), train=False,
                          capture_intermediates=True,
                          mutable=["intermediates"]))
  _, state = shapes
  return int(sum(leaf.size * leaf.dtype.itemsize
                 for leaf in jax.tree.leaves(state["intermediates"])))


def default_memory_budget() -> int:
  """Returns the default bytes a pass may use on the first local device.

  `DEFAULT_DEVICE_FRACTION` of the device's reported `bytes_limit` where the
  backend reports one (GPUs, TPUs), else `DEFAULT_HOST_BUDGET_BYTES`.
  """
  stats = None
  try:
    stats = jax.local_devices()[0].memory_stats()
  except NotImplementedError:  # Some backends do not report memory.
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(DEFAULT_DEVICE_FRACTION * stats["bytes_limit"])
  return DEFAULT_HOST_BUDGET_BYTES


def choose_points_per_pass(model: nn.Module, variables: PyTree, image_shape,
                           *, batch_size: int, num_points: int,
                           vmap_points: int | None = None,
                           memory_budget_bytes: int | None = None) -> int:
  """Returns how many parameter points one pass should evaluate.

  A pass holds P copies of the variables and the activations of
  min(P, vmap_points) vmapped model calls on one batch, so with
  p = bytes of `variables` and a = `activation_bytes_per_example`:

      P * p + min(P, vmap_points) * batch_size * a <= budget,

  with vmap_points = P when None (the accelerator default). The result is
  the largest such P, clipped to [1, num_points].

  Args:
    model: the Flax module.
    variables: one point's variables, {'params': ...} and maybe
      {'batch_stats': ...}.
    image_shape: (H, W, C) of one example.
    batch_size: examples per batch.
    num_points: number of points to evaluate in all.
    vmap_points: points per vmapped model call, or None for all of a pass.
    memory_budget_bytes: bytes a pass may use (default
      `default_memory_budget()`).
  """
  budget = (default_memory_budget() if memory_budget_bytes is None
            else int(memory_budget_bytes))
  variable_bytes = sum(np.size(leaf) * jnp.asarray(leaf).dtype.itemsize
                       for leaf in jax.tree.leaves(variables))
  batch_bytes = batch_size * activation_bytes_per_example(
      model, variables, image_shape)
  if vmap_points is None:
    fitting = budget // (variable_bytes + batch_bytes)
  else:
    fitting = (budget - min(vmap_points, num_points) * batch_bytes) // (
        variable_bytes)
  return int(np.clip(fitting, 1, num_points))
