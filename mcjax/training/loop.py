"""The epoch loop shared by endpoint and curve training.

It owns everything around the jitted step: the per-epoch data order, the
device mesh, checkpoints and resume, SIGTERM, non-finite losses, metrics
and logs.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from mcjax import checkpoints
from mcjax import data
from mcjax.training import distributed
from mcjax.training import schedule
from mcjax.training import steps

PyTree = Any
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
# Exit status of a process stopped by SIGTERM (128 + signal number).
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


# Keys of a run, all folded from its seed: initialisation, the per-epoch
# data order, and the per-step augmentation, dropout and t draws.
INIT_STREAM, DATA_STREAM, STEP_STREAM = 0, 1, 2


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns the (init, data, step) keys of a run with `seed`."""
  key = jax.random.key(seed)
  return (jax.random.fold_in(key, INIT_STREAM),
          jax.random.fold_in(key, DATA_STREAM),
          jax.random.fold_in(key, STEP_STREAM))


def epoch_permutation(data_key: jax.Array, epoch: int,
                      num_examples: int) -> jax.Array:
  """Returns the example order of a 0-based `epoch`, a function of both."""
  return jax.random.permutation(jax.random.fold_in(data_key, epoch),
                                num_examples)


@dataclasses.dataclass(frozen=True)
class Task:
  """What distinguishes endpoint from curve training in the shared loop.

  Attributes:
    kind: "endpoint" or "curve", stored in every checkpoint.
    step_fn: the jitted step, `step_fn(step_config, state, images, labels,
      permutation, position, key, learning_rate) -> state`.
    step_config: its static settings.
    init_state: a function of no arguments that returns the state before
      the first step; it runs only when no checkpoint exists, and its
      abstract shapes (`jax.eval_shape`) check a checkpoint before restore.
    test_metrics: maps a state to a dict with loss, nll and error on the
      test split, or None where none is computed.
  """

  kind: str
  step_fn: Callable[..., PyTree]
  step_config: steps.StepConfig
  init_state: Callable[[], PyTree]
  test_metrics: Callable[[PyTree], dict[str, float] | None]


class _SigtermFlag:
  """Records SIGTERM while training runs, so the loop can save and exit."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    logging.warning("SIGTERM received; saving a checkpoint after this step.")

  def __enter__(self):
    # Python delivers signals only to the main thread.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Returns the full batches per epoch; the partial last one is dropped."""
  if num_examples < batch_size:
    raise ValueError(
        f"The training split has {num_examples} examples, fewer than "
        f"batch_size={batch_size}; lower the batch size.")
  return num_examples // batch_size


