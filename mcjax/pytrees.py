"""Leaf paths of nested-dict pytrees, written like `block2_conv1/kernel`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

PyTree = Any


def path_to_str(path: tuple[Any, ...]) -> str:
  """Joins a jax key path into a '/'-separated name such as `fc1/kernel`."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return "/".join(parts)


def flatten_with_names(tree: PyTree) -> dict[str, Any]:
  """Returns {path name: leaf} in the tree's flattening order."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_to_str(path): leaf for path, leaf in leaves}


def unflatten_names(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Builds a nested dict from {path name: leaf}; the inverse of flattening."""
  tree: dict[str, Any] = {}
  for name, leaf in flat.items():
    node = tree
    *parents, last = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = leaf
  return tree


def first_mismatch(tree_a: PyTree, tree_b: PyTree) -> str | None:
  """Describes the first path where two pytrees differ in presence or shape.

  Returns:
    None when both trees have the same paths and every leaf has the same
    shape, otherwise a sentence naming the first differing path.
  """
  flat_a = flatten_with_names(tree_a)
  flat_b = flatten_with_names(tree_b)
  for name, leaf in flat_a.items():
    if name not in flat_b:
      return f"path {name!r} is in the first pytree but not in the second"
    shape_a, shape_b = jax.numpy.shape(leaf), jax.numpy.shape(flat_b[name])
    if shape_a != shape_b:
      return f"path {name!r} has shape {shape_a} in the first pytree and {shape_b} in the second"
  for name in flat_b:
    if name not in flat_a:
      return f"path {name!r} is in the second pytree but not in the first"
  return None
