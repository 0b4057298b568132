"""Orbax checkpoints of training states, with shape checks and resume.

A checkpoint directory contains one orbax `CheckpointManager` step per save,
named by the optimizer step. Each step stores two items: `state`, the
training-state pytree (parameters, optimizer state, batch statistics, step
and per-epoch sums), and `meta`, a small JSON dict (epoch, seed, kind).
Saves are synchronous, so a state is on disk when `save` returns and its
buffers may be donated to the next step at once.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from mcjax import pytrees

PyTree = Any


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored into the requested state."""


def manager(directory: str, keep: int) -> ocp.CheckpointManager:
  """Opens (creating if needed) a manager that keeps the newest `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False)
  # Naming the handlers lets a fresh manager read metadata before a restore.
  handlers = {"state": ocp.StandardCheckpointHandler(),
              "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=handlers)


def save(checkpoint_manager: ocp.CheckpointManager, step: int, state: PyTree,
         meta: dict[str, Any]) -> None:
  """Saves `state` and the JSON-serialisable `meta` as checkpoint `step`."""
  checkpoint_manager.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
      force=True)
  checkpoint_manager.wait_until_finished()
  logging.info("Saved checkpoint step %d in %s", step,
               checkpoint_manager.directory)


def _stored_shapes(checkpoint_manager, step) -> dict[str, tuple[int, ...]]:
  metadata = checkpoint_manager.item_metadata(step)["state"]
  tree = getattr(metadata, "tree", metadata)
  return {name: tuple(leaf.shape)
          for name, leaf in pytrees.flatten_with_names(tree).items()
          if hasattr(leaf, "shape")}


def _unreadable(checkpoint_manager, step: int,
                error: Exception) -> CheckpointError:
  path = os.path.join(str(checkpoint_manager.directory), str(step))
  others = [other for other in checkpoint_manager.all_steps() if other != step]
  return CheckpointError(
      f"Checkpoint {path} is unreadable, so it may be truncated or corrupt. "
      f"The other saved steps are {others}: delete or move that step "
      "directory to resume from the newest of them. The read failed with: "
      f"{str(error)[:300]}")


def check_shapes(checkpoint_manager: ocp.CheckpointManager, step: int,
                 target: PyTree) -> None:
  """Raises CheckpointError if checkpoint `step` does not fit `target`.

  Parameters are compared first, so a model of another width, depth or
  class count is reported at its first differing parameter path.

  Args:
    checkpoint_manager: the manager holding `step`.
    step: a saved step.
    target: a pytree of arrays or `jax.ShapeDtypeStruct`s shaped like the
      state to restore.
  """
  path = os.path.join(str(checkpoint_manager.directory), str(step))
  try:
    stored = _stored_shapes(checkpoint_manager, step)
  except (ValueError, OSError, KeyError) as error:
    raise _unreadable(checkpoint_manager, step, error) from error
  expected = {name: tuple(leaf.shape)
              for name, leaf in pytrees.flatten_with_names(target).items()}
  names = sorted(expected, key=lambda name: not name.startswith("params/"))
  for name in names:
    if name not in stored:
      raise CheckpointError(
          f"Checkpoint {path} has no entry {name!r} that the model expects; "
          "it was written for another model or training mode.")
    if stored[name] != expected[name]:
      raise CheckpointError(
          f"Checkpoint {path} stores {name!r} with shape {stored[name]}, but "
          f"the model expects shape {expected[name]}; it was written for a "
          "model of another width, depth or class count.")
  for name in stored:
    if name not in expected:
      raise CheckpointError(
          f"Checkpoint {path} has an entry {name!r} that the model does not "
          "expect; it was written for another model or training mode.")


def restore(checkpoint_manager: ocp.CheckpointManager, step: int,
            target: PyTree | None = None) -> tuple[PyTree, dict[str, Any]]:
  """Restores checkpoint `step` into the structure and shardings of `target`.

  Args:
    checkpoint_manager: the manager holding `step`.
    step: a saved step.
    target: a pytree of arrays or `jax.ShapeDtypeStruct`s (their shardings
      are used) shaped like the saved state, or None to restore the stored
      tree as it is (tuples come back as lists) on the default device.

  Returns:
    (state, meta).

  Raises:
    CheckpointError: if the shapes differ (naming the path and both shapes)
      or the files are truncated or corrupt (naming the step directory).
      Other steps in the directory are left untouched.
  """
  if target is None:
    abstract = None
  else:
    check_shapes(checkpoint_manager, step, target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    restored = checkpoint_manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
  except (ValueError, OSError, KeyError) as error:
    raise _unreadable(checkpoint_manager, step, error) from error
  logging.info("Restored checkpoint step %d from %s", step,
               checkpoint_manager.directory)
  return restored["state"], dict(restored["meta"])
