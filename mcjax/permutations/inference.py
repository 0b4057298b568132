"""Infers a permutation spec from a Flax (linen) model by tracing one call."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import inspect
import math
from typing import Any

import flax.linen as nn
import jax

from mcjax.permutations import spec as spec_lib


@dataclasses.dataclass(frozen=True)
class _LayerCall:
  """One call of a module that owns arrays directly (a conv, dense or norm)."""

  name: str
  leaves: dict[str, tuple[int, ...]]  # full path -> shape
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  kernel_path: str | None


def infer_spec(model: nn.Module, variables: Mapping[str, Any],
               example_input: Any,
               apply_kwargs: Mapping[str, Any] | None = None,
               ) -> spec_lib.PermutationSpec:
  """Infers the permutation spec of a sequential Flax model.

  The model runs once under `jax.eval_shape` (no arithmetic) while a Flax
  method interceptor records, in call order, every submodule that owns
  arrays directly. Modules with a `kernel` of shape (..., in, out) are
  linear layers: Dense, Conv and `mcjax.models.Conv3x3`. A linear layer's
  output units form a group named after its module path (`block2_conv1`,
  or `Encoder_0/Dense_1` for a nested module), except for the last linear
  layer, the output layer. Modules without a kernel whose arrays are all
  vectors over the incoming channels (BatchNorm, LayerNorm) join the group
  of the preceding linear layer. A linear layer whose input size equals the
  multiple of the channel count of the previous layer's map output (rank
  above 2) reads that map through pooling and a row-major channels-last
  flatten, so its input axis contains one copy of the group per spatial
  position.

  Args:
    model: a Flax linen module.
    variables: its variables, {'params': ..., 'batch_stats': ...}; arrays or
      `jax.ShapeDtypeStruct`s.
    example_input: an input batch (or a ShapeDtypeStruct) for `model.apply`.
    apply_kwargs: keyword arguments for `model.apply`. By default
      {'train': False} if the model's `__call__` takes `train`, else {}.

  Returns:
    A spec that `validate` has checked against `variables`.

  Raises:
    ValueError: if a module is called twice, if a layer's input size does
      not fit the previous layer's output, or for a module whose arrays are
      of no kind listed above.
  """
  if apply_kwargs is None:
    parameters = inspect.signature(model.__call__).parameters
    apply_kwargs = {"train": False} if "train" in parameters else {}
  calls = _trace_layer_calls(model, variables, example_input,
                             dict(apply_kwargs))
  spec = _spec_from_calls(calls, example_input)
  spec_lib.validate(spec, variables)
  return spec


def _trace_layer_calls(model, variables, example_input,
                       apply_kwargs) -> list[_LayerCall]:
  """Records each call of a module that owns arrays, in call order."""
  calls: list[_LayerCall] = []

  def interceptor(next_fun, args, kwargs, context):
    output = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not module.path:
      return output
    owned = {
        collection: {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
        for collection, tree in module.variables.items()}
    if not any(owned.values()):
      return output
    if not args or not hasattr(args[0], "shape") or not hasattr(output,
                                                                 "shape"):
      raise ValueError(
          f"Module {'/'.join(module.path)!r} ({type(module).__name__}) is not "
          f"called with one array and does not return one; infer_spec "
          f"handles sequential stacks of conv, dense and norm layers.")
    name = "/".join(module.path)
    leaves = {f"{collection}/{name}/{key}": tuple(value.shape)
              for collection, tree in owned.items()
              for key, value in tree.items()}
    kernel_path = f"params/{name}/kernel"
    calls.append(_LayerCall(
        name=name, leaves=leaves, input_shape=tuple(args[0].shape),
        output_shape=tuple(output.shape),
        kernel_path=kernel_path if kernel_path in leaves else None))
    return output

  def run(variables, x):
    return model.apply(variables, x, **apply_kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(run, variables, example_input)

  names = [call.name for call in calls]
  for name in names:
    if names.count(name) > 1:
      raise ValueError(
          f"Module {name!r} is called {names.count(name)} times in one "
          f"forward pass; infer_spec handles each layer used once.")
  return calls


def _spec_from_calls(calls: list[_LayerCall],
                     example_input: Any) -> spec_lib.PermutationSpec:
  """Assigns groups to axes by walking the layer calls in forward order."""
  linear = [call for call in calls if call.kernel_path is not None]
  if not linear:
    raise ValueError(
        "The model has no layer with a 'kernel' parameter, so it has no "
        "permutable units.")
  output_layer = linear[-1].name

  axes: dict[str, tuple[str | None, ...]] = {}
  copies: dict[str, tuple[int, ...]] = {}
  sizes: dict[str, int] = {}
  consumers: dict[str, str] = {}
  layers: list[str] = []
  group = None  # the group of the units flowing between layers
  previous_output = tuple(example_input.shape)

  for call in calls:
    if call.kernel_path is None:
      channels = call.input_shape[-1]
      for path, shape in call.leaves.items():
        if shape != (channels,):
          raise ValueError(
              f"Path {path!r} has shape {shape}; infer_spec expects layers "
              f"without a kernel to hold vectors of the {channels} incoming "
              f"channels, as batch norm does.")
        axes[path] = (group,)
      continue

    kernel_shape = call.leaves[call.kernel_path]
    in_size, out_size = kernel_shape[-2], kernel_shape[-1]
    num_copies = _input_copies(call, in_size, previous_output)
    if group is not None:
      consumers[group] = call.name
    own = None if call.name == output_layer else call.name
    if own is not None:
      sizes[own] = out_size
      layers.append(own)
    for path, shape in call.leaves.items():
      if path == call.kernel_path:
        axes[path] = (None,) * (len(shape) - 2) + (group, own)
        if num_copies > 1 and group is not None:
          copies[path] = (1,) * (len(shape) - 2) + (num_copies, 1)
      elif shape == (out_size,):
        axes[path] = (own,)
      else:
        raise ValueError(
            f"Path {path!r} has shape {shape}; infer_spec expects the other "
            f"arrays of layer {call.name!r} to be vectors of its {out_size} "
            f"outputs, as a bias is.")
    group = own
    previous_output = call.output_shape

  return spec_lib.PermutationSpec(
      axes=axes, sizes=sizes, layers=tuple(layers), consumers=consumers,
      output_layer=output_layer, copies=copies)


def _input_copies(call: _LayerCall, in_size: int,
                  previous_output: tuple[int, ...]) -> int:
  """Returns the copies of the previous group in a linear layer's input axis."""
  channels = previous_output[-1]
  if call.input_shape[-1] != in_size:
    raise ValueError(
        f"Layer {call.name!r} has a kernel input size of {in_size} but is "
        f"called on shape {call.input_shape}.")
  if in_size == channels:
    return 1
  # A flatten of a channels-last map, possibly pooled after the layer: in a
  # row-major flatten the channel index varies fastest, so each spatial
  # position contains one copy of every channel.
  # NOTE: shapes cannot tell this flatten from one that moves channels
  # first; such a model gets a wrong spec, which the equivalence check
  # (`compare_networks` on a random permutation) reveals.
  if len(previous_output) > 2 and in_size % channels == 0:
    return in_size // channels
  raise ValueError(
      f"Layer {call.name!r} reads {in_size} features, but the layer before it "
      f"produced shape {previous_output}; infer_spec handles sequential "
      f"models in which each layer reads the previous layer's output, "
      f"possibly flattened.")
