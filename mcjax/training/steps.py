"""Jitted SGD steps for endpoints and curves, and their optimizers.

A training state is a dict pytree:

  {'step': int32 scalar, the number of optimizer steps taken,
   'params': the model parameters (for a curve: its stacked bends),
   'batch_stats': running batch-norm statistics (endpoints with batch norm),
   'opt_state': the optax state,
   'train_sums': {'loss', 'nll', 'errors', 'count'}, float32 sums over the
                 examples seen so far in the current epoch}

The learning rate and the batch position are traced arguments, so runs that
differ only in epochs or learning rate share one compilation. The step
reads its batch from the device-resident training split through a
per-epoch permutation, and derives its augmentation, dropout and t keys from
`jax.random.fold_in(key, step)`, so a run is a function of its seed and the
resumed state alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
import optax

from mcjax import curves
from mcjax import data

PyTree = Any


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static (hashable) settings of a train step; one compilation per value.

  Attributes:
    model: the Flax model.
    mean: per-channel normalisation mean.
    std: per-channel normalisation standard deviation.
    augment: whether to apply random crop and flip.
    batch_size: global batch size.
    momentum: SGD momentum.
    weight_decay: coupled weight decay (endpoints) or the coefficient of the
      0.5 * wd * ||theta(t)||^2 term (curves with "reg").
    batch_sharding: sharding of the batch axis over the `data` mesh axis.
    kind: curve kind, or None for an endpoint step.
    num_bends: number of curve bends (curves only).
    regularization: "reg" or "noreg" (curves only).
    t_per_batch: values of t drawn per batch (curves only).
  """

  model: nn.Module
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool
  batch_size: int
  momentum: float
  weight_decay: float
  batch_sharding: NamedSharding
  kind: str | None = None
  num_bends: int = 0
  regularization: str = "reg"
  t_per_batch: int = 1


def endpoint_optimizer(config: StepConfig,
                       learning_rate) -> optax.GradientTransformation:
  """Returns SGD with momentum and coupled weight decay, as torch.optim.SGD.

  The decay wd * params is added to the gradient of every parameter (kernels,
  biases and batch-norm scales alike, as PyTorch's SGD with `weight_decay`
  does in dnn-mode-connectivity) before the momentum trace.
  """
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(learning_rate, momentum=config.momentum))


def _interior(leaf: jax.Array, num_bends: int) -> jax.Array:
  """Returns a boolean mask broadcastable to `leaf`, False on the end bends."""
  mask = curves.interior_mask(num_bends) > 0
  return mask.reshape((num_bends,) + (1,) * (leaf.ndim - 1))


