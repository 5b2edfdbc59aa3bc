"""Rate-accuracy analysis: Pareto fronts and Bjøntegaard deltas (Le thesis §4.1, §4.2, §5.2).

Non-monotonic curves: every curve is first reduced to its Pareto front (sorted by rate, a point is
kept only if its metric beats every cheaper point). The front is strictly increasing in both rate
and metric, which is what the interpolation needs, and it is the curve a user can actually get:
a point beaten by a cheaper one is never worth choosing. For anchors run on a QP x resolution grid
the front is taken over the whole grid, as in Le §4.2.

BD-rate / BD-metric integrate piecewise-cubic Hermite (PCHIP, scipy) interpolants over the
overlapping range only (log10 rate against metric), the interpolation VCEG-AM91's successors and
the `bjontegaard` package use; tests compare against that package. The deltas themselves are a
few lines of arithmetic that no library exposes with Pareto fronts and partial overlap, so they
are written here.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import quad
from scipy.interpolate import PchipInterpolator


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (rate, metric) on the lower-rate/higher-metric front, sorted by rate."""
    front: list[tuple[float, float]] = []
    for rate, metric in sorted(points, key=lambda p: (p[0], -p[1])):
        if not math.isfinite(rate) or not math.isfinite(metric):
            continue
        if not front or metric > front[-1][1]:
            if front and rate == front[-1][0]:
                front[-1] = (rate, metric)
            else:
                front.append((rate, metric))
    return front


def _prepare(points):
    front = pareto_front(points)
    if len(front) < 2:
        return None
    rate = np.array([p[0] for p in front], dtype=np.float64)
    metric = np.array([p[1] for p in front], dtype=np.float64)
    if (rate <= 0).any():
        return None
    return np.log10(rate), metric


def _mean_over(f, lo, hi):
    return quad(f, lo, hi, limit=200)[0] / (hi - lo)


def bd_rate(reference: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    """Average bitrate change (percent) of ``test`` against ``reference`` at equal metric; negative
    means fewer bits. None when a curve has fewer than two front points or the metric ranges do not overlap."""
    a, b = _prepare(reference), _prepare(test)
    if a is None or b is None:
        return None
    lo, hi = max(a[1].min(), b[1].min()), min(a[1].max(), b[1].max())
    if not hi > lo:
        return None
    ra = PchipInterpolator(a[1], a[0])  # log-rate as a function of metric
    rb = PchipInterpolator(b[1], b[0])
    diff = _mean_over(lambda m: rb(m) - ra(m), lo, hi)
    return float((10**diff - 1) * 100)


def bd_metric(reference: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    """Average metric change of ``test`` against ``reference`` at equal rate (same unit as the metric)."""
    a, b = _prepare(reference), _prepare(test)
    if a is None or b is None:
        return None
    lo, hi = max(a[0].min(), b[0].min()), min(a[0].max(), b[0].max())
    if not hi > lo:
        return None
    ma = PchipInterpolator(a[0], a[1])
    mb = PchipInterpolator(b[0], b[1])
    return float(_mean_over(lambda r: mb(r) - ma(r), lo, hi))
