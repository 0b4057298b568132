"""Runs the experiment of a config in a workdir: validate, save, run stages."""

from __future__ import annotations

from collections.abc import Sequence
import os
import platform

from absl import logging
import jax
import ml_collections

from experiments import context as context_lib
from experiments import pipeline
from experiments import stages as stages_lib
from experiments import storage
from experiments import tracking
from experiments import validation

CONFIG_FILE = "config.json"


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """Returns runs/<config.name>, under $MCJAX_RESULTS_DIR when it is set."""
  return os.path.join(os.environ.get("MCJAX_RESULTS_DIR", "runs"), config.name)


def run(config: ml_collections.ConfigDict, workdir: str | None = None,
        stages: Sequence[str] | None = None) -> dict[str, pipeline.StageState]:
  """Validates `config` and runs the selected stages in `workdir`.

  Args:
    config: an experiment config (see configs/base.py for every field).
    workdir: the experiment folder; `default_workdir(config)` when None.
    stages: names of the stages to run, in any order; all when None.

  Returns:
    {stage name: its state after the run}.

  Raises:
    validation.ConfigError: for an invalid config, before any work.
    ValueError: for an unknown stage name.
    pipeline.StageError: when a selected stage needs an earlier stage that
      is missing or out of date.
  """
  validation.validate(config)
  workdir = workdir or default_workdir(config)
  os.makedirs(workdir, exist_ok=True)
  storage.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
  logging.info("Experiment %s in %s; config saved in %s.", config.name,
               workdir, CONFIG_FILE)
  logging.info("JAX %s on %s: devices %s; Python %s.", jax.__version__,
               jax.default_backend(), jax.devices(), platform.python_version())

  ctx = context_lib.Context(config, workdir)
  runner = pipeline.Pipeline(stages_lib.STAGES, config, workdir, ctx)
  ctx.folder_of = runner.folder
  if stages is not None:
    # Fail on a wrong name before any stage runs.
    runner.check_selection(stages)
  with tracking.tracker(config, workdir) as tracker:
    return runner.run(stages, on_complete=tracker.log_stage)
