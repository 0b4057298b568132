"""Runs stages in order, skipping complete ones and resuming partial ones.

Each stage owns one folder under the workdir. Its completion marker,
`stage.json`, is written last and atomically, and records

  - `fingerprint`: a hash of exactly the config fields the stage depends on
    and of the fingerprints of the stages it reads from, so a changed field
    changes the fingerprint of its stage and of every later stage;
  - `inputs`: the completion tokens of the stages it read from, so a stage
    whose input was recomputed (even from the same config) is out of date;
  - `token`: a fresh random id for this completion.

On each run a stage is, in this order of checks:

  - complete: the marker matches the current fingerprint and inputs; the
    stage is skipped;
  - partial: `started.json` matches them but there is no marker; the stage
    runs again in its folder, where training resumes from its newest
    checkpoint;
  - missing or stale: anything else; its folder and extra outputs are removed
    and it starts from scratch.

When a stage runs, the outputs of every stage that depends on it are removed
first, so no stale result stays on disk next to a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import hashlib
import json
import logging as std_logging
import os
import resource
import shutil
import time
from typing import Any
import uuid

from absl import logging
import ml_collections

from experiments import storage

MARKER = "stage.json"
STARTED = "started.json"
LOG_FILE = "stage.log"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of the pipeline.

  Attributes:
    name: the stage name, also its folder under the workdir.
    run: a function of the `Context` that computes and writes the outputs.
    needs: names of the stages whose outputs it reads; a need on a stage
      that the config disables is ignored.
    fields: dotted config fields or sections the outputs depend on, for
      example ("dataset", "model", "endpoint").
    ignore: dotted fields inside `fields` that do not change the outputs
      (logging intervals, batch sizes of evaluation), left out of the
      fingerprint.
    enabled: whether the stage is part of the pipeline for a config.
    extra_outputs: files outside the stage folder that the stage writes,
      relative to the workdir (removed with the folder when stale).
    shared_dir: returns a folder that several experiments share in place of
      WORKDIR/<name>, or "" for none. A shared folder is never removed: when
      it is stale or partial the run stops with an error.
  """

  name: str
  run: Callable[[Any], None]
  needs: tuple[str, ...] = ()
  fields: tuple[str, ...] = ()
  ignore: tuple[str, ...] = ()
  enabled: Callable[[ml_collections.ConfigDict], bool] = lambda config: True
  extra_outputs: tuple[str, ...] = ()
  shared_dir: Callable[[ml_collections.ConfigDict], str] = lambda config: ""


