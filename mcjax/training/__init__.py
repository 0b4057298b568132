"""Jitted training of endpoints and curves, with checkpoints and resume.

  variables = training.train_endpoint(model, dataset, config, workdir, seed=0)
  curve = training.train_curve(model, dataset, config, workdir,
                               variables_0, variables_1, seed=0)
  metrics = training.evaluate(model, variables, dataset.test,
                              mean=dataset.mean, std=dataset.std)
"""

from mcjax.training.config import REGULARIZATIONS
from mcjax.training.config import validate_curve_config
from mcjax.training.config import validate_endpoint_config
from mcjax.training.curve import train_curve
from mcjax.training.distributed import initialize_distributed
from mcjax.training.distributed import should_initialize_distributed
from mcjax.training.endpoint import train_endpoint
from mcjax.training.evaluate import evaluate
from mcjax.training.loop import NonFiniteLossError
from mcjax.training.schedule import learning_rate_factor
from mcjax.training.schedule import learning_rates
from mcjax.training.steps import l2_regularizer
