"""Loss, nll and error of a network over a whole split, in jitted batches."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcjax import data
from mcjax.training import distributed
from mcjax.training import steps

PyTree = Any


@functools.partial(jax.jit, static_argnames=("model", "mean", "std",
                                             "batch_size", "sharding"))
def _batch_sums(variables, images, labels, start, *, model, mean, std,
                batch_size, sharding):
  """Returns (nll sum, error count) over images[start:start + batch_size].

  Indices past the end of the split repeat its last example with weight 0,
  so the final partial batch needs no second compilation and counts each
  example once.
  """
  num_examples = images.shape[0]
  indices = start + jnp.arange(batch_size)
  weights = (indices < num_examples).astype(jnp.float32)
  indices = jnp.minimum(indices, num_examples - 1)
  indices = jax.lax.with_sharding_constraint(indices, sharding)
  x = data.normalize(images[indices], mean, std)
  logits = model.apply(variables, x, train=False)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                        labels[indices])
  wrong = (jnp.argmax(logits, axis=-1) != labels[indices]).astype(jnp.float32)
  return jnp.sum(weights * nll), jnp.sum(weights * wrong)


def evaluate(model: nn.Module, variables: PyTree, split: data.Split, *,
             mean: Sequence[float], std: Sequence[float],
             batch_size: int = 1000,
             weight_decay: float = 0.0) -> dict[str, float]:
  """Evaluates a network in eval mode (running batch-norm statistics).

  Args:
    model: the Flax model.
    variables: {'params': ..., 'batch_stats'?: ...}.
    split: the examples to evaluate (uint8 images, int32 labels).
    mean: per-channel normalisation mean, as `dataset.mean`.
    std: per-channel normalisation standard deviation.
    batch_size: examples per jitted batch; rounded up to a multiple of the
      device count. The last partial batch is padded and masked.
    weight_decay: adds 0.5 * weight_decay * ||params||^2 to `loss` (the
      curve objective of dnn-mode-connectivity); 0 makes loss equal nll.

  Returns:
    {'loss', 'nll', 'error', 'accuracy', 'num_examples'}: nll is the mean
    cross-entropy, error and accuracy are percentages (100 * fraction, as
    dnn-mode-connectivity reports them).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} is invalid; expected >= 1.")
  num_examples = len(split)
  if num_examples == 0:
    raise ValueError("evaluate got an empty split; expected >= 1 example.")
  mesh = distributed.data_mesh()
  devices = mesh.devices.size
  batch_size = -(-batch_size // devices) * devices
  replicated = distributed.replicated(mesh)
  variables = jax.device_put(variables, replicated)
  images = jax.device_put(split.images, replicated)
  labels = jax.device_put(split.labels, replicated)

  nll_sum = jnp.zeros((), jnp.float32)
  error_sum = jnp.zeros((), jnp.float32)
  for start in range(0, num_examples, batch_size):
    batch_nll, batch_errors = _batch_sums(
        variables, images, labels, jnp.int32(start), model=model,
        mean=tuple(mean), std=tuple(std), batch_size=batch_size,
        sharding=distributed.batch_sharded(mesh))
    nll_sum = nll_sum + batch_nll
    error_sum = error_sum + batch_errors

  nll = float(nll_sum) / num_examples
  error = 100.0 * float(error_sum) / num_examples
  loss = nll
  if weight_decay:
    loss += float(steps.l2_regularizer(variables["params"], weight_decay))
  return {"loss": loss, "nll": nll, "error": error, "accuracy": 100.0 - error,
          "num_examples": num_examples}
