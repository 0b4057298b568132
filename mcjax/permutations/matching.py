"""Weight matching: the permutation that aligns one network to another.

Ainsworth, Hayase and Srinivasa 2023, "Git Re-Basin: Merging Models modulo
Permutation Symmetries" (ICLR), section 3.2: maximise the summed inner
product of all weights, sum over leaves <w_a, apply(p, w_b)>, by coordinate
descent over groups. Holding every other group fixed, the objective is
linear in one group's permutation, so each step is a linear assignment
problem solved exactly, and the objective never decreases.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import optax

from mcjax import pytrees
from mcjax.permutations import spec as spec_lib
from mcjax.permutations import transforms


@jax.jit
def linear_assignment(similarity: jax.Array) -> jax.Array:
  """Solves max_p sum_i similarity[i, p[i]] over permutations p; jittable.

  Args:
    similarity: a square float array of shape (n, n).

  Returns:
    An int32 array p of shape (n,), a permutation of 0..n-1.
  """
  rows, cols = optax.assignment.hungarian_algorithm(-similarity)
  n = similarity.shape[0]
  return jnp.zeros((n,), jnp.int32).at[rows].set(cols.astype(jnp.int32))


def weight_matching(spec: spec_lib.PermutationSpec,
                    variables_a: Mapping[str, Any],
                    variables_b: Mapping[str, Any],
                    key: jax.Array,
                    max_iter: int = 100,
                    init: Mapping[str, jax.Array] | None = None,
                    return_objectives: bool = False):
  """Finds the permutation p for which apply(spec, p, b) is closest to a.

  Each iteration visits every group once, in an order drawn from
  `fold_in(key, iteration)`. For a group g, entry (i, j) of its similarity
  matrix is the inner product of unit i of network A and unit j of network
  B, under the current permutation of the other groups. It sums over every
  axis g acts on: the producing layer's kernel output axis, bias and
  normalisation parameters, and the consumer's input axis, spatial copies
  included. The Hungarian algorithm (`optax.assignment.hungarian_algorithm`)
  then picks g's new permutation. The search stops after an iteration in
  which no group's step raised the objective by more than a relative 1e-7,
  or after max_iter iterations.

  Only the 'params' collection enters the objective, because running
  statistics are not weights; the returned permutation still applies to
  every collection.

  Args:
    spec: the permutation spec of both networks.
    variables_a: the reference, {'params': ..., maybe 'batch_stats': ...}.
    variables_b: the network to align, of the same structure.
    key: a PRNG key for the group order; the result is deterministic for a
      fixed key.
    max_iter: the maximum number of passes over all groups.
    init: a starting permutation; the identity by default.
    return_objectives: also return the objective after the initial
      permutation and after every group step.

  Returns:
    The permutation (dict of int32 arrays), or (permutation, objectives)
    with a list of Python floats that never decreases beyond float32
    rounding, if return_objectives.

  Raises:
    ValueError: if the variables do not fit the spec, or max_iter < 1.
  """
  if max_iter < 1:
    raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
  params_a = _params_only(variables_a)
  params_b = _params_only(variables_b)
  spec_lib.validate(spec, params_a)
  spec_lib.validate(spec, params_b)
  p = dict(transforms.identity(spec) if init is None else init)
  transforms.check_permutation(p, spec)

  flat_a = pytrees.flatten_with_names(params_a)
  flat_b = pytrees.flatten_with_names(params_b)
  objectives = [float(_objective(spec, p, flat_a, flat_b))]

  for iteration in range(max_iter):
    order = jax.random.permutation(jax.random.fold_in(key, iteration),
                                   len(spec.layers))
    improved = False
    for index in order.tolist():
      group = spec.layers[index]
      # The Hungarian solver compiles once per group size, apart from the
      # similarity, which compiles once per group.
      similarity = _group_similarity(spec, group, p, flat_a, flat_b)
      index = linear_assignment(similarity)
      old, new = (float(x) for x in
                  _assignment_sums(similarity, p[group], index))
      p[group] = index
      objectives.append(objectives[-1] + (new - old))
      if new - old > 1e-7 * max(abs(objectives[-1]), 1.0):
        improved = True
    logging.info("weight matching iteration %d: objective %.6g", iteration,
                 objectives[-1])
    if not improved:
      break

  if return_objectives:
    return p, objectives
  return p


def _params_only(variables: Mapping[str, Any]) -> dict[str, Any]:
  if not isinstance(variables, Mapping) or "params" not in variables:
    found = (list(variables) if isinstance(variables, Mapping)
             else type(variables).__name__)
    raise ValueError(
        f"weight_matching expects variables like {{'params': params}}, got "
        f"{found}.")
  return {"params": variables["params"]}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _group_similarity(spec, group, p, flat_a, flat_b):
  return _similarity(spec, p, flat_a, flat_b, group, spec.group_axes[group])


@jax.jit
def _assignment_sums(similarity, old_index, new_index):
  """Returns the summed similarity under the old and the new assignment."""
  units = jnp.arange(similarity.shape[0])
  return (jnp.sum(similarity[units, old_index]),
          jnp.sum(similarity[units, new_index]))


@functools.partial(jax.jit, static_argnums=0)
def _objective(spec, p, flat_a, flat_b) -> jax.Array:
  """Returns sum over leaves of <a, apply(p, b)>."""
  total = jnp.zeros((), jnp.float32)
  for path, leaf_a in flat_a.items():
    leaf_b = _permute_leaf(spec, p, path, flat_b[path], skip_axis=None)
    total += jnp.vdot(leaf_a, leaf_b)
  return total


def _permute_leaf(spec, p, path, leaf, skip_axis):
  """Applies p to every group axis of one leaf except skip_axis."""
  for axis, group in enumerate(spec.axes[path]):
    if group is not None and axis != skip_axis:
      leaf = transforms.permute_axis(
          leaf, p[group], axis, spec.num_copies(path, axis))
  return leaf


def _similarity(spec, p, flat_a, flat_b, group, members) -> jax.Array:
  """Returns the (n, n) matrix of inner products of A's and B's units."""
  n = spec.sizes[group]
  similarity = jnp.zeros((n, n), jnp.float32)
  for path, axis in members:
    if path not in flat_a:
      continue
    leaf_b = _permute_leaf(spec, p, path, flat_b[path], skip_axis=axis)
    similarity += _unit_products(flat_a[path], leaf_b, axis,
                                 spec.num_copies(path, axis), n)
  return similarity


def _unit_products(leaf_a, leaf_b, axis, copies, n) -> jax.Array:
  """Returns (n, n) inner products of the units along one axis."""
  def units(leaf):
    shape = leaf.shape
    split = shape[:axis] + (copies, n) + shape[axis + 1:]
    return jnp.moveaxis(leaf.reshape(split), axis + 1, 0).reshape(n, -1)
  return units(leaf_a) @ units(leaf_b).T
