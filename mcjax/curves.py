"""Bezier and polygonal-chain curves over parameter pytrees.

A curve joins two parameter pytrees (Garipov et al. 2018, "Loss Surfaces,
Mode Connectivity, and Fast Ensembling of DNNs"). It is stored as its bends:
every leaf of the endpoint pytree gains a leading axis of length `num_bends`,
bend 0 and bend `num_bends - 1` are the endpoints, and a point on the curve is
the coefficient-weighted sum over that axis,

    theta(t) = sum_i c_i(t) w_i,   sum_i c_i(t) = 1.

For a Bezier curve c_i(t) is the Bernstein polynomial
binom(n - 1, i) t^i (1 - t)^(n - 1 - i); for a polygonal chain the bends sit at
t_i = i / (n - 1) and c(t) interpolates linearly between the two nearest bends.

Example:

  curve = curves.bezier(params_0, params_1, num_bends=3)
  theta = curves.point(curve, 0.25)
  thetas = jax.vmap(curves.point, in_axes=(None, 0))(curve, ts)
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import math
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mcjax import pytrees

PyTree = Any
CurveKind = Literal["bezier", "polychain"]
KINDS = ("bezier", "polychain")


@flax.struct.dataclass
class Curve:
  """A curve in parameter space, stored as stacked bends.

  Attributes:
    bends: a pytree shaped like the endpoints whose every leaf has a leading
      axis of length `num_bends`; bend 0 and bend -1 are the endpoints.
    kind: "bezier" or "polychain" (static, so it may steer Python branches
      under jit).
  """

  bends: PyTree
  kind: str = flax.struct.field(pytree_node=False, default="bezier")

  @property
  def num_bends(self) -> int:
    return jax.tree.leaves(self.bends)[0].shape[0]


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Curve kind {kind!r} is invalid; expected one of {KINDS}.")


def _check_num_bends(num_bends: int) -> None:
  if not isinstance(num_bends, (int, np.integer)) or num_bends < 2:
    raise ValueError(
        f"num_bends={num_bends!r} is invalid; a curve needs an integer of at "
        "least 2 (the two endpoints).")


def _check_t(t) -> None:
  """Raises for a concrete t outside [0, 1]; traced values pass unchecked."""
  if isinstance(t, jax.core.Tracer):
    return
  values = np.asarray(t)
  if not np.issubdtype(values.dtype, np.floating) and not np.issubdtype(
      values.dtype, np.integer):
    raise ValueError(f"t must be a real number in [0, 1], got {t!r}.")
  if values.size and (np.any(values < 0) or np.any(values > 1)
                      or np.any(np.isnan(values))):
    bad = values[(values < 0) | (values > 1) | np.isnan(values)].ravel()[0]
    raise ValueError(f"t={float(bad)} is outside [0, 1]; a curve is "
                     "parametrised by t in [0, 1].")


def bezier_coefficients(t, num_bends: int) -> jax.Array:
  """Returns the Bernstein coefficients of a Bezier curve at t.

  Args:
    t: a scalar in [0, 1] (may be traced).
    num_bends: number of control points n >= 2.

  Returns:
    A float32 array of shape (num_bends,) with entries
    binom(n - 1, i) t^i (1 - t)^(n - 1 - i); they sum to 1.
  """
  _check_num_bends(num_bends)
  degree = num_bends - 1
  t = jnp.asarray(t, jnp.float32)
  i = jnp.arange(num_bends, dtype=jnp.float32)
  binomials = jnp.asarray([math.comb(degree, k) for k in range(num_bends)],
                          jnp.float32)
  # jnp.power(0.0, 0.0) is 1, so t = 0 and t = 1 give exact unit vectors.
  return binomials * jnp.power(t, i) * jnp.power(1.0 - t, degree - i)


def polychain_coefficients(t, num_bends: int) -> jax.Array:
  """Returns the piecewise-linear coefficients of a polygonal chain at t.

  Bend i sits at t_i = i / (num_bends - 1); between two neighbouring bends the
  coefficients interpolate linearly and all others are 0.
  """
  _check_num_bends(num_bends)
  t = jnp.asarray(t, jnp.float32)
  position = t * (num_bends - 1)
  i = jnp.arange(num_bends, dtype=jnp.float32)
  return jnp.maximum(0.0, 1.0 - jnp.abs(position - i))


def coefficients(kind: str, t, num_bends: int) -> jax.Array:
  """Returns the (num_bends,) coefficients of a `kind` curve at t."""
  _check_kind(kind)
  if kind == "bezier":
    return bezier_coefficients(t, num_bends)
  return polychain_coefficients(t, num_bends)


def combine(bends: PyTree, coeffs: jax.Array) -> PyTree:
  """Returns sum_i coeffs[i] * bends[i] for every leaf.

  The sum is elementwise rather than a matmul, so a one-hot `coeffs` returns
  the selected bend bit for bit on every backend.
  """

  def weighted_sum(leaf):
    weights = coeffs.astype(leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.sum(weights * leaf, axis=0)

  return jax.tree.map(weighted_sum, bends)


def point(curve: Curve, t) -> PyTree:
  """Returns the parameters theta(t) on the curve.

  Args:
    curve: a `Curve`.
    t: a scalar in [0, 1]. A concrete value outside raises ValueError; use
      `jax.vmap(point, in_axes=(None, 0))(curve, ts)` for many t at once.

  Returns:
    A pytree shaped like one endpoint. At t = 0 and t = 1 it equals the
    endpoints exactly.
  """
  _check_t(t)
  return combine(curve.bends, coefficients(curve.kind, t, curve.num_bends))


def _check_endpoints(params_0: PyTree, params_1: PyTree) -> None:
  mismatch = pytrees.first_mismatch(params_0, params_1)
  if mismatch is not None:
    raise ValueError(
        f"Curve endpoints must have the same structure and shapes: {mismatch}.")


def from_bends(bends: Sequence[PyTree], kind: CurveKind = "bezier") -> Curve:
  """Builds a curve from a sequence of bend pytrees, endpoints first and last.

  Raises:
    ValueError: for fewer than two bends, an unknown kind, or bends whose
      structure or shapes differ (naming the first differing path).
  """
  _check_kind(kind)
  _check_num_bends(len(bends))
  for index, bend in enumerate(bends[1:], start=1):
    mismatch = pytrees.first_mismatch(bends[0], bend)
    if mismatch is not None:
      raise ValueError(
          f"Bend {index} does not match bend 0 (first is bend 0): {mismatch}.")
  return Curve(bends=_stack_bends(*bends), kind=kind)


@jax.jit
def _stack_bends(*bends: PyTree) -> PyTree:
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *bends)


@functools.partial(jax.jit, static_argnums=2)
def _stack_line(params_0: PyTree, params_1: PyTree, num_bends: int) -> PyTree:
  """Stacks the endpoints with num_bends - 2 evenly spaced points between."""
  fractions = np.linspace(0.0, 1.0, num_bends)[1:-1]

  def stack(w0, w1):
    interior = [(1.0 - s) * w0 + s * w1 for s in fractions]
    # The endpoints are placed as they are, not as 1 * w0 + 0 * w1, so they
    # keep their exact bits (including the sign of zeros).
    return jnp.stack([w0, *interior, w1]).astype(w0.dtype)

  return jax.tree.map(stack, params_0, params_1)


def _line(params_0: PyTree, params_1: PyTree, num_bends: int,
          kind: CurveKind) -> Curve:
  _check_num_bends(num_bends)
  _check_endpoints(params_0, params_1)
  return Curve(bends=_stack_line(params_0, params_1, int(num_bends)), kind=kind)


def bezier(params_0: PyTree, params_1: PyTree, num_bends: int = 3) -> Curve:
  """Builds a Bezier curve with interior bends on the straight line.

  Bend i starts at (1 - s_i) params_0 + s_i params_1 with s_i = i / (n - 1),
  so the initial curve is the straight segment between the endpoints (for
  3 bends, the middle bend is the midpoint).

  Args:
    params_0: the start endpoint, a pytree of arrays.
    params_1: the end endpoint, with the same structure and shapes.
    num_bends: number of control points, endpoints included (>= 2).

  Raises:
    ValueError: if the endpoints differ in structure or shape (the message
      names the first differing path) or num_bends < 2.
  """
  return _line(params_0, params_1, num_bends, "bezier")


def polychain(params_0: PyTree, params_1: PyTree, num_bends: int = 3) -> Curve:
  """Builds a polygonal chain with interior bends on the straight line."""
  return _line(params_0, params_1, num_bends, "polychain")


def endpoints(curve: Curve) -> tuple[PyTree, PyTree]:
  """Returns the (start, end) bends of a curve."""
  return (jax.tree.map(lambda leaf: leaf[0], curve.bends),
          jax.tree.map(lambda leaf: leaf[-1], curve.bends))


def interior_mask(num_bends: int) -> jax.Array:
  """Returns a float32 (num_bends,) vector that is 0 at the endpoints, 1 inside."""
  _check_num_bends(num_bends)
  return jnp.ones((num_bends,), jnp.float32).at[jnp.array([0, -1])].set(0.0)


def linear_point(params_0: PyTree, params_1: PyTree, t) -> PyTree:
  """Returns (1 - t) params_0 + t params_1, the straight-line baseline."""
  _check_t(t)
  return combine(
      jax.tree.map(lambda a, b: jnp.stack([a, b]), params_0, params_1),
      jnp.stack([1.0 - jnp.asarray(t, jnp.float32), jnp.asarray(t, jnp.float32)]))