def _truncate_metrics(path: str, completed_epochs: int) -> None:
  """Drops metric lines of epochs after the checkpoint a run resumes from."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      epoch = json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
      # A process killed while writing leaves a partial last line.
      logging.warning("Dropping an unreadable line of %s: %r", path, line)
      continue
    if epoch <= completed_epochs:
      kept.append(line)
  if len(kept) != len(lines):
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
      f.writelines(kept)
    os.replace(temporary, path)


def _append_metrics(path: str, record: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _all_finite(sums: dict[str, float]) -> bool:
  return all(math.isfinite(value) for value in sums.values())


def _parameter_count(params: PyTree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _non_finite_error(step: int, last_saved: int | None,
                      directory: str) -> NonFiniteLossError:
  return NonFiniteLossError(
      f"The training loss became non-finite by step {step}; training stopped "
      f"without saving. The last good checkpoint is step {last_saved} in "
      f"{directory}. Lower the learning rate or check the data.")


def fit(task: Task, dataset: data.Dataset, config, workdir: str,
        seed: int) -> PyTree:
  """Trains from scratch or resumes, and returns the final state.

  Args:
    task: the step, its settings and the initial state.
    dataset: the dataset; its train split feeds the step.
    config: the validated training config section.
    workdir: receives `checkpoints/` and `metrics.jsonl`.
    seed: the run's seed; a resumed run must use the same one.

  Returns:
    The training state after `config.epochs` epochs, replicated on the mesh.

  Raises:
    NonFiniteLossError: when the loss becomes NaN or infinite.
    SystemExit: with status 143 after saving, when SIGTERM arrives.
    checkpoints.CheckpointError: for a checkpoint of another model, mode or
      seed, or an unreadable one.
  """
  step_config = task.step_config
  mesh = distributed.data_mesh()
  replicated = distributed.replicated(mesh)
  num_examples = len(dataset.train)
  batches = steps_per_epoch(num_examples, step_config.batch_size)
  total_steps = config.epochs * batches
  os.makedirs(workdir, exist_ok=True)
  metrics_path = os.path.join(workdir, METRICS_FILE)
  checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)

  abstract_state = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                        sharding=replicated),
      jax.eval_shape(task.init_state))
  manager = checkpoints.manager(checkpoint_dir, config.keep_checkpoints)
  meta = {"kind": task.kind, "seed": seed, "epochs": config.epochs,
          "steps_per_epoch": batches}
  latest = manager.latest_step()
  if latest is None:
    state = jax.device_put(task.init_state(), replicated)
  else:
    state, saved_meta = checkpoints.restore(manager, latest, abstract_state)
    for name in ("kind", "seed", "steps_per_epoch"):
      if saved_meta.get(name) != meta[name]:
        raise checkpoints.CheckpointError(
            f"Checkpoint step {latest} in {checkpoint_dir} was written with "
            f"{name}={saved_meta.get(name)!r}, but this run has "
            f"{name}={meta[name]!r}; use another workdir or the same "
            "settings.")
  step = int(jax.device_get(state["step"]))
  if step >= total_steps:
    logging.info("Training in %s finished at step %d; returning its result.",
                 workdir, step)
    manager.close()
    return state
  if latest is None:
    checkpoints.save(manager, 0, state, dict(meta, epoch=0))
    last_saved = 0
  else:
    last_saved = latest
    logging.info("Resuming %s training at step %d (epoch %d, batch %d)",
                 task.kind, step, step // batches + 1, step % batches)
  _truncate_metrics(metrics_path, step // batches)

  logging.info("Training %s on %d device(s): %s", task.kind,
               len(jax.devices()), ", ".join(str(d) for d in jax.devices()))
  # For a curve this counts every bend, the two fixed endpoints included.
  logging.info("%d parameters, %d examples, %d steps per epoch, "
               "%d epochs", _parameter_count(state["params"]), num_examples,
               batches, config.epochs)

  _, data_key, step_key = run_keys(seed)
  images = jax.device_put(dataset.train.images, replicated)
  labels = jax.device_put(dataset.train.labels, replicated)
  rates = schedule.learning_rates(config.learning_rate, config.epochs)
  show_progress = sys.stderr.isatty()
  compiled = False

  with _SigtermFlag() as sigterm:
    for epoch in range(step // batches, config.epochs):
      start_time = time.perf_counter()
      position = step % batches
      if position == 0:
        state["train_sums"] = jax.device_put(steps.zero_sums(), replicated)
      permutation = jax.device_put(
          epoch_permutation(data_key, epoch, num_examples), replicated)
      learning_rate = jnp.float32(rates[epoch])

      progress = tqdm.tqdm(total=batches, initial=position,
                           desc=f"epoch {epoch + 1}/{config.epochs}",
                           disable=not show_progress, leave=False)
      for batch_index in range(position, batches):
        if not compiled:
          compile_start = time.perf_counter()
        state = task.step_fn(step_config, state, images, labels, permutation,
                             jnp.int32(batch_index), step_key, learning_rate)
        step += 1
        if not compiled:
          jax.block_until_ready(state)
          compiled = True
          logging.info("First step (tracing, compilation and one step) took "
                       "%.1f s", time.perf_counter() - compile_start)
        progress.update(1)
        if step % config.log_every_steps == 0:
          sums = jax.device_get(state["train_sums"])
          if not _all_finite(sums):
            raise _non_finite_error(step, last_saved, checkpoint_dir)
          logging.info("step %d: running train loss %.4f", step,
                       sums["loss"] / sums["count"])
        if sigterm.requested:
          sums = jax.device_get(state["train_sums"])
          if not _all_finite(sums):
            raise _non_finite_error(step, last_saved, checkpoint_dir)
          checkpoints.save(manager, step, state, dict(meta, epoch=epoch))
          manager.close()
          logging.warning("Saved step %d after SIGTERM; exiting with status "
                          "%d.", step, SIGTERM_EXIT_STATUS)
          raise SystemExit(SIGTERM_EXIT_STATUS)
      progress.close()

      sums = jax.device_get(state["train_sums"])
      train_seconds = time.perf_counter() - start_time
      if not _all_finite(sums):
        raise _non_finite_error(step, last_saved, checkpoint_dir)
      test = task.test_metrics(state)
      record = {
          "epoch": epoch + 1,
          "step": step,
          "learning_rate": float(rates[epoch]),
          "train_loss": float(sums["loss"] / sums["count"]),
          "train_nll": float(sums["nll"] / sums["count"]),
          "train_error": float(100.0 * sums["errors"] / sums["count"]),
          "test_loss": None if test is None else test["loss"],
          "test_nll": None if test is None else test["nll"],
          "test_error": None if test is None else test["error"],
          "seconds": time.perf_counter() - start_time,
          "examples_per_second":
              (batches - position) * step_config.batch_size / train_seconds,
      }
      _append_metrics(metrics_path, record)
      logging.info(
          "epoch %d/%d: lr %.5f, train loss %.4f, train error %.2f%%, "
          "test nll %s, test error %s, %.1f s, %.0f examples/s",
          epoch + 1, config.epochs, record["learning_rate"],
          record["train_loss"], record["train_error"],
          "n/a" if test is None else f"{test['nll']:.4f}",
          "n/a" if test is None else f"{test['error']:.2f}%",
          record["seconds"], record["examples_per_second"])

      if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
        checkpoints.save(manager, step, state, dict(meta, epoch=epoch + 1))
        last_saved = step

  manager.close()
  if sigterm.requested:
    # The signal arrived after the last step; the final state is saved.
    logging.warning("SIGTERM received after the last step; exiting with "
                    "status %d.", SIGTERM_EXIT_STATUS)
    raise SystemExit(SIGTERM_EXIT_STATUS)
  return state


def to_default_device(tree: PyTree) -> PyTree:
  """Copies a replicated pytree to uncommitted arrays on the default device.

  Callers can then combine the result with arrays on any single device.
  """
  return jax.tree.map(jnp.asarray, jax.device_get(tree))
