"""Checks that two networks compute the same function on a dataset."""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp


def compare_networks(apply_fn: Callable[[Any, jax.Array], jax.Array],
                     variables_a: Any,
                     variables_b: Any,
                     images: jax.Array,
                     labels: jax.Array | None = None,
                     batch_size: int = 500,
                     preprocess: Callable[[jax.Array], jax.Array] | None = None,
                     ) -> dict[str, float]:
  """Compares the logits of two networks over a dataset, batch by batch.

  One jitted call runs a `lax.fori_loop` over batches. The last batch is
  the final batch_size images, so it may overlap the one before it. A mask
  counts each image exactly once, and no shape changes, so nothing
  recompiles for a partial batch.

  Args:
    apply_fn: maps (variables, batch) to logits of shape (batch, classes),
      for example `functools.partial(model.apply, train=False)`. It is a
      static argument of `jax.jit`, so pass the same object each time to
      reuse the compiled function.
    variables_a: variables of the first network.
    variables_b: variables of the second network, in the same structure.
    images: inputs of shape (n, ...): normalised floats, or raw images
      together with `preprocess`.
    labels: optional int labels of shape (n,), for the accuracies.
    batch_size: images per forward pass; reduced to n if n is smaller.
    preprocess: optional function applied to each batch inside the jitted
      loop, for example `lambda x: data.normalize(x, dataset.mean,
      dataset.std)` for uint8 images. It is a static argument too.

  Returns:
    A dict of Python numbers: 'max_abs_logit_diff' (the maximum over images
    and classes of |logits_a - logits_b|), 'agreement' (the fraction of
    images whose argmax agrees), 'num_examples', and with labels also
    'accuracy_a' and 'accuracy_b'.

  Raises:
    ValueError: for no images, batch_size < 1, or labels of another length.
  """
  n = images.shape[0]
  if n == 0:
    raise ValueError("compare_networks got no images (shape "
                     f"{images.shape}); pass at least one.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
  if labels is not None and labels.shape != (n,):
    raise ValueError(
        f"labels must have shape ({n},) to match images {images.shape}, got "
        f"{labels.shape}.")
  batch_size = min(batch_size, n)

  with_labels = labels is not None
  if labels is None:
    labels = jnp.zeros((n,), jnp.int32)
  totals = _compare(apply_fn, preprocess, batch_size, variables_a,
                    variables_b, images, labels)
  max_diff, agree, correct_a, correct_b = jax.device_get(totals)

  metrics = {
      "max_abs_logit_diff": float(max_diff),
      "agreement": int(agree) / n,
      "num_examples": n,
  }
  if with_labels:
    metrics["accuracy_a"] = int(correct_a) / n
    metrics["accuracy_b"] = int(correct_b) / n
  return metrics


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _compare(apply_fn, preprocess, batch_size, variables_a, variables_b,
             images, labels):
  """Returns (max |diff|, #agreeing, #correct a, #correct b) over all images."""
  n = images.shape[0]
  num_batches = -(-n // batch_size)

  def body(k, totals):
    first = k * batch_size
    start = jnp.minimum(first, n - batch_size)
    x = jax.lax.dynamic_slice_in_dim(images, start, batch_size)
    y = jax.lax.dynamic_slice_in_dim(labels, start, batch_size)
    # Rows before `first` belong to the previous batch and were counted.
    valid = start + jnp.arange(batch_size) >= first
    if preprocess is not None:
      x = preprocess(x)
    logits_a = apply_fn(variables_a, x)
    logits_b = apply_fn(variables_b, x)
    diff = jnp.max(jnp.abs(logits_a - logits_b), axis=-1)
    pred_a = jnp.argmax(logits_a, axis=-1)
    pred_b = jnp.argmax(logits_b, axis=-1)
    max_diff, agree, correct_a, correct_b = totals
    return (jnp.maximum(max_diff, jnp.max(jnp.where(valid, diff, 0.0))),
            agree + jnp.sum(valid & (pred_a == pred_b)),
            correct_a + jnp.sum(valid & (pred_a == y)),
            correct_b + jnp.sum(valid & (pred_b == y)))

  zero = jnp.zeros((), jnp.int32)
  init = (jnp.zeros((), jnp.float32), zero, zero, zero)
  return jax.lax.fori_loop(0, num_batches, body, init)
