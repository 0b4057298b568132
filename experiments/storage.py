"""Files that stages write: atomic JSON and text, and pytrees as NPZ.

Every write goes to a temporary name in the same folder and is renamed into
place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

import jax
import numpy as np

from mcjax import pytrees

PyTree = Any


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path that is renamed to `path` when the block ends.

  The temporary file lives in the folder of `path`, so the rename is atomic on
  POSIX file systems. If the block raises, the temporary file is removed and
  `path` keeps its old content.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
  os.close(fd)
  # mkstemp creates the file readable by its owner only; give the final file
  # the permissions of a plain open() under the current umask.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def to_json(value: Any) -> Any:
  """Converts numpy and JAX scalars and arrays to plain JSON values."""
  if isinstance(value, dict):
    return {str(k): to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return to_json(np.asarray(value).tolist())
  if isinstance(value, np.generic):
    return value.item()
  return value


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON, atomically."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(to_json(value), f, indent=2, sort_keys=True)
    f.write("\n")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_text(path: str, text: str) -> None:
  """Writes `text`, atomically."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def save_tree(path: str, tree: PyTree) -> None:
  """Saves a nested-dict pytree of arrays as NPZ keyed by leaf path.

  Keys read like `params/block2_conv1/kernel`, so the file opens with plain
  `numpy.load` as well as with `load_tree`.
  """
  flat = {name: np.asarray(leaf)
          for name, leaf in pytrees.flatten_with_names(tree).items()}
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **flat)


def save_arrays(path: str, arrays: dict[str, Any]) -> None:
  """Saves a flat {name: array} dict as NPZ, atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **{name: np.asarray(value) for name, value in arrays.items()})


def load_arrays(path: str) -> dict[str, np.ndarray]:
  """Loads a flat {name: array} dict saved by `save_arrays`."""
  with np.load(path) as data:
    return {name: data[name] for name in data.files}


def load_tree(path: str) -> dict[str, Any]:
  """Loads a pytree saved by `save_tree` as nested dicts of numpy arrays."""
  with np.load(path) as data:
    return pytrees.unflatten_names({name: data[name] for name in data.files})
