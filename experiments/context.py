"""The stage context: the config, the workdir, the data and the model."""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections

from experiments import storage
from mcjax import data
from mcjax import models

PyTree = Any


class Context:
  """The config, the workdir and lazily loaded dataset and model.

  The dataset and the model are built on first use, so a run whose stages
  are all complete touches neither.

  Args:
    config: a validated experiment config.
    workdir: the experiment folder; each stage writes under
      `workdir/<stage name>/` unless `folder_of` returns another folder.
    folder_of: returns the output folder of a stage name (the pipeline's
      `folder`, which resolves shared endpoint folders).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               folder_of: Callable[[str], str] | None = None):
    self.config = config
    self.workdir = workdir
    self.folder_of = folder_of

  def folder(self, stage: str) -> str:
    """Returns the output folder of a stage."""
    if self.folder_of is not None:
      return self.folder_of(stage)
    return os.path.join(self.workdir, stage)

  def path(self, stage: str, name: str) -> str:
    """Returns the path of the file `name` in a stage's folder."""
    return os.path.join(self.folder(stage), name)

  @functools.cached_property
  def dataset(self) -> data.Dataset:
    """The configured dataset, cut to train_size / test_size examples."""
    cfg = self.config.dataset
    dataset = data.load(cfg.name, source=cfg.source,
                        data_dir=cfg.data_dir or None, download=cfg.download)
    train, test = dataset.train, dataset.test
    if cfg.train_size:
      train = train.take(cfg.train_size)
    if cfg.test_size:
      test = test.take(cfg.test_size)
    logging.info("Dataset %s: %d training and %d test images of shape %s.",
                 cfg.name, len(train), len(test), train.images.shape[1:])
    return dataclasses.replace(dataset, train=train, test=test)

  @functools.cached_property
  def model(self):
    """The configured Flax model."""
    cfg = self.config.model
    build = {"vgg16": models.VGG16, "vgg19": models.VGG19}[cfg.name]
    return build(num_classes=self.dataset.num_classes, width=cfg.width,
                 batch_norm=cfg.batch_norm, dropout_rate=cfg.dropout_rate)

  def example_input(self, num_examples: int = 2) -> jax.Array:
    """Returns normalised training images, shape (num_examples, H, W, C)."""
    images = self.dataset.train.images[:num_examples]
    return data.normalize(images, self.dataset.mean, self.dataset.std)

  def write_json(self, stage: str, name: str, value: Any) -> str:
    path = self.path(stage, name)
    storage.write_json(path, value)
    return path

  def read_json(self, stage: str, name: str) -> Any:
    return storage.read_json(self.path(stage, name))

  def append_metrics(self, stage: str, record: dict[str, Any]) -> None:
    """Appends one JSON line to the stage's metrics.jsonl."""
    with open(self.path(stage, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(storage.to_json(record), sort_keys=True) + "\n")
