"""Permutation specs: which permutation group acts on each axis of each leaf."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import types
from typing import Any

import jax.numpy as jnp

from mcjax import pytrees

# Depth presets for the neuron-swap experiment, as layer names of VGG16.
DEPTH_PRESETS = types.MappingProxyType({
    "early": "block0_conv0",
    "mid": "block2_conv1",
    "late": "block4_conv1",
})


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
  """Where each permutation group acts in a variables pytree.

  A group is named after the layer whose output units it permutes (for
  example `block2_conv1` or `fc1`). It acts on that layer's kernel output
  axis and bias, on the scale, bias, mean and var of a normalisation layer
  after it, and on the input axis of the next conv or dense layer, its
  consumer.

  Attributes:
    axes: for every full leaf path, collection first (such as
      `params/block2_conv1/kernel` or `batch_stats/block2_bn1/mean`), one
      entry per axis of the leaf: the name of the group acting on that axis,
      or None.
    sizes: the number of units of each group.
    layers: the group names in forward order. The output layer is not among
      them, because its units are the classes.
    consumers: for each group, the conv or dense layer that reads its units.
    output_layer: the last conv or dense layer, whose output is never
      permuted; None where the spec was written by hand without one.
    copies: for a path whose axis contains several copies of a group, the number
      of copies per axis (1 elsewhere). A conv output of C channels on an
      H x W map that reaches `fc1` through an NHWC flatten gives `fc1/kernel`
      an input axis of H * W * C entries with H * W copies: entry
      (h * W + w) * C + c belongs to channel c, so the axis reshapes to
      (H * W, C) and the group permutes the last of the two. Paths that are
      missing here have one copy on every axis.
  """

  axes: Mapping[str, tuple[str | None, ...]]
  sizes: Mapping[str, int]
  layers: tuple[str, ...] = ()
  consumers: Mapping[str, str] = dataclasses.field(default_factory=dict)
  output_layer: str | None = None
  copies: Mapping[str, tuple[int, ...]] = dataclasses.field(
      default_factory=dict)

  def __post_init__(self):
    axes = {path: tuple(groups) for path, groups in self.axes.items()}
    object.__setattr__(self, "axes", types.MappingProxyType(axes))
    object.__setattr__(self, "sizes",
                       types.MappingProxyType(dict(self.sizes)))
    object.__setattr__(self, "consumers",
                       types.MappingProxyType(dict(self.consumers)))
    object.__setattr__(
        self, "copies",
        types.MappingProxyType(
            {path: tuple(c) for path, c in self.copies.items()}))
    layers = tuple(self.layers) or tuple(sorted(self.sizes))
    object.__setattr__(self, "layers", layers)
    _check_consistency(self)

  def __hash__(self):
    # A hash lets a spec be a static argument of jax.jit. Frozensets make it
    # independent of dict order, as equality is.
    return hash((frozenset(self.axes.items()), frozenset(self.sizes.items()),
                 self.layers, frozenset(self.consumers.items()),
                 self.output_layer, frozenset(self.copies.items())))

  def __reduce__(self):
    # Read-only mapping proxies cannot be pickled, so pickle plain dicts.
    return (PermutationSpec, (dict(self.axes), dict(self.sizes), self.layers,
                              dict(self.consumers), self.output_layer,
                              dict(self.copies)))

  @property
  def group_axes(self) -> dict[str, tuple[tuple[str, int], ...]]:
    """The (path, axis) pairs each group acts on, in the order of `axes`."""
    members: dict[str, list[tuple[str, int]]] = {g: [] for g in self.layers}
    for path, groups in self.axes.items():
      for axis, group in enumerate(groups):
        if group is not None:
          members[group].append((path, axis))
    return {g: tuple(m) for g, m in members.items()}

  @property
  def collections(self) -> tuple[str, ...]:
    """The top-level collections the spec covers, such as ('params',)."""
    return tuple(dict.fromkeys(path.split("/", 1)[0] for path in self.axes))

  def num_copies(self, path: str, axis: int) -> int:
    """Returns how many copies of its group the given axis contains (usually 1)."""
    return self.copies.get(path, (1,) * len(self.axes[path]))[axis]


def _check_consistency(spec: PermutationSpec) -> None:
  """Raises ValueError where the fields of a spec contradict each other."""
  if set(spec.layers) != set(spec.sizes):
    raise ValueError(
        f"PermutationSpec layers {list(spec.layers)} and the groups in sizes "
        f"{sorted(spec.sizes)} must be the same names.")
  for path, groups in spec.axes.items():
    if "/" not in path:
      raise ValueError(
          f"Spec path {path!r} has no collection prefix; write full paths "
          f"such as 'params/{path}'.")
    for group in groups:
      if group is not None and group not in spec.sizes:
        raise ValueError(
            f"Spec path {path!r} names group {group!r}, which has no size; "
            f"known groups: {list(spec.layers)}.")
  for path, copies in spec.copies.items():
    if path not in spec.axes or len(copies) != len(spec.axes[path]):
      raise ValueError(
          f"Spec copies for {path!r} are {copies}, but the path has axes "
          f"{spec.axes.get(path)}; give one count per axis of a known path.")


def validate(spec: PermutationSpec, variables: Mapping[str, Any]) -> None:
  """Checks that a spec describes a variables pytree exactly.

  Args:
    spec: the spec to check.
    variables: a pytree like {'params': {...}, 'batch_stats': {...}} with
      arrays or `jax.ShapeDtypeStruct` leaves. Collections of the spec that
      are absent from `variables` altogether are skipped, so
      {'params': params} passes for a spec with batch norm.

  Raises:
    ValueError: naming the path and the sizes. It is raised for a path in
      `variables` that the spec lacks, or a path of a present collection
      that `variables` lacks. It is also raised for a leaf whose rank
      differs from the spec, or a group whose axes have different sizes.
  """
  flat = _flatten_variables(variables)
  present = {path.split("/", 1)[0] for path in flat}

  for path in flat:
    collection = path.split("/", 1)[0]
    if path not in spec.axes and collection not in spec.collections:
      raise ValueError(
          f"Path {path!r} starts with {collection!r}, which is not a "
          f"collection of the spec ({list(spec.collections)}). Pass "
          f"variables such as {{'params': params}}, not bare params.")
    if path not in spec.axes:
      raise ValueError(
          f"Path {path!r} (shape {jnp.shape(flat[path])}) is not in the "
          f"permutation spec; the spec covers collections "
          f"{list(spec.collections)}. Infer the spec from the same model.")
  for path in spec.axes:
    if path.split("/", 1)[0] in present and path not in flat:
      raise ValueError(
          f"Path {path!r} of the permutation spec is missing from the "
          f"variables, whose collection {path.split('/', 1)[0]!r} is present "
          f"but incomplete. Pass whole collections.")

  seen: dict[str, tuple[str, int, int]] = {}
  for path, leaf in flat.items():
    shape = jnp.shape(leaf)
    groups = spec.axes[path]
    if len(shape) != len(groups):
      raise ValueError(
          f"Path {path!r} has shape {shape} (rank {len(shape)}), but the "
          f"spec gives it {len(groups)} axes: {groups}.")
    for axis, group in enumerate(groups):
      if group is None:
        continue
      copies = spec.num_copies(path, axis)
      if shape[axis] % copies:
        raise ValueError(
            f"Path {path!r} axis {axis} has size {shape[axis]}, which does "
            f"not split into {copies} copies of group {group!r}.")
      size = shape[axis] // copies
      if size != spec.sizes[group]:
        raise ValueError(
            f"Group {group!r} has size {spec.sizes[group]} in the spec, but "
            f"path {path!r} axis {axis} has size {shape[axis]} "
            f"({copies} copies of {size}).")
      if group in seen and seen[group][2] != size:
        other_path, other_axis, other_size = seen[group]
        raise ValueError(
            f"Group {group!r} acts on axes of different sizes: {other_size} "
            f"at {other_path!r} axis {other_axis} and {size} at {path!r} "
            f"axis {axis}.")
      seen.setdefault(group, (path, axis, size))


def _flatten_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Returns {full path: leaf}, raising ValueError for a non-dict pytree."""
  if not isinstance(variables, Mapping):
    raise ValueError(
        f"Expected a variables dict such as {{'params': params}}, got "
        f"{type(variables).__name__}.")
  return pytrees.flatten_with_names(dict(variables))