def zero_end_bends(num_bends: int) -> optax.GradientTransformation:
  """Returns a transformation that sets the updates of bends 0 and n-1 to 0."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(
        lambda u: jnp.where(_interior(u, num_bends), u, jnp.zeros_like(u)),
        updates), state

  return optax.GradientTransformation(init, update)


def curve_optimizer(config: StepConfig,
                    learning_rate) -> optax.GradientTransformation:
  """Returns SGD with momentum over the interior bends of a curve.

  There is no coupled decay: with "reg" the loss carries
  0.5 * wd * ||theta(t)||^2 instead, as in dnn-mode-connectivity. The
  gradient of the end bends is zeroed before the momentum trace, so their
  trace stays 0; the step itself also keeps them bit for bit.
  """
  return optax.chain(
      zero_end_bends(config.num_bends),
      optax.sgd(learning_rate, momentum=config.momentum))


def zero_sums() -> dict[str, jax.Array]:
  """Returns the empty per-epoch training sums."""
  return {name: jnp.zeros((), jnp.float32)
          for name in ("loss", "nll", "errors", "count")}


def _batch(config: StepConfig, images, labels, permutation, position):
  """Gathers batch `position` of the epoch permutation, sharded on `data`."""
  indices = jax.lax.dynamic_slice(
      permutation, (position * config.batch_size,), (config.batch_size,))
  indices = jax.lax.with_sharding_constraint(indices, config.batch_sharding)
  return images[indices], labels[indices]


def _inputs(config: StepConfig, images, key):
  if config.augment:
    images = data.augment(key, images)
  return data.normalize(images, config.mean, config.std)


def _nll_and_errors(logits, labels):
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  errors = jnp.sum(jnp.argmax(logits, axis=-1) != labels).astype(jnp.float32)
  return nll, errors


def _add_sums(sums, loss, nll, errors, batch_size):
  return {"loss": sums["loss"] + loss * batch_size,
          "nll": sums["nll"] + nll * batch_size,
          "errors": sums["errors"] + errors,
          "count": sums["count"] + batch_size}


def endpoint_step(config: StepConfig, state: PyTree, images: jax.Array,
                  labels: jax.Array, permutation: jax.Array, position: jax.Array,
                  key: jax.Array, learning_rate: jax.Array) -> PyTree:
  """Takes one SGD step of a network on the next batch of its epoch.

  Args:
    config: static step settings.
    state: the training state (see the module docstring).
    images: uint8 (num_train, height, width, channels), replicated.
    labels: int32 (num_train,), replicated.
    permutation: int32 (num_train,), this epoch's example order.
    position: int32 scalar, the index of this batch within the epoch; the
      batch is permutation[position * batch_size:][:batch_size].
    key: the run's step key; step s uses `fold_in(key, s)`.
    learning_rate: float32 scalar, the rate of this step's epoch.

  Returns:
    The next state.
  """
  step = state["step"]
  batch_images, batch_labels = _batch(config, images, labels, permutation,
                                      position)
  augment_key, dropout_key = jax.random.split(jax.random.fold_in(key, step))
  x = _inputs(config, batch_images, augment_key)
  has_batch_stats = "batch_stats" in state

  def loss_fn(params):
    variables = {"params": params}
    if has_batch_stats:
      variables["batch_stats"] = state["batch_stats"]
      logits, updates = config.model.apply(
          variables, x, train=True, rngs={"dropout": dropout_key},
          mutable=["batch_stats"])
    else:
      logits = config.model.apply(variables, x, train=True,
                                  rngs={"dropout": dropout_key})
      updates = {}
    nll, errors = _nll_and_errors(logits, batch_labels)
    return nll, (errors, updates)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (nll, (errors, updates)), grads = grad_fn(state["params"])
  tx = endpoint_optimizer(config, learning_rate)
  param_updates, opt_state = tx.update(grads, state["opt_state"],
                                       state["params"])

  new_state = dict(state)
  new_state["step"] = step + 1
  new_state["params"] = optax.apply_updates(state["params"], param_updates)
  new_state["opt_state"] = opt_state
  if has_batch_stats:
    new_state["batch_stats"] = updates["batch_stats"]
  new_state["train_sums"] = _add_sums(state["train_sums"], nll, nll, errors,
                                      config.batch_size)
  return new_state


def l2_regularizer(params: PyTree, weight_decay: float) -> jax.Array:
  """Returns 0.5 * weight_decay * ||params||^2 over every leaf."""
  squares = [jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params)]
  return 0.5 * weight_decay * sum(squares)


def curve_step(config: StepConfig, state: PyTree, images: jax.Array,
               labels: jax.Array, permutation: jax.Array, position: jax.Array,
               key: jax.Array, learning_rate: jax.Array) -> PyTree:
  """Takes one SGD step of a curve's interior bends on the next batch.

  Each step draws `t_per_batch` values t ~ U(0, 1), evaluates the network at
  theta(t) in train mode (batch norm uses the batch statistics; running
  statistics along a curve are recomputed at evaluation), and averages the
  loss nll + 0.5 * wd * ||theta(t)||^2 ("reg") or nll ("noreg") over the
  values of t. Bends 0 and n-1 come out bit-identical.

  Args: as `endpoint_step`, with state['params'] the stacked bends (every
    leaf of shape (num_bends, ...)).

  Returns:
    The next state.
  """
  step = state["step"]
  batch_images, batch_labels = _batch(config, images, labels, permutation,
                                      position)
  augment_key, dropout_key, t_key = jax.random.split(
      jax.random.fold_in(key, step), 3)
  x = _inputs(config, batch_images, augment_key)
  ts = jax.random.uniform(t_key, (config.t_per_batch,), jnp.float32)
  dropout_keys = jax.random.split(dropout_key, config.t_per_batch)

  def loss_at(bends, t, point_key):
    theta = curves.point(curves.Curve(bends=bends, kind=config.kind), t)
    # Without the barrier XLA's CPU backend may fuse the weighted sum over
    # bends into the convolutions' kernel operand, which makes them
    # several times slower; theta is materialised once instead.
    theta = jax.lax.optimization_barrier(theta)
    logits, _ = config.model.apply(
        {"params": theta}, x, train=True, rngs={"dropout": point_key},
        mutable=["batch_stats"])
    nll, errors = _nll_and_errors(logits, batch_labels)
    loss = nll
    if config.regularization == "reg":
      loss = loss + l2_regularizer(theta, config.weight_decay)
    return loss, (nll, errors)

  def loss_fn(bends):
    if config.t_per_batch == 1:
      return loss_at(bends, ts[0], dropout_keys[0])
    losses, (nlls, errors) = jax.vmap(loss_at, in_axes=(None, 0, 0))(
        bends, ts, dropout_keys)
    return losses.mean(), (nlls.mean(), errors.mean())

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (nll, errors)), grads = grad_fn(state["params"])
  tx = curve_optimizer(config, learning_rate)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])

  def apply(bend, update):
    return jnp.where(_interior(bend, config.num_bends), bend + update, bend)

  new_state = dict(state)
  new_state["step"] = step + 1
  new_state["params"] = jax.tree.map(apply, state["params"], updates)
  new_state["opt_state"] = opt_state
  new_state["train_sums"] = _add_sums(state["train_sums"], loss, nll, errors,
                                      config.batch_size)
  return new_state


jit_endpoint_step = jax.jit(endpoint_step, static_argnums=0,
                            donate_argnums=1)
jit_curve_step = jax.jit(curve_step, static_argnums=0, donate_argnums=1)
