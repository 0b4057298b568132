"""Neuron swaps: permutations that exchange k disjoint pairs in one layer."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mcjax.permutations import spec as spec_lib
from mcjax.permutations import transforms


def resolve_layer(spec: spec_lib.PermutationSpec, name: str) -> str:
  """Maps a layer name or a depth preset to a permutable layer of the spec.

  Args:
    spec: the permutation spec.
    name: a group name such as 'block2_conv1' or 'fc1', or a depth preset:
      'early' (block0_conv0), 'mid' (block2_conv1) or 'late' (block4_conv1),
      the VGG16 layers of the neuron-swap experiment.

  Returns:
    The group name.

  Raises:
    ValueError: for the output layer, a preset whose layer the model lacks,
      or an unknown name; the message lists the valid names.
  """
  layer = spec_lib.DEPTH_PRESETS.get(name, name)
  if layer in spec.sizes:
    return layer
  valid = f"valid layers: {list(spec.layers)}; presets: {dict(spec_lib.DEPTH_PRESETS)}"
  if layer == spec.output_layer:
    raise ValueError(
        f"Layer {layer!r} is the output layer, whose units are the classes, "
        f"so it cannot be permuted; {valid}.")
  if name in spec_lib.DEPTH_PRESETS:
    raise ValueError(
        f"Depth preset {name!r} means layer {layer!r}, which this model does "
        f"not have; {valid}.")
  raise ValueError(f"Unknown layer {name!r}; {valid}.")


def draw_pairs(spec: spec_lib.PermutationSpec, layer: str, num_pairs: int,
               seed: int) -> list[tuple[int, int]]:
  """Draws k disjoint pairs of units of one layer, reproducibly from a seed.

  The first 2k entries of `jax.random.permutation(jax.random.key(seed), n)`
  form the pairs (entries 2i and 2i + 1), each written smaller unit first.

  Returns:
    A list of num_pairs (i, j) tuples of Python ints, ready for JSON.

  Raises:
    ValueError: for an invalid layer (see `resolve_layer`), num_pairs < 1 or
      num_pairs > n // 2.
  """
  layer = resolve_layer(spec, layer)
  n = spec.sizes[layer]
  _check_num_pairs(layer, n, num_pairs)
  order = np.asarray(jax.random.permutation(jax.random.key(seed), n))
  chosen = order[:2 * num_pairs].reshape(num_pairs, 2)
  return [(int(min(a, b)), int(max(a, b))) for a, b in chosen]


def swap(spec: spec_lib.PermutationSpec, layer: str,
         pairs: Sequence[tuple[int, int]] | None = None,
         num_pairs: int | None = None,
         seed: int | None = None) -> transforms.Permutation:
  """Builds the permutation that swaps k disjoint pairs of units in a layer.

  Every other group is the identity. Applied with `transforms.apply`, it
  exchanges the two units' slices of the layer (kernel output axis, bias,
  batch-norm scale, bias, mean and var) and the matching input slices of the
  layer's consumer, so the network's function does not change.

  Args:
    spec: the permutation spec.
    layer: a layer name or depth preset; see `resolve_layer`.
    pairs: explicit (i, j) unit pairs. Give either pairs, or a seed (and
      optionally num_pairs).
    num_pairs: how many pairs to draw with `draw_pairs`; default 1.
    seed: the integer seed that `draw_pairs` draws the pairs from.

  Returns:
    A permutation (dict of int32 index arrays) for every group of the spec.

  Raises:
    ValueError: for an invalid layer, a pair that repeats a unit or has a
      unit outside 0..n-1, more than n // 2 pairs, or an invalid combination
      of pairs, num_pairs and seed.
  """
  layer = resolve_layer(spec, layer)
  n = spec.sizes[layer]
  if pairs is None:
    if seed is None:
      raise ValueError(
          f"swap of {layer!r} needs explicit pairs or a seed to draw them "
          f"from; got neither.")
    pairs = draw_pairs(spec, layer, 1 if num_pairs is None else num_pairs,
                       seed)
  elif num_pairs is not None and num_pairs != len(pairs):
    raise ValueError(
        f"swap of {layer!r} got {len(pairs)} explicit pairs and "
        f"num_pairs={num_pairs}; give one or the other.")
  elif seed is not None:
    raise ValueError(
        f"swap of {layer!r} got explicit pairs and seed={seed}; the seed only "
        f"draws pairs, so give one or the other.")

  pairs = [tuple(int(u) for u in pair) for pair in pairs]
  _check_num_pairs(layer, n, len(pairs))
  used: dict[int, tuple[int, ...]] = {}
  for pair in pairs:
    if len(pair) != 2:
      raise ValueError(f"A swap pair has two units, got {pair} in {layer!r}.")
    if pair[0] == pair[1]:
      raise ValueError(
          f"Pair {pair} of {layer!r} repeats unit {pair[0]}; a swap pair "
          f"names two different units.")
    for unit in pair:
      if not 0 <= unit < n:
        raise ValueError(
            f"Unit {unit} in pair {pair} is outside 0..{n - 1}, the units of "
            f"{layer!r}.")
      if unit in used:
        raise ValueError(
            f"Unit {unit} appears in pair {used[unit]} and pair {pair} of "
            f"{layer!r}; swap pairs must be disjoint and of two different "
            f"units.")
      used[unit] = pair

  index = np.arange(n, dtype=np.int32)
  for i, j in pairs:
    index[i], index[j] = j, i
  p = transforms.identity(spec)
  p[layer] = jnp.asarray(index)
  return p


def _check_num_pairs(layer: str, n: int, num_pairs: int) -> None:
  if not 1 <= num_pairs <= n // 2:
    raise ValueError(
        f"Layer {layer!r} has {n} units, so it takes 1 to {n // 2} disjoint "
        f"pairs; got {num_pairs}.")
