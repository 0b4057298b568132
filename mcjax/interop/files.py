"""Reading and writing dnn-mode-connectivity `.pt` checkpoints.

dnn-mode-connectivity's train.py saves `{'epoch': int, 'model_state':
state_dict, 'optimizer_state': ...}` with `torch.save`. These functions read
such files (or a bare state dict saved with `torch.save`) and write files
of the same layout, so its eval_curve.py and `load_state_dict` accept them.

torch is an optional dependency: it is imported when one of these functions
runs, never when mcjax or mcjax.interop is imported.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
import os
from typing import Any

from absl import logging
import numpy as np

from mcjax import curves
from mcjax.interop import convert
from mcjax.models import vgg

PyTree = Any

INSTALL_HINT = ('pip install "mcjax[torch]", or pip install "torch==2.13.0" '
                'for the CPU build that scripts/setup.sh installs')


def require_torch():
  """Imports and returns torch, or raises ImportError saying how to install it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(
        "Reading and writing PyTorch checkpoints needs torch, which is not "
        f"installed; install it with: {INSTALL_HINT}.") from error
  return torch


def _to_numpy(tensor) -> np.ndarray:
  torch = require_torch()
  if not isinstance(tensor, torch.Tensor):
    return np.asarray(tensor)
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    # numpy has no bfloat16, and float32 represents every bfloat16 value exactly.
    tensor = tensor.float()
  return tensor.numpy()


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the model state dict of a `.pt` file as numpy arrays.

  Args:
    path: a file written by dnn-mode-connectivity's train.py (a dict with
      'model_state') or a bare state dict saved with `torch.save`.

  Returns:
    {key: numpy array} in the file's order.

  Raises:
    ImportError: if torch is not installed.
    ValueError: if the file contains neither layout.
  """
  torch = require_torch()
  # weights_only refuses pickled code objects, so a checkpoint from an
  # untrusted source cannot run code while it loads.
  checkpoint = torch.load(os.fspath(path), map_location="cpu",
                          weights_only=True)
  if isinstance(checkpoint, Mapping) and "model_state" in checkpoint:
    state = checkpoint["model_state"]
  elif isinstance(checkpoint, Mapping) and all(
      isinstance(value, torch.Tensor) for value in checkpoint.values()):
    state = checkpoint
  else:
    found = (sorted(checkpoint) if isinstance(checkpoint, Mapping)
             else type(checkpoint).__name__)
    raise ValueError(
        f"{os.fspath(path)} contains neither a dnn-mode-connectivity checkpoint "
        f"(a dict with 'model_state') nor a bare state dict of tensors; found "
        f"{found}.")
  return {key: _to_numpy(value) for key, value in state.items()}


def write_checkpoint(path: str | os.PathLike,
                     state_dict: Mapping[str, np.ndarray], epoch: int) -> None:
  """Writes `{'epoch': epoch, 'model_state': state_dict}` with `torch.save`.

  The file has no 'optimizer_state', so PyTorch training cannot resume from
  it with train.py's --resume, but --init_start, --init_end and
  eval_curve.py's --ckpt read it.
  """
  torch = require_torch()
  model_state = collections.OrderedDict(
      (key, torch.from_numpy(np.array(value)))
      for key, value in state_dict.items())
  torch.save({"epoch": int(epoch), "model_state": model_state},
             os.fspath(path))


def load_endpoint(path: str | os.PathLike, model: vgg.VGG,
                  example_input) -> dict[str, PyTree]:
  """Loads a dnn-mode-connectivity VGG checkpoint as mcjax variables.

  Args:
    path: a `.pt` file of a `VGGBase` (keys `layer_blocks.{b}.{i}.weight`,
      `classifier.{1,4,6}.weight`, ...).
    model: the configured mcjax VGG; its blocks, width, batch_norm and
      num_classes must match the checkpoint.
    example_input: an array or ShapeDtypeStruct of shape (batch, height,
      width, channels) at the input size the model will see.

  Returns:
    {'params': ..., 'batch_stats': ...?} like `model.init(key,
    example_input)`, ready for `model.apply(variables, x, train=False)`.

  Raises:
    ImportError: if torch is not installed.
    ValueError: if keys, shapes or the class count do not fit `model`; the
      message lists the first missing keys, unexpected keys and keys with
      both shapes.
  """
  state_dict = read_state_dict(path)
  try:
    variables = convert.endpoint_from_state_dict(state_dict, model,
                                                 example_input)
  except ValueError as error:
    raise ValueError(f"{os.fspath(path)}: {error}") from None
  logging.info("Loaded a PyTorch endpoint from %s (%d tensors)",
               os.fspath(path), len(state_dict))
  return variables


def save_endpoint(path: str | os.PathLike, model: vgg.VGG,
                  variables: PyTree, epoch: int = 0) -> None:
  """Saves mcjax variables as a dnn-mode-connectivity `VGGBase` checkpoint."""
  write_checkpoint(path, convert.endpoint_to_state_dict(model, variables),
                   epoch)
  logging.info("Saved a PyTorch endpoint to %s", os.fspath(path))


def load_curve(path: str | os.PathLike, model: vgg.VGG, example_input,
               num_bends: int | None = None, kind: str | None = None
               ) -> tuple[curves.Curve, PyTree | None]:
  """Loads a dnn-mode-connectivity curve checkpoint as an mcjax curve.

  Args:
    path: a `.pt` file of a `CurveNet` over `VGGCurve` (keys
      `net.layer_blocks.{b}.{i}.weight_{k}`, `net.fc1.weight_{k}`, ...).
    model: the configured mcjax VGG whose parameters the curve joins.
    example_input: an array or ShapeDtypeStruct of shape (batch, height,
      width, channels) at the input size the model will see.
    num_bends: the configured bend count; None accepts the checkpoint's.
    kind: "bezier" or "polychain"; None takes the checkpoint's.

  Returns:
    (curve, batch_stats) as `convert.curve_from_state_dict` describes:
    batch_stats is None without batch norm, else the one set of running
    statistics the PyTorch curve shares between its bends.

  Raises:
    ImportError: if torch is not installed.
    ValueError: if the bend count, kind, keys, shapes or class count do not
      fit; the message lists the first mismatches.
  """
  state_dict = read_state_dict(path)
  try:
    curve, batch_stats = convert.curve_from_state_dict(
        state_dict, model, example_input, num_bends=num_bends, kind=kind)
  except ValueError as error:
    raise ValueError(f"{os.fspath(path)}: {error}") from None
  logging.info("Loaded a PyTorch %s curve with %d bends from %s", curve.kind,
               curve.num_bends, os.fspath(path))
  return curve, batch_stats


def save_curve(path: str | os.PathLike, model: vgg.VGG, curve: curves.Curve,
               batch_stats: PyTree | None = None, epoch: int = 0) -> None:
  """Saves an mcjax curve as a dnn-mode-connectivity `CurveNet` checkpoint.

  With batch norm and batch_stats=None the file stores mean 0 and variance 1,
  like a freshly built PyTorch curve.
  """
  write_checkpoint(
      path, convert.curve_to_state_dict(model, curve, batch_stats), epoch)
  logging.info("Saved a PyTorch %s curve with %d bends to %s", curve.kind,
               curve.num_bends, os.fspath(path))
