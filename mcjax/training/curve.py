"""Training of a Bezier curve or polygonal chain between two networks."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mcjax import curves
from mcjax import data
from mcjax import pytrees
from mcjax.training import config as config_lib
from mcjax.training import endpoint
from mcjax.training import evaluate as evaluate_lib
from mcjax.training import loop
from mcjax.training import steps

PyTree = Any
# Per-epoch test metrics of a curve are taken at its midpoint.
TEST_T = 0.5


def train_curve(model: nn.Module, dataset: data.Dataset, config,
                workdir: str, variables_0: PyTree, variables_1: PyTree,
                seed: int = 0) -> curves.Curve:
  """Trains the interior bends of a curve between two networks.

  The curve (Garipov et al. 2018) starts with its interior bends on the
  straight line between the endpoints. Every step draws t ~ U(0, 1)
  (`config.t_per_batch` values, averaged), evaluates the network at theta(t)
  in train mode and takes an SGD step with momentum on the interior bends;
  the loss adds 0.5 * weight_decay * ||theta(t)||^2 when
  `config.regularization` is "reg". Bends 0 and n-1 stay bit-identical.
  Schedule, data order, checkpoints, resume and SIGTERM handling are those
  of `train_endpoint`.

  Per-epoch test metrics are taken at t = 0.5 for models without batch norm
  and left out (null) for models with it, whose running statistics at a
  point of the curve must be recomputed on training data first.

  Args:
    model: a Flax model.
    dataset: the dataset.
    config: a curve training config section (see
      `config.validate_curve_config`).
    workdir: receives `checkpoints/` and `metrics.jsonl`.
    variables_0: the start network, {'params': ..., 'batch_stats'?: ...}.
    variables_1: the end network, with the same structure and shapes.
    seed: data order, augmentation, dropout and t draws follow from it.

  Returns:
    A `curves.Curve` over params, its bends on the default device.
  """
  config_lib.validate_curve_config(config)
  mismatch = pytrees.first_mismatch(variables_0["params"],
                                    variables_1["params"])
  if mismatch is not None:
    raise ValueError(f"Curve endpoints differ: {mismatch}.")
  step_config = dataclasses.replace(
      endpoint.step_config_for(model, dataset, config), kind=config.kind,
      num_bends=config.num_bends, regularization=config.regularization,
      t_per_batch=config.t_per_batch)
  build = curves.bezier if config.kind == "bezier" else curves.polychain
  tx = steps.curve_optimizer(step_config, config.learning_rate)

  def init_state():
    curve = build(variables_0["params"], variables_1["params"],
                  num_bends=config.num_bends)
    return {"step": jnp.zeros((), jnp.int32), "params": curve.bends,
            "opt_state": tx.init(curve.bends),
            "train_sums": steps.zero_sums()}
  has_batch_norm = "batch_stats" in variables_0
  weight_decay = (config.weight_decay if config.regularization == "reg"
                  else 0.0)

  def test_metrics(state):
    if has_batch_norm:
      return None
    theta = curves.point(curves.Curve(state["params"], config.kind), TEST_T)
    return evaluate_lib.evaluate(
        model, {"params": theta}, dataset.test, mean=dataset.mean,
        std=dataset.std, batch_size=config.eval_batch_size,
        weight_decay=weight_decay)

  task = loop.Task(kind="curve", step_fn=steps.jit_curve_step,
                   step_config=step_config, init_state=init_state,
                   test_metrics=test_metrics)
  state = loop.fit(task, dataset, config, workdir, seed)
  return curves.Curve(bends=loop.to_default_device(state["params"]),
                      kind=config.kind)
