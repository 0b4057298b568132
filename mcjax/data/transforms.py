"""Normalisation and augmentation as jit-compatible array functions.

Images stay uint8 (batch, height, width, channels) on the device until the
model needs them; `augment` works on uint8 and `normalize` turns a batch into
float32 model inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# The "VGG" transform of dnn-mode-connectivity (data.py there) normalises
# CIFAR-10 with the ImageNet channel statistics.
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
# Fashion-MNIST pixel statistics over its 60,000 training images (28x28,
# before the 2-pixel zero padding to 32x32).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


def normalize(images: jax.Array, mean: Sequence[float],
              std: Sequence[float]) -> jax.Array:
  """Maps uint8 images to float32 (images / 255 - mean) / std per channel.

  Args:
    images: uint8 array of shape (..., channels).
    mean: one value per channel, on the [0, 1] scale.
    std: one value per channel, on the [0, 1] scale.

  Returns:
    A float32 array of the same shape.
  """
  if len(mean) != images.shape[-1] or len(std) != images.shape[-1]:
    raise ValueError(
        f"normalize got {len(mean)} means and {len(std)} stds for images with "
        f"{images.shape[-1]} channels (shape {images.shape}); pass one value "
        "per channel.")
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment(key: jax.Array, images: jax.Array, *, padding: int = 4,
            flip: bool = True) -> jax.Array:
  """Applies a random crop after zero padding, and a random horizontal flip.

  This matches torchvision's RandomCrop(size, padding=4) followed by
  RandomHorizontalFlip on raw pixels: the padding is black (0) before
  normalisation. Each image gets its own offset and flip.

  Args:
    key: a PRNG key; the same key and images give the same output.
    images: array of shape (batch, height, width, channels), any dtype.
    padding: zero padding on each side before the crop, in pixels.
    flip: whether to flip each image left-right with probability 1/2.

  Returns:
    An array with the shape and dtype of `images`.
  """
  batch = images.shape[0]
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)
  out = crop(images, offsets, padding=padding)
  if flip:
    out = flip_left_right(out, jax.random.bernoulli(flip_key, 0.5, (batch,)))
  return out


def crop(images: jax.Array, offsets: jax.Array, *, padding: int) -> jax.Array:
  """Crops each image at its own offset from a zero-padded copy.

  Args:
    images: array of shape (batch, height, width, channels).
    offsets: int array of shape (batch, 2), the (row, column) of each crop's
      top-left corner in the padded image, each in [0, 2 * padding].
    padding: zero padding on each side, in pixels.

  Returns:
    An array with the shape and dtype of `images`.
  """
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))

  def crop_one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  return jax.vmap(crop_one)(padded, offsets)


def flip_left_right(images: jax.Array, flips: jax.Array) -> jax.Array:
  """Mirrors images (batch, height, width, channels) where `flips` (batch,)."""
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)
