"""Permutations as data, and the pure functions that build and apply them.

A permutation is a dict from group name to an int32 index array of shape
(n,), where n is the group's size. Applying `p` to a pytree reindexes every
axis that a group acts on: along that axis, the new unit i is the old unit
p[group][i] (`jnp.take(leaf, p[group], axis)`). Because a group permutes a
layer's outputs and its consumer's inputs alike, the network computes the
same function at another point in weight space, exactly, since only
indexing takes place.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcjax import pytrees
from mcjax.permutations import spec as spec_lib

Permutation = dict[str, jax.Array]


def identity(spec: spec_lib.PermutationSpec) -> Permutation:
  """Returns the permutation that changes nothing: arange(n) per group."""
  return {g: jnp.arange(spec.sizes[g], dtype=jnp.int32) for g in spec.layers}


def random(spec: spec_lib.PermutationSpec, key: jax.Array) -> Permutation:
  """Draws an independent uniform permutation for every group.

  Args:
    spec: the groups and their sizes.
    key: a PRNG key. Group i of `spec.layers` uses `fold_in(key, i)`.
  """
  return _random(spec, key)


@functools.partial(jax.jit, static_argnums=0)
def _random(spec, key):
  return {
      g: jax.random.permutation(jax.random.fold_in(key, i),
                                spec.sizes[g]).astype(jnp.int32)
      for i, g in enumerate(spec.layers)}


def reverse(spec: spec_lib.PermutationSpec) -> Permutation:
  """Returns the mirror: every group's units in reverse order."""
  return {g: jnp.arange(spec.sizes[g] - 1, -1, -1, dtype=jnp.int32)
          for g in spec.layers}


def compose(p: Mapping[str, jax.Array],
            q: Mapping[str, jax.Array]) -> Permutation:
  """Composes two permutations so that q acts first, then p.

  `apply(spec, compose(p, q), v)` equals `apply(spec, p, apply(spec, q, v))`.
  Per group the result is `q[g][p[g]]`.

  Raises:
    ValueError: if p and q name different groups or differ in a size.
  """
  _check_same_groups(p, q, "compose")
  return {g: jnp.take(q[g], p[g]).astype(jnp.int32) for g in p}


def invert(p: Mapping[str, jax.Array]) -> Permutation:
  """Returns the inverse: `apply` of it undoes `apply` of p exactly."""
  return {g: jnp.argsort(p[g]).astype(jnp.int32) for g in p}


def check_permutation(p: Mapping[str, Any],
                      spec: spec_lib.PermutationSpec) -> None:
  """Checks that p has exactly the spec's groups, each a permutation.

  Values are checked only where they are concrete; under `jax.jit` only the
  names, shapes and dtypes are.

  Raises:
    ValueError: for a missing or unknown group, an array that is not 1-D
      integer of the group's size, or one that is not a permutation of
      0..n-1.
  """
  if not isinstance(p, Mapping):
    raise ValueError(
        f"A permutation is a dict from group name to an index array, got "
        f"{type(p).__name__}.")
  missing = [g for g in spec.layers if g not in p]
  unknown = [g for g in p if g not in spec.sizes]
  if missing or unknown:
    raise ValueError(
        f"The permutation's groups do not match the spec: missing "
        f"{missing}, unknown {unknown}; the spec's groups are "
        f"{list(spec.layers)}.")
  for g in spec.layers:
    index = p[g]
    n = spec.sizes[g]
    shape, dtype = jnp.shape(index), jnp.result_type(index)
    if shape != (n,) or not jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(
          f"Permutation of group {g!r} must be an integer array of shape "
          f"({n},), got {dtype} of shape {shape}.")
    if isinstance(index, jax.core.Tracer):
      continue
    values = np.asarray(index)
    if not np.array_equal(np.sort(values), np.arange(n)):
      repeated = np.flatnonzero(np.bincount(
          np.clip(values, 0, n), minlength=n + 1) > 1)
      out_of_range = values[(values < 0) | (values >= n)]
      raise ValueError(
          f"Index array of group {g!r} is not a permutation of 0..{n - 1}: "
          f"repeated values {repeated.tolist()}, out-of-range values "
          f"{out_of_range.tolist()}.")


def apply(spec: spec_lib.PermutationSpec, p: Mapping[str, jax.Array],
          variables: Mapping[str, Any]) -> dict[str, Any]:
  """Permutes a variables pytree by indexing; works under `jax.jit`.

  Args:
    spec: where each group acts.
    p: a permutation with every group of the spec.
    variables: {'params': ..., 'batch_stats': ...} as the model uses them.
      A collection of the spec may be left out altogether ({'params':
      params} for a model with batch norm); it is then absent from the
      result too.

  Returns:
    A pytree of the same structure in which, along every axis that group g
    acts on, unit i is the old unit p[g][i]. For an axis with several copies
    of g (a flatten), every copy is reindexed the same way.

  Raises:
    ValueError: see `spec.validate` and `check_permutation`.
  """
  spec_lib.validate(spec, variables)
  check_permutation(p, spec)

  return _apply_indices(spec, dict(p), dict(variables))


@functools.partial(jax.jit, static_argnums=0)
def _apply_indices(spec, p, variables):
  # One compiled function per spec and shapes, instead of one dispatch per
  # leaf; under an outer jit this inlines.
  flat = pytrees.flatten_with_names(variables)
  permuted = {}
  for path, leaf in flat.items():
    for axis, group in enumerate(spec.axes[path]):
      if group is not None:
        leaf = permute_axis(leaf, p[group], axis,
                            spec.num_copies(path, axis))
    permuted[path] = leaf
  return pytrees.unflatten_names(permuted)


def permute_axis(leaf: jax.Array, index: jax.Array, axis: int,
                copies: int) -> jax.Array:
  """Reindexes one axis of leaf by index, as (copies, n) when copies > 1."""
  if copies == 1:
    return jnp.take(leaf, index, axis=axis)
  shape = leaf.shape
  split = shape[:axis] + (copies, shape[axis] // copies) + shape[axis + 1:]
  taken = jnp.take(leaf.reshape(split), index, axis=axis + 1)
  return taken.reshape(shape)


def _check_same_groups(p: Mapping[str, Any], q: Mapping[str, Any],
                       function: str) -> None:
  if set(p) != set(q):
    raise ValueError(
        f"{function} needs permutations of the same groups, got "
        f"{sorted(p)} and {sorted(q)}.")
  for g in p:
    if jnp.shape(p[g]) != jnp.shape(q[g]):
      raise ValueError(
          f"{function}: group {g!r} has shape {jnp.shape(p[g])} in the first "
          f"permutation and {jnp.shape(q[g])} in the second.")
