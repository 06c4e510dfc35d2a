"""Quadrature rules for integrating the gradient field along a straight path.

A rule gives T step positions ``a_i`` in (0, 1] and weights ``w_i``; curve point j is the weighted
partial sum ``sum_{i<=j} w_i F(x0 + a_i (x1 - x0))``. The rule is independent of how the K*T path
points are batched through the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("riemann", "gauss-legendre")


@dataclass(frozen=True)
class Quadrature:
    """Step positions, weights, and the path position ``t_j`` each curve point stands for."""

    positions: np.ndarray  # a_i, shape (T,)
    weights: np.ndarray  # w_i, shape (T,)

    @property
    def steps(self) -> int:
        return int(self.positions.shape[0])

    @property
    def curve_times(self) -> np.ndarray:
        """t_j of curve point j: cumulative weight, i.e. the length of path the partial sum covers."""
        return np.cumsum(self.weights)


def quadrature(rule: str, steps: int) -> Quadrature:
    """Return the rule's T positions and weights on [0, 1].

    ``riemann``: right Riemann sum, a_i = i/T, w_i = 1/T, so point j integrates exactly [0, j/T].
    ``gauss-legendre``: T-point Gauss-Legendre nodes mapped to [0, 1]; the last point integrates [0, 1]
    with error O(f^(2T)); intermediate points are partial sums in node order.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rule == "riemann":
        positions = np.arange(1, steps + 1, dtype=np.float64) / steps
        weights = np.full(steps, 1.0 / steps)
    elif rule == "gauss-legendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        positions = (nodes + 1.0) / 2.0
        weights = w / 2.0
    else:
        raise ValueError(f"unknown quadrature rule {rule!r}; expected one of {', '.join(RULES)}")
    return Quadrature(positions=positions, weights=weights)
