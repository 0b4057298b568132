"""Layers shared by the mcjax models."""

from __future__ import annotations

import math
from typing import Literal

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

ConvImpl = Literal["auto", "xla", "patches"]
CONV_IMPLS = ("auto", "xla", "patches")

# XLA's CPU backend runs a 3x3 convolution on a 2x2 feature map at about
# 2 GFLOP/s against 70-240 GFLOP/s for larger maps (jax 0.10.2, 2-core AVX-512
# machine; see benchmarks/RESULTS.md). At or below this many pixels per map the
# patch-plus-matmul path is used on the CPU. benchmarks/train_step.py measured
# it faster than XLA's convolution, forward plus backward at batch 128, for
# every VGG16 layer shape from 32x32 down to 2x2 (3.3x at 32x32 64->64, even
# within 6% at 4x4 256->512). Patches take 9x the input's memory, so maps
# larger than 32x32 keep XLA's convolution.
CPU_PATCHES_MAX_PIXELS = 32 * 32


def he_normal_fan_out(key, shape, dtype=jnp.float32):
  """Samples N(0, 2 / (kh * kw * out_channels)) for an HWIO kernel."""
  kh, kw, _, out_channels = shape
  std = math.sqrt(2.0 / (kh * kw * out_channels))
  return std * jax.random.normal(key, shape, dtype)


def torch_linear_kernel_init(key, shape, dtype=jnp.float32):
  """Samples U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's nn.Linear default."""
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def resolve_conv_impl(impl: ConvImpl, height: int, width: int) -> str:
  """Returns "xla" or "patches" for a 3x3 convolution on a height x width map."""
  if impl not in CONV_IMPLS:
    raise ValueError(
        f"conv_impl={impl!r} is invalid; expected one of {CONV_IMPLS}.")
  if impl != "auto":
    return impl
  if jax.default_backend() == "cpu" and height * width <= CPU_PATCHES_MAX_PIXELS:
    return "patches"
  return "xla"


_logged_conv_impls: set[tuple[str, int, int, str]] = set()


def _log_conv_impl_once(name: str, height: int, width: int, impl: str) -> None:
  key = (name, height, width, impl)
  if key not in _logged_conv_impls:
    _logged_conv_impls.add(key)
    logging.info("%s: 3x3 conv on %dx%d maps uses the %s path (backend %s)",
                 name, height, width, impl, jax.default_backend())


def conv3x3_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Computes a stride-1, SAME-padded 3x3 convolution as one matmul.

  Args:
    x: input of shape (batch, height, width, in_channels).
    kernel: HWIO kernel of shape (3, 3, in_channels, out_channels).

  Returns:
    An array of shape (batch, height, width, out_channels), equal to
    `lax.conv_general_dilated` with SAME padding up to float rounding.
  """
  _, height, width, in_channels = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Patch features are ordered (dy, dx, in_channel), the row-major order of
  # the HWIO kernel, so the kernel reshapes without a transpose.
  patches = jnp.concatenate(
      [padded[:, dy:dy + height, dx:dx + width, :]
       for dy in range(3) for dx in range(3)],
      axis=-1)
  return patches @ kernel.reshape(9 * in_channels, -1)


class Conv3x3(nn.Module):
  """A 3x3, stride-1, SAME-padded convolution with bias.

  Its parameters are `kernel` (3, 3, in, out) and `bias` (out,) whichever
  implementation runs, so checkpoints do not depend on the choice.

  Attributes:
    features: number of output channels.
    impl: "xla" (`lax.conv_general_dilated`), "patches" (patch extraction and
      one matmul), or "auto" (patches on the CPU for maps of at most
      `CPU_PATCHES_MAX_PIXELS` pixels, XLA otherwise).
  """

  features: int
  impl: ConvImpl = "auto"
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_channels = x.shape[-1]
    kernel = self.param("kernel", he_normal_fan_out,
                        (3, 3, in_channels, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

    impl = resolve_conv_impl(self.impl, x.shape[1], x.shape[2])
    _log_conv_impl_once(self.name, x.shape[1], x.shape[2], impl)
    if impl == "patches":
      y = conv3x3_patches(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(1, 1), padding="SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias
