"""`load`: one entry point for CIFAR-10 and Fashion-MNIST from any source."""

from __future__ import annotations

import os

from absl import logging
import numpy as np

from mcjax.data import cifar10
from mcjax.data import core
from mcjax.data import fashion_mnist
from mcjax.data import tfds_source
from mcjax.data import transforms

NAMES = ("cifar10", "fashion_mnist")
SOURCES = ("auto", "tfds", "python", "idx")
# The local file source of each dataset; "auto" tries it before TFDS.
FILE_SOURCES = {"cifar10": "python", "fashion_mnist": "idx"}
# dnn-mode-connectivity holds out the last 5,000 training images.
NUM_VALIDATION = 5000
DATA_DIR_ENV = "MCJAX_DATA_DIR"

_MEAN_STD = {
    "cifar10": (transforms.CIFAR10_MEAN, transforms.CIFAR10_STD),
    "fashion_mnist": (transforms.FASHION_MNIST_MEAN,
                      transforms.FASHION_MNIST_STD),
}
_HOW_TO_GET = {
    "cifar10": (
        f"Download {cifar10.URL} into one of the folders above or into a "
        "folder passed as data_dir (there is no need to unpack it), or "
        "prepare the TFDS copy with "
        "load('cifar10', source='tfds', download=True), which needs "
        "TensorFlow."),
    "fashion_mnist": (
        "Run `apt-get install dataset-fashion-mnist` (it installs the IDX "
        f"files in {fashion_mnist.DEFAULT_DIR}), or prepare the TFDS copy "
        "with load('fashion_mnist', source='tfds', download=True), which "
        "needs TensorFlow."),
}


class DatasetNotFoundError(FileNotFoundError):
  """No source has the dataset. The message lists every place searched."""


def search_dirs(name: str, data_dir: str | None = None) -> list[str]:
  """Returns the folders searched for a dataset's local files, in order.

  Args:
    name: "cifar10" or "fashion_mnist".
    data_dir: a folder given by the caller. When set, it is the only folder
      searched.

  Returns:
    Without `data_dir`: $MCJAX_DATA_DIR (when set), ./data, ~/data, and for
    Fashion-MNIST also /usr/share/datasets/fashion-mnist.
  """
  if data_dir is not None:
    return [os.path.expanduser(os.fspath(data_dir))]
  dirs = []
  if os.environ.get(DATA_DIR_ENV):
    dirs.append(os.path.expanduser(os.environ[DATA_DIR_ENV]))
  dirs += [os.path.abspath("data"), os.path.expanduser("~/data")]
  if name == "fashion_mnist":
    dirs.append(fashion_mnist.DEFAULT_DIR)
  return dirs


def _read_files(name: str, data_dir: str | None):
  """Reads the first local copy found; returns (splits, place, places)."""
  module = cifar10 if name == "cifar10" else fashion_mnist
  places = []
  for directory in search_dirs(name, data_dir):
    for place in module.candidates(directory):
      if place in places:
        continue
      places.append(place)
      if module.exists(place):
        return module.read(place), place, places
  return None, None, places


def _not_found(name: str, tried: list[str]) -> DatasetNotFoundError:
  lines = "\n".join(f"  - {entry}" for entry in tried)
  return DatasetNotFoundError(
      f"Dataset {name!r} was not found. Looked in:\n{lines}\n"
      f"{_HOW_TO_GET[name]}")


def _read(name: str, source: str, data_dir: str | None, download: bool):
  """Returns (splits, description of where they came from)."""
  tried = []
  if source in ("auto", FILE_SOURCES[name]):
    splits, place, places = _read_files(name, data_dir)
    if splits is not None:
      return splits, place
    kind = ("CIFAR-10 python archive or batch folder" if name == "cifar10"
            else "Fashion-MNIST IDX files")
    tried += [f"{place} ({kind})" for place in places]

  if source in ("auto", "tfds"):
    try:
      return tfds_source.read(name, data_dir, download), "TFDS"
    except tfds_source.NotPreparedError as e:
      tried.append(f"{e.folder} (TFDS {name} array_record, not prepared)")
  raise _not_found(name, tried)


