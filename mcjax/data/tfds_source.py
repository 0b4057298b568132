"""CIFAR-10 and Fashion-MNIST from TensorFlow Datasets (TFDS).

Reading uses `tfds.data_source`, which reads prepared array_record files
with no TensorFlow and decodes their PNG images with Pillow or OpenCV. Preparing a dataset (download_and_prepare) runs the TFDS
builder, which needs TensorFlow, so it happens only when asked for.
"""

from __future__ import annotations

import importlib.util

from absl import logging
import numpy as np

from mcjax.data import fashion_mnist

SPLITS = ("train", "test")
# Image shape of each dataset as TFDS stores it.
IMAGE_SHAPES = {"cifar10": (32, 32, 3), "fashion_mnist": (28, 28, 1)}


class NotPreparedError(FileNotFoundError):
  """The dataset has no prepared array_record files in the TFDS data_dir.

  Attributes:
    folder: the versioned dataset folder that TFDS looked in.
  """

  def __init__(self, name: str, folder: str):
    super().__init__(f"TFDS {name} is not prepared in {folder}.")
    self.folder = folder


def _builder_dir(name: str, data_dir: str | None) -> tuple[str, bool]:
  """Returns the builder's versioned data folder and whether it is prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  return str(builder.data_dir), builder.is_prepared()


def prepare(name: str, data_dir: str | None) -> None:
  """Downloads and prepares `name` as array_record files unless prepared.

  Raises:
    ImportError: TensorFlow is not installed, and TFDS needs it to prepare.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return
  if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
        f"Preparing TFDS {name!r} in {builder.data_dir} needs TensorFlow, "
        "which is not installed. Install it (pip install tensorflow-cpu), or "
        "prepare the dataset on a machine that has it and copy the data_dir "
        "here; reading prepared array_record files needs no TensorFlow.")
  logging.info("Downloading and preparing TFDS %s in %s.", name,
               builder.data_dir)
  builder.download_and_prepare(file_format="array_record")


def _to_arrays(source, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Stacks a random-access TFDS source into (images, labels) arrays."""
  num_examples = len(source)
  images = np.empty((num_examples,) + IMAGE_SHAPES[name], np.uint8)
  labels = np.empty((num_examples,), np.int32)
  for i in range(num_examples):
    example = source[i]
    image = np.asarray(example["image"])
    if image.shape != IMAGE_SHAPES[name] or image.dtype != np.uint8:
      raise ValueError(
          f"TFDS {name} {split} example {i} has an image of shape "
          f"{image.shape} and dtype {image.dtype}; expected uint8 of shape "
          f"{IMAGE_SHAPES[name]}.")
    images[i] = image
    labels[i] = example["label"]
  return images, labels


def read(name: str, data_dir: str | None = None,
         download: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads the train and test splits of a TFDS dataset into host arrays.

  Args:
    name: "cifar10" or "fashion_mnist".
    data_dir: the TFDS data_dir; None uses TFDS's default ($TFDS_DATA_DIR,
      else ~/tensorflow_datasets).
    download: whether to download and prepare the dataset when it is not
      prepared (needs TensorFlow and network access).

  Returns:
    A dict from "train" and "test" to (images uint8 (N, 32, 32, C), labels
    int32 (N,)). Fashion-MNIST is zero-padded from 28x28 to 32x32.

  Raises:
    NotPreparedError: the dataset is not prepared and `download` is False.
    ValueError: the dataset is prepared in a format other than array_record.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if name not in IMAGE_SHAPES:
    raise ValueError(
        f"TFDS source supports {sorted(IMAGE_SHAPES)}, got {name!r}.")
  if download:
    prepare(name, data_dir)

  splits = {}
  for split in SPLITS:
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir,
                                download=False)
    # Without prepared files, TFDS 4.9.10 raises NotImplementedError (it falls
    # back to the tfrecord format) or KeyError (no splits), depending on the
    # folders it finds.
    except (NotImplementedError, KeyError, AssertionError,
            FileNotFoundError) as e:
      folder, prepared = _builder_dir(name, data_dir)
      if prepared:
        raise ValueError(
            f"TFDS {name} in {folder} cannot be read without TensorFlow: "
            f"{e}. Prepare it again with file_format='array_record'.") from e
      raise NotPreparedError(name, folder) from e
    splits[split] = _to_arrays(source, name, split)

  if name == "fashion_mnist":
    splits = {split: (fashion_mnist.pad(images), labels)
              for split, (images, labels) in splits.items()}
  return splits

