"""Tests for atomic file writes."""

import os
import stat

import pytest

from mcjax import files


def test_atomic_write_uses_umask_permissions(tmp_path):
  old_umask = os.umask(0o022)
  try:
    path = tmp_path / "out.bin"
    files.atomic_write(str(path), lambda f: f.write(b"abc"))
  finally:
    os.umask(old_umask)
  assert path.read_bytes() == b"abc"
  assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_old_file(tmp_path):
  path = tmp_path / "out.bin"
  path.write_bytes(b"old")

  def fail(f):
    f.write(b"partial")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    files.atomic_write(str(path), fail)
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["out.bin"]