def hold_out(images: np.ndarray, labels: np.ndarray,
             num_validation: int) -> tuple[tuple[np.ndarray, np.ndarray],
                                           tuple[np.ndarray, np.ndarray]]:
  """Splits off the last `num_validation` examples as a validation set.

  Returns:
    ((train_images, train_labels), (validation_images, validation_labels)),
    where train keeps the first N - num_validation examples in order.
  """
  if not 0 < num_validation < len(images):
    raise ValueError(
        f"num_validation must be in [1, {len(images) - 1}] for a training set "
        f"of {len(images)} examples, got {num_validation}.")
  cut = len(images) - num_validation
  return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def _check_arguments(name, source, download, num_validation, validation):
  if name not in NAMES:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {NAMES}.")
  if source not in SOURCES:
    raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")
  valid = ("auto", "tfds", FILE_SOURCES[name])
  if source not in valid:
    raise ValueError(
        f"Source {source!r} does not hold {name!r}; expected one of {valid}.")
  if download and source != "tfds":
    raise ValueError(
        f"download=True needs source='tfds', got source={source!r}; the "
        "other sources read local files only and never download.")
  if validation and num_validation <= 0:
    raise ValueError(f"num_validation must be positive, got {num_validation}.")


def load(name: str, *, source: str = "auto",
         data_dir: str | os.PathLike[str] | None = None,
         validation: bool = False, download: bool = False,
         num_validation: int = NUM_VALIDATION) -> core.Dataset:
  """Loads CIFAR-10 or Fashion-MNIST onto the default device.

  With source="auto" the local files come first (for CIFAR-10 the python
  batches, for Fashion-MNIST the IDX files, each in the folders that
  `search_dirs` lists), then the prepared TFDS copy. "auto" never downloads.

  Args:
    name: "cifar10" or "fashion_mnist".
    source: "auto", "tfds", "python" (CIFAR-10's `cifar-10-python.tar.gz` or
      `cifar-10-batches-py`) or "idx" (Fashion-MNIST's four IDX `.gz` files).
    data_dir: the only folder to search for local files, and the TFDS
      data_dir. None searches the defaults (see `search_dirs`) and TFDS's
      default data_dir.
    validation: whether to hold out the last `num_validation` training
      examples as the validation split, as dnn-mode-connectivity does. The
      train split keeps the first N - num_validation.
    download: with source="tfds", download and prepare the TFDS copy when it
      is not prepared (needs TensorFlow and network access).
    num_validation: size of the validation split.

  Returns:
    A Dataset whose splits hold uint8 images of shape (N, 32, 32, C), with
    C = 3 for CIFAR-10 and 1 for Fashion-MNIST (zero-padded from 28x28),
    and int32 labels in 0..9.

  Raises:
    ValueError: an unknown name or source, or a corrupt file (named in the
      message).
    DatasetNotFoundError: the dataset is not found in any source. The message lists
      every place searched and how to get the data.
  """
  _check_arguments(name, source, download, num_validation, validation)
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  splits, origin = _read(name, source, data_dir, download)

  train_images, train_labels = splits["train"]
  validation_split = None
  if validation:
    (train_images, train_labels), held_out = hold_out(
        train_images, train_labels, num_validation)
    validation_split = core.to_split(*held_out)
  mean, std = _MEAN_STD[name]
  dataset = core.Dataset(
      name=name, train=core.to_split(train_images, train_labels),
      test=core.to_split(*splits["test"]), num_classes=10, mean=mean,
      std=std, validation=validation_split)

  logging.info(
      "Loaded %s from %s: %d train, %d validation, %d test examples.", name,
      origin, len(dataset.train),
      0 if validation_split is None else len(validation_split),
      len(dataset.test))
  return dataset
