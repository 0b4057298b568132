"""Per-layer Gram matrices of a curve's bends.

A curve point is theta(t) = sum_i c_i(t) w_i with sum_i c_i(t) = 1. Every
bend is written relative to the start bend w_0, in a basis made of the chord
and the bends' offsets from the chord:

    chord      Delta = w_{n-1} - w_0
    offset k   E_k   = w_k - (1 - s_k) w_0 - s_k w_{n-1},  s_k = k / (n - 1)

so that w_i = w_0 + s_i Delta + E_i exactly (E_0 = E_{n-1} = 0), plus one
vector R_j = r_j - w_0 per extra reference pytree r_j (for example the start
endpoint with a permutation applied). Any distance between a curve point, an
endpoint, the straight line or a reference is then the norm of a combination
of basis vectors, a quadratic form in the per-layer Gram matrix
G_kl = <b_k, b_l>. Norms of curve points also need <w_0, b_k> and ||w_0||^2.

Offsets from the chord, rather than bend differences w_k - w_0, keep a small
bend away from the straight line from cancelling against the large chord in
the quadratic form. The Grams are accumulated in float64 on the host from the
float32 bends: the products of two float32 numbers are exact in float64, so
the only rounding is in float64 sums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import re
from typing import Any

import jax
import numpy as np

from mcjax import curves
from mcjax import pytrees

PyTree = Any

ALL = "all"
_CONV_OR_BN = re.compile(r"^block(\d+)_(conv|bn)(\d+)$")
_DENSE = re.compile(r"^fc(\d+)$")
# Columns per chunk when a leaf is converted to float64, so the float64
# temporaries of the largest VGG16 kernel (2.4M parameters) stay a few MB.
DEFAULT_CHUNK_SIZE = 1 << 18


def _module_name(path: str) -> str:
  """Returns the module part of a leaf path: `fc1/kernel` -> `fc1`."""
  head, sep, _ = path.rpartition("/")
  return head if sep else path


def _forward_key(name: str):
  last = name.rpartition("/")[2]
  match = _CONV_OR_BN.match(last)
  if match:
    block, kind, index = match.groups()
    return (0, int(block), int(index), 0 if kind == "conv" else 1)
  match = _DENSE.match(last)
  if match:
    return (1, int(match.group(1)), 0, 0)
  return None


def layer_groups(params: PyTree,
                 layers: Sequence[str] | None = None) -> dict[str, list[str]]:
  """Groups the leaves of a parameter pytree into layers.

  A layer is one parameter module: the leaves that share a path up to the last
  component, so `block2_conv1/kernel` and `block2_conv1/bias` form the layer
  `block2_conv1`.

  Args:
    params: a parameter pytree (nested dicts), or a curve's `bends`.
    layers: the layer names in the requested order. Must name every module of
      `params` exactly once. When None, VGG names (`block{b}_conv{l}`,
      `block{b}_bn{l}`, `fc{k}`) are put in forward order, each batch-norm
      module after its convolution; a tree with any other module name keeps
      its flattening order.

  Returns:
    {layer name: [leaf paths]} in layer order.

  Raises:
    ValueError: if `layers` misses a module, names one twice, or names one
      that `params` does not contain.
  """
  groups: dict[str, list[str]] = {}
  for path in pytrees.flatten_with_names(params):
    groups.setdefault(_module_name(path), []).append(path)
  if not groups:
    raise ValueError("The parameter pytree has no leaves; nothing to measure.")

  if layers is None:
    keys = [_forward_key(name) for name in groups]
    if all(key is not None for key in keys):
      order = [name for _, name in sorted(zip(keys, groups))]
    else:
      order = list(groups)
  else:
    order = list(layers)
    duplicates = sorted({name for name in order if order.count(name) > 1})
    missing = [name for name in groups if name not in order]
    unknown = [name for name in order if name not in groups]
    if duplicates or missing or unknown:
      raise ValueError(
          f"layers must name every parameter module once: duplicates "
          f"{duplicates}, missing {missing}, unknown {unknown}; the modules "
          f"are {list(groups)}.")
  if ALL in order:
    raise ValueError(f"A module named {ALL!r} clashes with the whole-network "
                     "row; rename it or pass `layers` without it.")
  return {name: groups[name] for name in order}


@dataclasses.dataclass(frozen=True)
class CurveGrams:
  """Per-layer Gram matrices of a curve in the chord/offset basis.

  The basis has K = num_bends - 1 + len(reference_names) vectors: index 0 is
  the chord w_{n-1} - w_0, indices 1..n-2 the interior bends' offsets from the
  chord, then one vector r_j - w_0 per reference. Row L (the last) of every
  array is the whole network, the sum of the layer rows.

  Attributes:
    layers: the L layer names followed by "all".
    param_counts: int64 (L + 1,), parameters per row.
    gram: float64 (L + 1, K, K), G_kl = <b_k, b_l> per row.
    start_dot: float64 (L + 1, K), <w_0, b_k> per row.
    start_sq: float64 (L + 1,), ||w_0||^2 per row.
    kind: the curve kind, "bezier" or "polychain".
    num_bends: number of bends n, endpoints included.
    reference_names: names of the extra references, in basis order.
  """

  layers: tuple[str, ...]
  param_counts: np.ndarray
  gram: np.ndarray
  start_dot: np.ndarray
  start_sq: np.ndarray
  kind: str
  num_bends: int
  reference_names: tuple[str, ...] = ()

  @property
  def basis_size(self) -> int:
    return self.gram.shape[-1]

  def reference_index(self, name: str) -> int:
    """Returns the basis index of the reference `name`."""
    if name not in self.reference_names:
      raise ValueError(f"Reference {name!r} is not in these Grams; they have "
                       f"{list(self.reference_names)}.")
    return self.num_bends - 1 + self.reference_names.index(name)


def endpoint_shapes(curve: curves.Curve) -> PyTree:
  """Returns ShapeDtypeStructs of one endpoint, without slicing the bends."""
  return jax.tree.map(lambda b: jax.ShapeDtypeStruct(b.shape[1:], b.dtype),
                      curve.bends)


def basis_rows(bends: np.ndarray, references: list[np.ndarray]) -> np.ndarray:
  """Returns the (K, ...) basis vectors for (n, ...) float64 bends."""
  num_bends = bends.shape[0]
  start, end = bends[0], bends[-1]
  rows = [end - start]
  for k in range(1, num_bends - 1):
    s = k / (num_bends - 1)
    rows.append(bends[k] - (1.0 - s) * start - s * end)
  rows.extend(reference - start for reference in references)
  return np.stack(rows)


def curve_grams(curve: curves.Curve,
                references: Mapping[str, PyTree] | None = None,
                layers: Sequence[str] | None = None,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> CurveGrams:
  """Builds the per-layer Gram matrices of a curve in one pass over its bends.

  Args:
    curve: a `curves.Curve`; every leaf of `curve.bends` has shape
      (num_bends, ...).
    references: optional {name: pytree shaped like one endpoint}, extra points
      whose distance to every curve point is wanted (see
      `permute_start`).
    layers: layer order, as in `layer_groups`.
    chunk_size: leaf elements converted to float64 at a time; bounds the
      float64 temporaries to about (2 num_bends + K) * chunk_size * 8 bytes.

  Returns:
    A `CurveGrams`.

  Raises:
    ValueError: if a reference does not match the endpoints' structure and
      shapes, or for an invalid `layers` or `chunk_size`.
  """
  if int(chunk_size) < 1:
    raise ValueError(f"chunk_size={chunk_size} is invalid; expected a positive "
                     "number of elements.")
  references = dict(references or {})
  start = endpoint_shapes(curve)
  for name, reference in references.items():
    mismatch = pytrees.first_mismatch(start, reference)
    if mismatch is not None:
      raise ValueError(
          f"Reference {name!r} does not match the curve endpoints: {mismatch}.")

  groups = layer_groups(curve.bends, layers)
  flat_bends = pytrees.flatten_with_names(curve.bends)
  flat_references = [pytrees.flatten_with_names(reference)
                     for reference in references.values()]
  num_bends = curve.num_bends
  basis_size = num_bends - 1 + len(references)
  num_rows = len(groups) + 1
  gram = np.zeros((num_rows, basis_size, basis_size))
  start_dot = np.zeros((num_rows, basis_size))
  start_sq = np.zeros((num_rows,))
  param_counts = np.zeros((num_rows,), np.int64)

  for row, paths in enumerate(groups.values()):
    for path in paths:
      # np.asarray shares memory with a CPU jax array; chunks are the only
      # float64 copies.
      bends = np.asarray(flat_bends[path]).reshape(num_bends, -1)
      others = [np.asarray(flat[path]).reshape(-1) for flat in flat_references]
      param_counts[row] += bends.shape[1]
      for begin in range(0, bends.shape[1], chunk_size):
        chunk = slice(begin, begin + chunk_size)
        bends_64 = bends[:, chunk].astype(np.float64)
        basis = basis_rows(bends_64, [o[chunk].astype(np.float64)
                                       for o in others])
        gram[row] += basis @ basis.T
        start_dot[row] += basis @ bends_64[0]
        start_sq[row] += bends_64[0] @ bends_64[0]

  gram[-1] = gram[:-1].sum(axis=0)
  start_dot[-1] = start_dot[:-1].sum(axis=0)
  start_sq[-1] = start_sq[:-1].sum()
  param_counts[-1] = param_counts[:-1].sum()
  return CurveGrams(layers=tuple(groups) + (ALL,), param_counts=param_counts,
                    gram=gram, start_dot=start_dot, start_sq=start_sq,
                    kind=curve.kind, num_bends=num_bends,
                    reference_names=tuple(references))


def permute_start(curve: curves.Curve, spec, permutation) -> PyTree:
  """Returns the start endpoint with a permutation applied, P w_0.

  Args:
    curve: a curve whose bends are a params pytree (no 'params' key on top).
    spec: a `mcjax.permutations` PermutationSpec for the model.
    permutation: {group name: int32 index array}, as from `perm.swap`.

  Returns:
    A params pytree shaped like one endpoint.
  """
  from mcjax import permutations as perm  # pylint: disable=g-import-not-at-top
  start, _ = curves.endpoints(curve)
  return perm.apply(spec, permutation, {"params": start})["params"]

