"""Datasets as device-resident uint8 arrays."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset, resident on the device.

  Attributes:
    images: uint8 array of shape (num_examples, height, width, channels).
    labels: int32 array of shape (num_examples,).
  """

  images: jax.Array
  labels: jax.Array

  def __post_init__(self):
    if self.images.ndim != 4:
      raise ValueError(
          f"Split images must have shape (N, H, W, C), got {self.images.shape}.")
    if self.labels.shape != self.images.shape[:1]:
      raise ValueError(
          f"Split has {self.images.shape[0]} images but labels of shape "
          f"{self.labels.shape}; expected ({self.images.shape[0]},).")

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def take(self, num_examples: int) -> Split:
    """Returns the first `num_examples` examples (for small runs and tests)."""
    return Split(self.images[:num_examples], self.labels[:num_examples])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset with train and test splits and an optional validation split.

  Attributes:
    name: "cifar10" or "fashion_mnist".
    train: the training split.
    test: the test split.
    validation: the held-out end of the training set, or None.
    num_classes: number of label values.
    mean: per-channel mean for `transforms.normalize`, on the [0, 1] scale.
    std: per-channel standard deviation for `transforms.normalize`.
  """

  name: str
  train: Split
  test: Split
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  validation: Split | None = None

  def split(self, name: str) -> Split:
    """Returns the split called "train", "test" or "validation"."""
    splits = {"train": self.train, "test": self.test}
    if self.validation is not None:
      splits["validation"] = self.validation
    if name not in splits:
      raise ValueError(
          f"Dataset {self.name!r} has no split {name!r}; it has {sorted(splits)}.")
    return splits[name]


def to_split(images: np.ndarray, labels: np.ndarray) -> Split:
  """Moves host arrays to the default device as uint8 images, int32 labels."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"Images must be uint8, got {images.dtype}.")
  return Split(jnp.asarray(images), jnp.asarray(np.asarray(labels, np.int32)))
