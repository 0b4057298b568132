"""Training of one network (an endpoint of a curve)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcjax import data
from mcjax.training import config as config_lib
from mcjax.training import distributed
from mcjax.training import evaluate as evaluate_lib
from mcjax.training import loop
from mcjax.training import steps

PyTree = Any


def step_config_for(model: nn.Module, dataset: data.Dataset,
                    config) -> steps.StepConfig:
  """Returns the static step settings shared by endpoint and curve runs."""
  mesh = distributed.data_mesh()
  distributed.check_batch_size(config.batch_size, mesh, "batch_size")
  loop.steps_per_epoch(len(dataset.train), config.batch_size)
  return steps.StepConfig(
      model=model, mean=tuple(dataset.mean), std=tuple(dataset.std),
      augment=bool(config.augment), batch_size=config.batch_size,
      momentum=float(config.momentum),
      weight_decay=float(config.weight_decay),
      batch_sharding=distributed.batch_sharded(mesh))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...]):
  params_key, dropout_key = jax.random.split(key)
  images = jnp.zeros((1,) + image_shape, jnp.float32)
  return model.init({"params": params_key, "dropout": dropout_key}, images,
                    train=False)


def init_variables(model: nn.Module, dataset: data.Dataset,
                   seed: int) -> PyTree:
  """Initialises {'params', 'batch_stats'?} from the run's init key.

  The jitted initialiser is cached per model and image shape, so runs with
  other seeds in one process do not compile it again.
  """
  init_key, _, _ = loop.run_keys(seed)
  return _init(model, init_key, tuple(dataset.train.images.shape[1:]))


def train_endpoint(model: nn.Module, dataset: data.Dataset, config,
                   workdir: str, seed: int = 0) -> PyTree:
  """Trains a network with SGD, or resumes or returns a finished run.

  SGD with momentum and coupled weight decay on every parameter (as
  torch.optim.SGD), the dnn-mode-connectivity learning-rate schedule, random
  crop and flip when `config.augment`, and one permutation of the training
  split per epoch drawn from (seed, epoch). The last partial batch of an
  epoch is dropped, so every step has the same shape.

  Args:
    model: a Flax model called as `model.apply(variables, x, train=...)`.
    dataset: the dataset; train feeds the steps, test the per-epoch metrics.
    config: a training config section (see
      `config.validate_endpoint_config` for its fields).
    workdir: receives `checkpoints/` and `metrics.jsonl`. A finished run
      there is returned without training; a partial one resumes.
    seed: initialisation, data order, augmentation and dropout all follow
      from it.

  Returns:
    {'params': ..., 'batch_stats': ...} (batch_stats only for models with
    batch norm), on the default device.
  """
  config_lib.validate_endpoint_config(config)
  step_config = step_config_for(model, dataset, config)
  tx = steps.endpoint_optimizer(step_config, config.learning_rate)

  def init_state():
    variables = init_variables(model, dataset, seed)
    state = {"step": jnp.zeros((), jnp.int32),
             "params": variables["params"],
             "opt_state": tx.init(variables["params"]),
             "train_sums": steps.zero_sums()}
    if "batch_stats" in variables:
      state["batch_stats"] = variables["batch_stats"]
    return state

  def test_metrics(state):
    return evaluate_lib.evaluate(
        model, _variables(state), dataset.test, mean=dataset.mean,
        std=dataset.std, batch_size=config.eval_batch_size)

  task = loop.Task(kind="endpoint", step_fn=steps.jit_endpoint_step,
                   step_config=step_config, init_state=init_state,
                   test_metrics=test_metrics)
  state = loop.fit(task, dataset, config, workdir, seed)
  return loop.to_default_device(_variables(state))


def _variables(state: PyTree) -> PyTree:
  variables = {"params": state["params"]}
  if "batch_stats" in state:
    variables["batch_stats"] = state["batch_stats"]
  return variables
