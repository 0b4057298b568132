"""Small models and variables with non-trivial statistics for permutation tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mcjax import models
from mcjax import pytrees


class MLP(nn.Module):
  """A plain non-square MLP: 12 -> 20 -> 30 -> 5."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(20)(x))
    x = nn.relu(nn.Dense(30)(x))
    return nn.Dense(5)(x)


def random_variables(model, images, seed=0):
  """Draws variables for `model` with NumPy, so no init function compiles.

  Kernels are N(0, 1 / fan_in), biases and batch-norm shifts N(0, 0.25),
  batch-norm scales U(0.5, 1.5), running means N(0, 0.25) and running
  variances U(0.5, 2), so every kind of leaf matters for the logits and
  activations stay of order one.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in pytrees.flatten_with_names(shapes).items():
    name = path.rsplit("/", 1)[-1]
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(size=leaf.shape) / np.sqrt(fan_in)
    elif name == "var":
      value = rng.uniform(0.5, 2.0, size=leaf.shape)
    elif name == "scale":
      value = rng.uniform(0.5, 1.5, size=leaf.shape)
    else:
      value = 0.5 * rng.normal(size=leaf.shape)
    out[path] = jnp.asarray(value, jnp.float32)
  return pytrees.unflatten_names(out)


def vgg_setup(batch_norm=False, size=32, blocks=models.VGG16_BLOCKS, seed=0,
              batch=8):
  """Returns (model, variables, images) for a VGG at width 1/8."""
  model = models.VGG(blocks=blocks, width=1 / 8, batch_norm=batch_norm)
  rng = np.random.default_rng(seed + 100)
  images = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
  return model, random_variables(model, images, seed), images
