"""VGG networks shaped like the dnn-mode-connectivity reference.

The reference is the VGG of Garipov et al. 2018 ("Loss Surfaces, Mode
Connectivity, and Fast Ensembling of DNNs", github.com/timgaripov/
dnn-mode-connectivity, models/vgg.py): 3x3 convolutions with bias, ReLU, a 2x2
max-pool after each block, and a Dropout-Dense(512)-ReLU-Dropout-Dense(512)-
ReLU-Dense(classes) classifier. Inputs are NHWC floats, kernels HWIO.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcjax.models import layers

# Output channels of each convolution, grouped by block, at width 1.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))
VGG19_BLOCKS = ((64, 64), (128, 128), (256, 256, 256, 256),
                (512, 512, 512, 512), (512, 512, 512, 512))
CLASSIFIER_UNITS = 512


def conv_name(block: int, index: int) -> str:
  return f"block{block}_conv{index}"


def bn_name(block: int, index: int) -> str:
  return f"block{block}_bn{index}"


def scaled(channels: int, width: float) -> int:
  """Returns max(1, round(channels * width)), the channel count at a width."""
  return max(1, int(round(channels * width)))


class VGG(nn.Module):
  """A VGG network with optional batch norm and a width multiplier.

  Parameters are named `block{b}_conv{l}` (both 0-based), `block{b}_bn{l}`
  with batch norm, and `fc1`, `fc2`, `fc3` for the classifier.

  Attributes:
    blocks: output channels of each convolution at width 1, grouped by block.
    num_classes: size of the output layer.
    width: channel multiplier applied to every convolution and to the two
      hidden classifier layers; 1/8 gives 8..64 channels and 64 hidden units.
    batch_norm: insert BatchNorm after every convolution (VGG16BN). Running
      statistics live in the `batch_stats` collection.
    dropout_rate: dropout before `fc1` and `fc2` in train mode.
    conv_impl: "auto", "xla" or "patches"; see `layers.Conv3x3`.
    dtype: computation dtype (for example jnp.bfloat16); parameters stay
      float32.
  """

  blocks: Sequence[Sequence[int]] = VGG16_BLOCKS
  num_classes: int = 10
  width: float = 1.0
  batch_norm: bool = False
  dropout_rate: float = 0.5
  conv_impl: layers.ConvImpl = "auto"
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits of shape (batch, num_classes) for NHWC images x."""
    if x.ndim != 4:
      raise ValueError(
          f"VGG expects NHWC images of rank 4, got shape {x.shape}.")
    num_pools = len(self.blocks)
    if x.shape[1] % 2**num_pools or x.shape[2] % 2**num_pools:
      raise ValueError(
          f"VGG with {num_pools} blocks halves the image {num_pools} times, so "
          f"height and width must be multiples of {2**num_pools}; got "
          f"{x.shape[1]}x{x.shape[2]}.")

    for b, block in enumerate(self.blocks):
      for l, channels in enumerate(block):
        x = layers.Conv3x3(scaled(channels, self.width), impl=self.conv_impl,
                           dtype=self.dtype, name=conv_name(b, l))(x)
        if self.batch_norm:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=self.dtype,
                           name=bn_name(b, l))(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))

    # NHWC flatten: the fc1 input index is (h * width + w) * channels + c.
    x = x.reshape(x.shape[0], -1)
    hidden = scaled(CLASSIFIER_UNITS, self.width)
    dense = functools.partial(
        nn.Dense, dtype=self.dtype,
        kernel_init=layers.torch_linear_kernel_init)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense(hidden, bias_init=_torch_linear_bias_init(x.shape[-1]),
              name="fc1")(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense(hidden, bias_init=_torch_linear_bias_init(hidden), name="fc2")(x)
    x = nn.relu(x)
    x = dense(self.num_classes, bias_init=_torch_linear_bias_init(hidden),
              name="fc3")(x)
    return x.astype(jnp.float32)


def _torch_linear_bias_init(fan_in: int):
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def VGG16(**kwargs) -> VGG:  # pylint: disable=invalid-name
  """Returns a VGG16 (13 convolutions); keyword arguments set `VGG` fields."""
  return VGG(blocks=VGG16_BLOCKS, **kwargs)


def VGG19(**kwargs) -> VGG:  # pylint: disable=invalid-name
  """Returns a VGG19 (16 convolutions); keyword arguments set `VGG` fields."""
  return VGG(blocks=VGG19_BLOCKS, **kwargs)


def layer_names(model: VGG) -> list[str]:
  """Returns the conv and dense layer names of `model` in forward order."""
  names = [conv_name(b, l) for b, block in enumerate(model.blocks)
           for l in range(len(block))]
  return names + ["fc1", "fc2", "fc3"]
