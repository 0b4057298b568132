"""Atomic file writes, so a crash never leaves a partial result."""

from __future__ import annotations

from collections.abc import Callable
import os
import tempfile
from typing import BinaryIO


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
  """Calls write(file) on a temporary file beside `path`, then renames it.

  The temporary file is in the same directory, so `os.replace` is an atomic
  rename on POSIX file systems. A reader sees the old file or the complete
  new one. Missing parent directories are created.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                                       suffix="-" + os.path.basename(path))
  try:
    # mkstemp creates the file readable by its owner only; give the result
    # the permissions a plain open() would under the current umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    with os.fdopen(handle, "wb") as file:
      write(file)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
