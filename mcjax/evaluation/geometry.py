"""Speed and arc length of a curve in parameter space.

For a curve theta(t) = sum_i c_i(t) w_i with n bends (degree m = n - 1), the
velocity is a combination of the bend differences Delta_i = w_(i+1) - w_i:

  Bezier: theta'(t) = m sum_(i < m) b_(i, m-1)(t) Delta_i, a Bezier curve of
    degree m - 1 over the differences (b are Bernstein polynomials);
  polygonal chain: theta'(t) = m Delta_j on the segment j of t.

So with the Gram matrix H_ij = <Delta_i, Delta_j> over all parameter leaves,
the speed ||theta'(t)|| = m sqrt(d(t)^T H d(t)) is exact at every t from one
pass over the parameters, without building theta(t).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from mcjax import curves

# Gauss-Legendre nodes per piece of the t grid. The rule integrates
# polynomials of degree <= 2 * 8 - 1 exactly; the speed is constant on a line
# and on every piece of a polygonal chain, and sqrt of a polynomial of degree
# 2 (n - 2) for a Bezier curve.
QUADRATURE_NODES = 8


def difference_gram(curve: curves.Curve) -> np.ndarray:
  """Returns H_ij = <w_(i+1) - w_i, w_(j+1) - w_j>, float64 (n-1, n-1).

  The differences and inner products are taken in float64 on the host, one
  leaf at a time, so the largest temporary is one leaf's bends in float64.
  """
  gram = np.zeros((curve.num_bends - 1, curve.num_bends - 1), np.float64)
  for leaf in jax.tree.leaves(curve.bends):
    leaf = np.asarray(leaf, np.float64).reshape(curve.num_bends, -1)
    differences = leaf[1:] - leaf[:-1]
    gram += differences @ differences.T
  return gram


def _derivative_weights(kind: str, t: np.ndarray, num_bends: int) -> np.ndarray:
  """Returns d(t) of shape (len(t), num_bends - 1), theta' = m sum d_i Delta_i."""
  degree = num_bends - 1
  t = np.asarray(t, np.float64)
  if kind == "bezier":
    i = np.arange(degree)
    binomials = np.array([math.comb(degree - 1, k) for k in range(degree)],
                         np.float64)
    return (binomials * t[:, None]**i * (1.0 - t[:, None])**(degree - 1 - i))
  segment = np.minimum(np.floor(t * degree).astype(int), degree - 1)
  return np.eye(degree)[segment]


def speed_from_gram(kind: str, gram: np.ndarray, t) -> np.ndarray:
  """Returns ||theta'(t)|| for every t, given `difference_gram` of the curve."""
  curves.coefficients(kind, 0.0, gram.shape[0] + 1)  # validates kind
  degree = gram.shape[0]
  t = np.atleast_1d(np.asarray(t, np.float64))
  weights = _derivative_weights(kind, t, degree + 1)
  squared = np.einsum("ti,ij,tj->t", weights, gram, weights)
  return degree * np.sqrt(np.maximum(squared, 0.0))


def speed(curve: curves.Curve, t) -> np.ndarray:
  """Returns the parameter-space speed ||d theta / dt|| at every t, float64.

  For a polygonal chain at a bend t = j / (n - 1) (j > 0), this is the speed
  of the segment that starts there.
  """
  return speed_from_gram(curve.kind, difference_gram(curve), t)


def _pieces(kind: str, t: np.ndarray, num_bends: int) -> list[list[float]]:
  """Splits every interval [t_k, t_(k+1)] where the speed may jump."""
  breaks = (np.linspace(0.0, 1.0, num_bends)[1:-1] if kind == "polychain"
            else np.zeros((0,)))
  pieces = []
  for left, right in zip(t[:-1], t[1:]):
    inside = breaks[(breaks > left) & (breaks < right)]
    pieces.append([left, *inside.tolist(), right])
  return pieces


def arc_weights_from_gram(kind: str, gram: np.ndarray, t) -> np.ndarray:
  """Returns the arc-length weights of a t grid; see `arc_weights`."""
  t = np.asarray(t, np.float64)
  if t.ndim != 1 or t.size < 2 or np.any(np.diff(t) <= 0):
    raise ValueError(
        f"t must be an increasing 1-D grid of at least 2 values, got {t!r}.")
  nodes, node_weights = np.polynomial.legendre.leggauss(QUADRATURE_NODES)
  weights = np.zeros((t.size - 1, 2), np.float64)
  for k, bounds in enumerate(_pieces(kind, t, gram.shape[0] + 1)):
    left, right = t[k], t[k + 1]
    for a, b in zip(bounds[:-1], bounds[1:]):
      x = 0.5 * (b - a) * nodes + 0.5 * (a + b)
      ds = 0.5 * (b - a) * node_weights * speed_from_gram(kind, gram, x)
      u = (x - left) / (right - left)
      weights[k, 0] += np.sum((1.0 - u) * ds)
      weights[k, 1] += np.sum(u * ds)
  return weights


def arc_weights(curve: curves.Curve, t) -> np.ndarray:
  """Returns the weights that integrate a series on a t grid over arc length.

  For a series f known at the grid t_0 < ... < t_(T-1) and linear in t
  between grid points, the integral over arc length on [t_k, t_(k+1)] is
  A_k f_k + B_k f_(k+1) with A_k = int (1 - u) s(t) dt and
  B_k = int u s(t) dt, where u = (t - t_k) / (t_(k+1) - t_k) and s is the
  speed. Both integrals use `QUADRATURE_NODES`-point Gauss-Legendre
  quadrature, split at the bends of a polygonal chain, so they are exact up
  to rounding for lines and polygonal chains; for a Bezier curve the error is
  that of the quadrature on a smooth integrand. A_k + B_k is the arc length
  of the piece of curve between t_k and t_(k+1).

  Args:
    curve: a `curves.Curve`.
    t: the increasing grid, shape (T,), inside [0, 1].

  Returns:
    float64 array of shape (T - 1, 2) with rows (A_k, B_k).
  """
  return arc_weights_from_gram(curve.kind, difference_gram(curve), t)


def path_length(curve: curves.Curve, num_segments: int = 60) -> float:
  """Returns the arc length int_0^1 ||theta'(t)|| dt of a curve.

  The integral is the sum of `arc_weights` over `num_segments` equal pieces
  of [0, 1]; a line's length is ||w_1 - w_0|| up to rounding.
  """
  grid = np.linspace(0.0, 1.0, num_segments + 1)
  return float(arc_weights(curve, grid).sum())