class QuietLibraryFilter(std_logging.Filter):
  """Drops INFO and DEBUG records of orbax, which logs every save step.

  Warnings and errors pass, and so does every record of other modules.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING
            or "orbax" not in record.pathname)


class StageError(RuntimeError):
  """A stage cannot run, for example because an earlier one is missing."""


def _cpu_seconds() -> float:
  """Returns the user plus system CPU time of this process so far."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _lookup(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def _to_plain(value: Any) -> Any:
  if isinstance(value, (ml_collections.ConfigDict,
                        ml_collections.FrozenConfigDict)):
    return {key: _to_plain(value[key]) for key in value.keys()}
  if isinstance(value, Mapping):
    return {key: _to_plain(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_plain(item) for item in value]
  return value


def stage_config(stage: Stage, config: ml_collections.ConfigDict) -> dict:
  """Returns {dotted field: value} for the fields `stage` depends on."""
  selected = {field: _to_plain(_lookup(config, field)) for field in stage.fields}
  for dotted in stage.ignore:
    section, _, key = dotted.rpartition(".")
    if section in selected and isinstance(selected[section], dict):
      selected[section].pop(key, None)
    else:
      selected.pop(dotted, None)
  return selected


def fingerprint(stage: Stage, config: ml_collections.ConfigDict,
                upstream: Mapping[str, str]) -> str:
  """Hashes the stage's config fields and its inputs' fingerprints."""
  payload = {
      "stage": stage.name,
      "config": stage_config(stage, config),
      "needs": {name: upstream[name] for name in stage.needs},
  }
  text = json.dumps(payload, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Lists dotted fields whose values differ between two plain dicts."""
  if isinstance(old, dict) and isinstance(new, dict):
    found = []
    for key in sorted(set(old) | set(new)):
      name = f"{prefix}.{key}" if prefix else key
      found += _differences(old.get(key), new.get(key), name)
    return found
  return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


@dataclasses.dataclass
class StageState:
  """The status of one stage in a workdir."""

  status: str  # "complete", "partial" or "missing"
  fingerprint: str
  inputs: dict[str, str]
  token: str | None = None
  reason: str = ""


class Pipeline:
  """A list of stages in dependency order, bound to a config and workdir.

  Args:
    stages: every stage of the experiment, each after the stages it needs.
    config: the validated config.
    workdir: the experiment folder.
    context: the object passed to each stage's `run`.
  """

  def __init__(self, stages: Sequence[Stage],
               config: ml_collections.ConfigDict, workdir: str, context: Any):
    self.config = config
    self.workdir = workdir
    self.context = context
    known = [stage.name for stage in stages]
    disabled = {stage.name for stage in stages if not stage.enabled(config)}
    # A need on a stage that this config disables (endpoint_b when there is
    # one endpoint) is dropped.
    self.stages = [
        dataclasses.replace(stage, needs=tuple(
            need for need in stage.needs if need not in disabled))
        for stage in stages if stage.name not in disabled]
    for stage in self.stages:
      for need in stage.needs:
        if need not in known[:known.index(stage.name)]:
          raise ValueError(
              f"Stage {stage.name!r} needs {need!r}, which is not a stage "
              f"before it; the stages are {known}.")

  @property
  def names(self) -> list[str]:
    return [stage.name for stage in self.stages]

  def folder(self, name: str) -> str:
    """Returns the output folder of stage `name`."""
    stage = self._by_name(name)
    return stage.shared_dir(self.config) or os.path.join(self.workdir, name)

  def _by_name(self, name: str) -> Stage:
    for stage in self.stages:
      if stage.name == name:
        return stage
    raise ValueError(f"Unknown stage {name!r}; the stages are {self.names}.")

  def _state(self, stage: Stage, states: Mapping[str, StageState]) -> StageState:
    """Reads the markers of `stage`, given the states of earlier stages."""
    fp = fingerprint(stage, self.config,
                     {name: states[name].fingerprint for name in stage.needs})
    inputs = {name: states[name].token for name in stage.needs}
    missing_inputs = [name for name in stage.needs
                      if states[name].status != "complete"]
    marker_path = os.path.join(self.folder(stage.name), MARKER)
    started_path = os.path.join(self.folder(stage.name), STARTED)

    if not missing_inputs and os.path.exists(marker_path):
      marker = storage.read_json(marker_path)
      if marker.get("fingerprint") == fp and marker.get("inputs") == inputs:
        return StageState("complete", fp, inputs, token=marker["token"])
      changed = _differences(marker.get("config", {}),
                             stage_config(stage, self.config))
      reason = ("config changed: " + "; ".join(changed) if changed else
                "an earlier stage was recomputed")
      return StageState("missing", fp, inputs, reason=reason)
    if missing_inputs:
      return StageState("missing", fp, inputs,
                        reason=f"earlier stages not complete: {missing_inputs}")
    if os.path.exists(started_path):
      started = storage.read_json(started_path)
      if started.get("fingerprint") == fp and started.get("inputs") == inputs:
        return StageState("partial", fp, inputs, reason="interrupted earlier")
    return StageState("missing", fp, inputs, reason="no complete outputs")

  def states(self) -> dict[str, StageState]:
    """Returns the state of every enabled stage, assuming none runs now."""
    states: dict[str, StageState] = {}
    for stage in self.stages:
      states[stage.name] = self._state(stage, states)
    return states

  def _dependents(self, name: str) -> list[Stage]:
    """Returns the stages that read, directly or not, from stage `name`."""
    affected = {name}
    found = []
    for stage in self.stages:
      if affected & set(stage.needs):
        affected.add(stage.name)
        found.append(stage)
    return found

  def _remove_outputs(self, stage: Stage) -> None:
    folder = self.folder(stage.name)
    if os.path.exists(folder):
      shutil.rmtree(folder)
    for extra in stage.extra_outputs:
      path = os.path.join(self.workdir, extra)
      if os.path.exists(path):
        os.remove(path)

  def check_selection(self, selected: Sequence[str]) -> None:
    """Raises ValueError when `selected` names a stage this config lacks."""
    unknown = [name for name in selected if name not in self.names]
    if unknown:
      raise ValueError(
          f"--stages names unknown stages {unknown}; this config has the "
          f"stages {self.names}.")

  def run(self, selected: Sequence[str] | None = None,
          on_complete: Callable[[str, str], None] | None = None
          ) -> dict[str, StageState]:
    """Runs the selected stages (all by default) in order.

    Args:
      selected: stage names to run; the others are only checked where a
        selected stage needs them.
      on_complete: called with (stage name, stage folder) after each stage
        that ran (not after skipped ones).

    Returns:
      The final state of every enabled stage.

    Raises:
      StageError: if a selected stage needs an unselected stage that is not
        complete for the current config.
    """
    selected = list(self.names if selected is None else selected)
    self.check_selection(selected)
    states: dict[str, StageState] = {}
    for stage in self.stages:
      state = self._state(stage, states)
      if stage.name not in selected:
        states[stage.name] = state
        continue
      for need in stage.needs:
        if states[need].status != "complete":
          raise StageError(
              f"Stage {stage.name!r} needs stage {need!r}, whose outputs in "
              f"{self.folder(need)} are missing or out of date "
              f"({states[need].reason}). Run it first, for example with "
              f"--stages={need},{stage.name}, or run without --stages.")
      if state.status == "complete":
        logging.info("Stage %s: complete for this config, skipped.", stage.name)
        states[stage.name] = state
        continue
      states[stage.name] = self._run_stage(stage, state)
      if on_complete is not None:
        on_complete(stage.name, self.folder(stage.name))
    return states

  def _run_stage(self, stage: Stage, state: StageState) -> StageState:
    folder = self.folder(stage.name)
    shared = bool(stage.shared_dir(self.config))
    if shared and os.path.exists(folder) and os.listdir(folder):
      # Another experiment may own it or be writing it right now.
      raise StageError(
          f"Stage {stage.name!r} reads the shared folder {folder}, which "
          f"contains no complete outputs for this config ({state.reason}). "
          "Finish or "
          "fix the job that writes it, or point this config at another "
          "folder; a shared folder is never overwritten.")
    for dependent in self._dependents(stage.name):
      self._remove_outputs(dependent)
    if state.status != "partial":
      self._remove_outputs(stage)
      os.makedirs(folder, exist_ok=shared)
      storage.write_json(os.path.join(folder, STARTED),
                         {"fingerprint": state.fingerprint,
                          "inputs": state.inputs})

    handler = std_logging.FileHandler(os.path.join(folder, LOG_FILE))
    handler.setFormatter(std_logging.Formatter(
        "%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(QuietLibraryFilter())
    absl_logger = logging.get_absl_logger()
    absl_logger.addHandler(handler)
    # Outside `app.run` absl drops INFO records, and stage.log needs them.
    previous_level = absl_logger.level
    if absl_logger.getEffectiveLevel() > std_logging.INFO:
      absl_logger.setLevel(std_logging.INFO)
    if state.status == "partial":
      logging.info("Stage %s: resuming in %s.", stage.name, folder)
    else:
      logging.info("Stage %s: starting from scratch (%s).", stage.name,
                   state.reason)
    started = time.time()
    cpu_started = _cpu_seconds()
    try:
      stage.run(self.context)
    finally:
      absl_logger.removeHandler(handler)
      absl_logger.setLevel(previous_level)
      handler.close()
    seconds = time.time() - started
    cpu_seconds = _cpu_seconds() - cpu_started

    token = uuid.uuid4().hex
    storage.write_json(os.path.join(folder, MARKER), {
        "stage": stage.name,
        "fingerprint": state.fingerprint,
        "inputs": state.inputs,
        "token": token,
        "config": stage_config(stage, self.config),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    logging.info("Stage %s: complete in %.1f s (%.1f s of CPU time).",
                 stage.name, seconds, cpu_seconds)
    return StageState("complete", state.fingerprint, state.inputs, token=token)
