"""Optional Weights & Biases logging of the metrics that stages write.

wandb is imported only when `config.wandb.enabled` is set, so the pipeline
and its tests run without it. After each stage the JSON lines of its
`metrics.jsonl` files go to the run under the stage's name. In "offline"
mode wandb writes them under WORKDIR/wandb for a later `wandb sync` and needs
no network access.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import Iterator

from absl import logging
import ml_collections

RUN_ID_FILE = "wandb_run_id.txt"


class NullTracker:
  """Does nothing; used when W&B logging is off."""

  def log_stage(self, name: str, folder: str) -> None:
    del name, folder


class WandbTracker:
  """Sends each stage's metrics.jsonl records to one W&B run."""

  def __init__(self, run):
    self.run = run

  def log_stage(self, name: str, folder: str) -> None:
    paths = sorted(glob.glob(os.path.join(folder, "**", "metrics.jsonl"),
                             recursive=True))
    count = 0
    for path in paths:
      with open(path) as f:
        for line in f:
          record = json.loads(line)
          scalars = {f"{name}/{key}": value for key, value in record.items()
                     if isinstance(value, (int, float))}
          if scalars:
            self.run.log(scalars)
            count += 1
    logging.info("Sent %d metric records of stage %s to W&B.", count, name)


@contextlib.contextmanager
def tracker(config: ml_collections.ConfigDict,
            workdir: str) -> Iterator[NullTracker | WandbTracker]:
  """Yields a tracker for the run; a W&B run when config.wandb.enabled."""
  if not config.wandb.enabled:
    yield NullTracker()
    return

  import wandb  # pylint: disable=import-outside-toplevel

  # A run id kept in the workdir lets a requeued job continue the same run.
  id_path = os.path.join(workdir, RUN_ID_FILE)
  if os.path.exists(id_path):
    with open(id_path) as f:
      run_id = f.read().strip()
  else:
    run_id = wandb.util.generate_id()
    with open(id_path, "w") as f:
      f.write(run_id + "\n")
  run = wandb.init(project=config.wandb.project,
                   entity=config.wandb.entity or None, name=config.name,
                   id=run_id, resume="allow", dir=workdir,
                   mode=config.wandb.mode, config=config.to_dict())
  try:
    yield WandbTracker(run)
  finally:
    run.finish()
