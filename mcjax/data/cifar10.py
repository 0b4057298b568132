"""CIFAR-10 from the official python archive or its extracted folder.

The archive `cifar-10-python.tar.gz` unpacks to a `cifar-10-batches-py`
folder (torchvision leaves both behind in its `root`). Each of the files
`data_batch_1` .. `data_batch_5` and `test_batch` is a pickled dict with
b"data", a uint8 array of shape (N, 3072) holding each image as its red, green
and blue 32x32 planes in turn (CHW order), and b"labels", a list of N ints.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import tarfile
import zlib

import numpy as np

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)


def _numpy_globals() -> dict[tuple[str, str], object]:
  """Returns the globals that a pickled uint8 numpy array refers to."""
  reconstruct = np.zeros(1).__reduce_ex__(2)[0]
  frombuffer = np.zeros(1).__reduce_ex__(5)[0]
  allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             # Python 3 writes bytes into protocol-2 pickles through this.
             ("_codecs", "encode"): codecs.encode}
  # Pickles from numpy 1 name numpy.core, and pickles from numpy 2 name
  # numpy._core. Protocol 2 rebuilds an array with _reconstruct, and
  # protocol 5 with _frombuffer.
  for package in ("numpy.core", "numpy._core"):
    allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
    allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
  return allowed


class _BatchUnpickler(pickle.Unpickler):
  """Unpickles dicts of numpy arrays and lists, and no other objects.

  A pickle can run arbitrary code through the globals it names. CIFAR-10
  batches need only numpy's array reconstruction, so nothing else is loaded.
  """

  allowed = _numpy_globals()

  def find_class(self, module, name):
    if (module, name) not in self.allowed:
      raise pickle.UnpicklingError(
          f"refers to {module}.{name}, which a CIFAR-10 batch does not contain")
    return self.allowed[(module, name)]


def parse_batch(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
  """Parses one pickled batch into NHWC images and labels.

  Args:
    data: the bytes of a batch file.
    path: the file name for error messages (`archive:member` inside a tar).

  Returns:
    images: uint8 array of shape (N, 32, 32, 3).
    labels: int32 array of shape (N,).
  """
  try:
    batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, IndexError) as e:
    raise ValueError(
        f"{path} is not a readable CIFAR-10 batch (it may be truncated or "
        f"corrupt): {e}. Get a fresh copy of {ARCHIVE} from {URL}.") from e
  if not isinstance(batch, dict) or b"data" not in batch or (
      b"labels" not in batch):
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(
        f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and "
        f"b'labels', got {keys}.")

  images = np.asarray(batch[b"data"])
  labels = np.asarray(batch[b"labels"])
  size = int(np.prod(IMAGE_SHAPE))
  if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != size:
    raise ValueError(
        f"{path} contains b'data' of shape {images.shape} and dtype "
        f"{images.dtype}; expected uint8 of shape (N, {size}).")
  if labels.shape != images.shape[:1]:
    raise ValueError(
        f"{path} contains {images.shape[0]} images but labels of shape "
        f"{labels.shape}; expected ({images.shape[0]},).")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError(
        f"{path} contains labels in [{labels.min()}, {labels.max()}]; expected "
        f"0..{NUM_CLASSES - 1}.")

  images = images.reshape((-1,) + IMAGE_SHAPE).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _concatenate(batches):
  images, labels = zip(*batches)
  return np.concatenate(images), np.concatenate(labels)


def read_folder(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads the train and test splits from a `cifar-10-batches-py` folder.

  Returns:
    A dict from "train" and "test" to (images uint8 (N, 32, 32, 3),
    labels int32 (N,)).
  """
  splits = {}
  for split, names in FILES.items():
    batches = []
    for name in names:
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CIFAR-10 folder {folder} has no {name}; it needs "
            f"{', '.join(FILES['train'] + FILES['test'])}. Unpack a fresh "
            f"{ARCHIVE} from {URL} there.")
      with open(path, "rb") as f:
        batches.append(parse_batch(f.read(), path))
    splits[split] = _concatenate(batches)
  return splits


def read_archive(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads the train and test splits from `cifar-10-python.tar.gz`.

  The batch files are read from the archive in memory; nothing is extracted
  to disk.

  Returns:
    A dict from "train" and "test" to (images uint8 (N, 32, 32, 3),
    labels int32 (N,)).
  """
  wanted = set(FILES["train"] + FILES["test"])
  contents = {}
  try:
    with tarfile.open(path, "r:gz") as archive:
      for member in archive:
        name = os.path.basename(member.name)
        if member.isfile() and name in wanted:
          contents[name] = archive.extractfile(member).read()
  except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(
        f"{path} is not a readable tar.gz archive (it may be truncated or "
        f"corrupt): {e}. Download it again from {URL}.") from e

  missing = sorted(wanted - set(contents))
  if missing:
    raise ValueError(
        f"{path} has no member named {', '.join(missing)}; it is not the "
        f"CIFAR-10 python archive. Download it again from {URL}.")
  return {
      split: _concatenate(
          [parse_batch(contents[name], f"{path}:{name}") for name in names])
      for split, names in FILES.items()}


def candidates(directory: str) -> list[str]:
  """Returns the places in `directory` where the python batches may be.

  In search order: `directory` itself holding the batch files, its
  `cifar-10-batches-py` folder, and its `cifar-10-python.tar.gz` archive.
  """
  return [directory, os.path.join(directory, FOLDER),
          os.path.join(directory, ARCHIVE)]


def exists(place: str) -> bool:
  """Returns whether `place` (from `candidates`) has CIFAR-10 batches."""
  if place.endswith(".tar.gz"):
    return os.path.isfile(place)
  return os.path.isfile(os.path.join(place, FILES["train"][0]))


def read(place: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads an archive or batch folder found by `candidates` and `exists`."""
  if place.endswith(".tar.gz"):
    return read_archive(place)
  return read_folder(place)
