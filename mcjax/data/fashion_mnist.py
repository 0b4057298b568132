"""Fashion-MNIST from its four IDX files, padded to 32x32."""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from mcjax.data import core
from mcjax.data import transforms

# Folder of the IDX files that Debian's dataset-fashion-mnist package installs.
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# 28x28 images get 2 zero pixels on each side, so VGG's five 2x2 pools apply.
PAD = 2


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzip-compressed) of unsigned bytes.

  The format is a big-endian header: two zero bytes, a type code (0x08 for
  uint8), the number of dimensions, one uint32 size per dimension, then the
  data in row-major order.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      header = f.read(4)
      if len(header) != 4 or header[:2] != b"\x00\x00":
        raise ValueError(
            f"{path} is not an IDX file: its header is {header!r}.")
      if header[2] != 0x08:
        raise ValueError(
            f"{path} has IDX type 0x{header[2]:02x}; only unsigned bytes "
            "(0x08) are supported.")
      sizes = f.read(4 * header[3])
      if len(sizes) != 4 * header[3]:
        raise ValueError(
            f"{path} is truncated: its header ends inside the "
            f"{header[3]} dimension sizes.")
      shape = struct.unpack(f">{header[3]}I", sizes)
      data = np.frombuffer(f.read(), dtype=np.uint8)
  # A cut-off or damaged gzip stream fails inside read() with no file name.
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(
        f"{path} is not a readable gzip file (it may be truncated or "
        f"corrupt): {e}.") from e
  if data.size != int(np.prod(shape)):
    raise ValueError(
        f"{path} is truncated: its header gives shape {shape} "
        f"({int(np.prod(shape))} values) but it holds {data.size}.")
  return data.reshape(shape)


def read_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (N, 32, 32, 1), labels int32 (N,)) for a split."""
  images_file, labels_file = FILES[split]
  images = read_idx(os.path.join(data_dir, images_file))
  labels = read_idx(os.path.join(data_dir, labels_file)).astype(np.int32)
  if images.ndim != 3 or images.shape[0] != labels.shape[0]:
    raise ValueError(
        f"Fashion-MNIST {split} files in {data_dir} disagree: images of shape "
        f"{images.shape}, labels of shape {labels.shape}.")
  return pad(images[..., None]), labels


def pad(images: np.ndarray) -> np.ndarray:
  """Zero-pads uint8 images of shape (N, 28, 28, 1) to (N, 32, 32, 1)."""
  if images.shape[1:] != (28, 28, 1):
    raise ValueError(
        f"Fashion-MNIST images must have shape (N, 28, 28, 1), got "
        f"{images.shape}.")
  return np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))


def candidates(directory: str) -> list[str]:
  """Returns the folders in `directory` where the IDX files may be.

  In search order: `directory` itself, its `fashion-mnist` and
  `fashion_mnist` folders, and `FashionMNIST/raw` where torchvision puts them.
  """
  return [directory, os.path.join(directory, "fashion-mnist"),
          os.path.join(directory, "fashion_mnist"),
          os.path.join(directory, "FashionMNIST", "raw")]


def exists(folder: str) -> bool:
  """Returns whether `folder` has the Fashion-MNIST training images file."""
  return os.path.isfile(os.path.join(folder, FILES["train"][0]))


def read(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads the train and test splits from the four IDX `.gz` files.

  Returns:
    A dict from "train" and "test" to (images uint8 (N, 32, 32, 1),
    labels int32 (N,)).
  """
  for names in FILES.values():
    for name in names:
      if not os.path.isfile(os.path.join(folder, name)):
        raise FileNotFoundError(
            f"Fashion-MNIST folder {folder} has no {name}; it needs "
            f"{', '.join(FILES['train'] + FILES['test'])}.")
  return {split: read_split(folder, split) for split in FILES}


def load_idx(data_dir: str = DEFAULT_DIR) -> core.Dataset:
  """Loads Fashion-MNIST from the four IDX `.gz` files in `data_dir`."""
  splits = {name: core.to_split(*read_split(data_dir, name)) for name in FILES}
  return core.Dataset(
      name="fashion_mnist", train=splits["train"], test=splits["test"],
      num_classes=10, mean=transforms.FASHION_MNIST_MEAN,
      std=transforms.FASHION_MNIST_STD)
