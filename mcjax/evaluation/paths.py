"""Loss and error along a curve and along the straight line between endpoints.

`evaluate_curve` evaluates the networks theta(t) at T evenly spaced t
(default 61, as in Garipov et al. 2018, "Loss Surfaces, Mode Connectivity,
and Fast Ensembling of DNNs"): train loss, nll and error on the training
split and nll and error on the test split, several t per pass over the data.
`evaluate_line` does the same for the straight line between two networks,
the baseline a curve is compared with.

Batch norm: the running statistics at every interior t are recomputed on the
training split (`passes.recompute_batch_stats`), because the endpoints'
statistics do not describe the activations of a point between them. At
t = 0 and t = 1 the endpoints' own statistics are used when given, so those
two points are the endpoints themselves.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mcjax import curves
from mcjax import pytrees
from mcjax.data import core
from mcjax.evaluation import geometry
from mcjax.evaluation import passes
from mcjax.evaluation import summary as summary_lib

PyTree = Any


@jax.jit
def _points(bends: PyTree, coeffs: jax.Array) -> tuple[PyTree, jax.Array]:
  """Returns theta at every row of coeffs (stacked) and ||theta||^2 of each."""
  params = jax.vmap(curves.combine, in_axes=(None, 0))(bends, coeffs)
  squared_norms = sum(
      jnp.sum(jnp.square(leaf.reshape(leaf.shape[0], -1)), axis=1)
      for leaf in jax.tree.leaves(params))
  return params, squared_norms


def _has_batch_norm(model: nn.Module, image_shape) -> bool:
  return "batch_stats" in passes.variable_shapes(model, tuple(image_shape))


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
  if not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(
        f"{name}={value!r} is invalid; pass an integer of at least {minimum}.")


def _check_endpoint_stats(model: nn.Module, image_shape,
                          batch_stats) -> None:
  if not _has_batch_norm(model, image_shape):
    raise ValueError(
        "batch_stats were given but the model has no batch norm; pass "
        "batch_stats=None.")
  if not isinstance(batch_stats, (tuple, list)) or len(batch_stats) != 2:
    raise ValueError(
        "batch_stats must be a pair (stats at t = 0, stats at t = 1), got "
        f"{type(batch_stats).__name__}.")
  expected = passes.zero_batch_stats(model, image_shape)
  for index, stats in enumerate(batch_stats):
    mismatch = pytrees.first_mismatch(expected, stats)
    if mismatch is not None:
      raise ValueError(
          f"batch_stats[{index}] does not match the model's batch_stats "
          f"(first is the model's): {mismatch}.")


def _chunks(num_points: int, points_per_pass: int) -> list[np.ndarray]:
  """Splits range(num_points) into passes of equal padded size.

  Every pass gets the same number of slots, so one compiled step serves all
  of them; a short last pass repeats its last point and drops the copies.
  """
  num_passes = -(-num_points // points_per_pass)
  size = -(-num_points // num_passes)
  return [np.arange(start, min(start + size, num_points))
          for start in range(0, num_points, size)]


def evaluate_curve(model: nn.Module, dataset: core.Dataset,
                   curve: curves.Curve, *, batch_stats=None,
                   num_points: int = 61, weight_decay: float = 0.0,
                   batch_size: int = 128, bn_batches: int | None = None,
                   points_per_pass: int | None = None,
                   vmap_points: int | None = None,
                   memory_budget_bytes: int | None = None,
                   test_split: str = "test", name: str = "curve",
                   progress: bool = True) -> summary_lib.PathEvaluation:
  """Evaluates the networks at `num_points` evenly spaced t along a curve.

  Each pass over a split serves `points_per_pass` points at once. Their
  parameters theta(t) are built together, and every batch of the split runs
  through the model for each of them (`passes.metric_sums`). Results do not
  depend on how the points are grouped, up to float32 rounding. The training
  split is evaluated without augmentation, in inference mode.

  Args:
    model: a Flax module called as `model.apply(variables, x, train=...)`
      that returns logits; x is the split's images passed through
      `transforms.normalize(images, dataset.mean, dataset.std)`.
    dataset: supplies the training split and `test_split`.
    curve: the curve; its bends are a params pytree with a leading bend axis.
    batch_stats: for a batch-norm model, the pair (batch_stats at t = 0,
      batch_stats at t = 1) used at the two endpoints; statistics at interior
      t are always recomputed. None recomputes them at every t, the endpoints
      included (as dnn-mode-connectivity's eval_curve.py does). Must be None
      for a model without batch norm.
    num_points: T >= 2; t = linspace(0, 1, T).
    weight_decay: wd in train_loss = train_nll + 0.5 * wd * ||theta(t)||^2,
      the L2 term of "reg" curve training over all params; 0 reports the
      plain nll as the train loss.
    batch_size: examples per batch, for evaluation and for the train-mode
      batch-norm pass (use the training batch size, since train-mode batch
      statistics depend on it).
    bn_batches: training batches for the batch-norm pass (default: all).
    points_per_pass: points per pass (default `passes.choose_points_per_pass`
      with the memory budget).
    vmap_points: points per vmapped model call inside a pass (default
      `passes.default_vmap_points`: all of them on accelerators, 1 on CPU).
    memory_budget_bytes: bytes a pass may use when `points_per_pass` is None
      (default `passes.default_memory_budget()`).
    test_split: "test", or "validation" where the dataset has one.
    name: the path's name in the result, logs and progress bar.
    progress: show a tqdm progress bar over passes.

  Returns:
    A `summary.PathEvaluation` with every series in `summary.SERIES`.

  Raises:
    ValueError: for num_points < 2, a non-positive batch size or pass size,
      an unknown split, or batch_stats that do not fit the model.
  """
  _check_positive_int("num_points", num_points, minimum=2)
  passes.check_batch_size(batch_size)
  if points_per_pass is not None:
    _check_positive_int("points_per_pass", points_per_pass)
  if vmap_points is not None:
    _check_positive_int("vmap_points", vmap_points)
  if weight_decay < 0:
    raise ValueError(
        f"weight_decay={weight_decay!r} is invalid; pass a value >= 0.")
  train = dataset.train
  test = dataset.split(test_split)
  image_shape = tuple(train.images.shape[1:])
  has_batch_norm = _has_batch_norm(model, image_shape)
  if batch_stats is not None:
    _check_endpoint_stats(model, image_shape, batch_stats)
  if vmap_points is None and jax.default_backend() == "cpu":
    vmap_points = passes.default_vmap_points(num_points)

  t = np.linspace(0.0, 1.0, num_points)
  coeffs = np.asarray(jax.vmap(
      lambda s: curves.coefficients(curve.kind, s, curve.num_bends))(
          jnp.asarray(t, jnp.float32)))
  if points_per_pass is None:
    start_variables = {"params": curves.endpoints(curve)[0]}
    if has_batch_norm:
      start_variables["batch_stats"] = passes.zero_batch_stats(
          model, image_shape)
    points_per_pass = passes.choose_points_per_pass(
        model, start_variables, image_shape, batch_size=batch_size,
        num_points=num_points, vmap_points=vmap_points,
        memory_budget_bytes=memory_budget_bytes)
  chunks = _chunks(num_points, points_per_pass)
  slots = chunks[0].size
  logging.info("Evaluating %s (%s, %d bends including the endpoints) at %d "
               "t, in %d group(s) of up to %d points per pass over the data; "
               "batch norm: %s", name, curve.kind, curve.num_bends,
               num_points, len(chunks), slots,
               "recomputed" if has_batch_norm else "none")

  sums = {key: np.zeros(num_points) for key in
          ("train_nll", "train_correct", "test_nll", "test_correct",
           "squared_norm")}
  bn_passes = 1 if has_batch_norm else 0
  bar = tqdm.tqdm(total=len(chunks) * (2 + bn_passes), desc=f"evaluate {name}",
                  unit="pass", disable=not progress)
  for chunk in chunks:
    padded = np.concatenate([chunk, np.full(slots - chunk.size, chunk[-1])])
    params, squared_norms = _points(curve.bends, jnp.asarray(coeffs[padded]))
    stats = None
    if has_batch_norm:
      stats = _chunk_batch_stats(model, dataset, params, t[padded],
                                 batch_stats, batch_size, bn_batches,
                                 vmap_points, bar)
    train_nll, train_correct = passes.metric_sums(
        model, train, params, stats, mean=dataset.mean, std=dataset.std,
        batch_size=batch_size, vmap_points=vmap_points)
    bar.update()
    test_nll, test_correct = passes.metric_sums(
        model, test, params, stats, mean=dataset.mean, std=dataset.std,
        batch_size=batch_size, vmap_points=vmap_points)
    bar.update()
    count = chunk.size
    sums["train_nll"][chunk] = train_nll[:count]
    sums["train_correct"][chunk] = train_correct[:count]
    sums["test_nll"][chunk] = test_nll[:count]
    sums["test_correct"][chunk] = test_correct[:count]
    sums["squared_norm"][chunk] = np.asarray(squared_norms, np.float64)[:count]
  bar.close()

  result = summary_lib.PathEvaluation(
      name=name, kind=curve.kind, num_bends=curve.num_bends, t=t,
      series=_series(sums, len(train), len(test), weight_decay),
      arc_weights=geometry.arc_weights(curve, t), weight_decay=weight_decay,
      batch_norm=_batch_norm_note(has_batch_norm, batch_stats, bn_batches))
  _log_path(result)
  return result


def _chunk_batch_stats(model, dataset, params, t_chunk, batch_stats,
                       batch_size, bn_batches, vmap_points, bar) -> PyTree:
  """Returns stacked batch_stats for one pass: recomputed, or the endpoints'."""
  is_start = t_chunk == 0.0
  is_end = t_chunk == 1.0
  endpoint_only = batch_stats is not None and np.all(is_start | is_end)
  if endpoint_only:
    recomputed = jax.tree.map(
        lambda leaf: jnp.zeros((t_chunk.size, *leaf.shape), leaf.dtype),
        batch_stats[0])
  else:
    recomputed = passes.recompute_batch_stats(
        model, dataset.train, params, mean=dataset.mean, std=dataset.std,
        batch_size=batch_size, num_batches=bn_batches,
        vmap_points=vmap_points)
  bar.update()
  if batch_stats is None:
    return recomputed

  def select(recomputed_leaf, start_leaf, end_leaf):
    shape = (-1,) + (1,) * start_leaf.ndim
    start = jnp.asarray(is_start).reshape(shape)
    end = jnp.asarray(is_end).reshape(shape)
    return jnp.where(start, start_leaf[None],
                     jnp.where(end, end_leaf[None], recomputed_leaf))

  return jax.tree.map(select, recomputed, *batch_stats)


def _series(sums: dict[str, np.ndarray], num_train: int, num_test: int,
            weight_decay: float) -> dict[str, np.ndarray]:
  train_nll = sums["train_nll"] / num_train
  train_accuracy = 100.0 * sums["train_correct"] / num_train
  test_accuracy = 100.0 * sums["test_correct"] / num_test
  return {
      "train_loss": train_nll + 0.5 * weight_decay * sums["squared_norm"],
      "train_nll": train_nll,
      "train_error": 100.0 - train_accuracy,
      "train_accuracy": train_accuracy,
      "test_nll": sums["test_nll"] / num_test,
      "test_error": 100.0 - test_accuracy,
      "test_accuracy": test_accuracy,
      "param_norm": np.sqrt(sums["squared_norm"]),
  }


def _batch_norm_note(has_batch_norm: bool, batch_stats, bn_batches) -> str:
  if not has_batch_norm:
    return "none"
  batches = "all" if bn_batches is None else f"the first {bn_batches}"
  where = ("at every t" if batch_stats is None
           else "at interior t; the endpoints' own statistics at t = 0 and 1")
  return f"recomputed on {batches} training batches {where}"


def _log_path(result: summary_lib.PathEvaluation) -> None:
  test_error = result.series["test_error"]
  train_loss = result.series["train_loss"]
  logging.info(
      "%s: length %.6g; test error max %.2f%% (barrier %.2f); train loss "
      "max %.4f (barrier %.4f)", result.name, result.length,
      np.max(test_error), summary_lib.barrier(test_error), np.max(train_loss),
      summary_lib.barrier(train_loss))


def evaluate_line(model: nn.Module, dataset: core.Dataset, variables_0: PyTree,
                  variables_1: PyTree, *, num_points: int = 61,
                  name: str = "line", **kwargs) -> summary_lib.PathEvaluation:
  """Evaluates the straight line (1 - t) theta_0 + t theta_1, the baseline.

  The line is the Bezier curve with 2 bends, evaluated as `evaluate_curve`
  does: interior batch-norm statistics are recomputed, and the endpoints use
  their own `batch_stats` when `variables_0` and `variables_1` contain them.

  Args:
    model: the Flax module.
    dataset: supplies the training and test splits.
    variables_0: {'params': ..., 'batch_stats': ...?} of the start network.
    variables_1: the same for the end network.
    num_points: T >= 2.
    name: the path's name in the result.
    **kwargs: any other keyword argument of `evaluate_curve` except
      `batch_stats`, which comes from the variables.

  Returns:
    A `summary.PathEvaluation` with kind "bezier" and 2 bends.
  """
  if "batch_stats" in kwargs:
    raise ValueError(
        "evaluate_line takes batch_stats from variables_0 and variables_1; "
        "do not pass batch_stats.")
  has_stats = ["batch_stats" in v for v in (variables_0, variables_1)]
  if has_stats[0] != has_stats[1]:
    raise ValueError(
        "Only one of variables_0 and variables_1 has batch_stats; pass both "
        "or neither.")
  batch_stats = ((variables_0["batch_stats"], variables_1["batch_stats"])
                 if has_stats[0] else None)
  # Jitted, because eager ops compile once per leaf shape.
  line = jax.jit(curves.bezier, static_argnames="num_bends")(
      variables_0["params"], variables_1["params"], num_bends=2)
  return evaluate_curve(model, dataset, line, batch_stats=batch_stats,
                        num_points=num_points, name=name, **kwargs)
