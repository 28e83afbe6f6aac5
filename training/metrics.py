"""Routing-quality metrics over (mean cost, mean quality) operating points.

Two families, each as its paper defines it:

* RouterBench (Hu et al., 2024, arXiv:2403.12031, §3): a router swept over its knob gives
  points (mean cost, mean quality). Randomly mixing two operating points realises every point
  on the segment between them, and spending more can never be forced to lower quality, so a
  router is judged by the *non-decreasing convex hull* of its points. AIQ is the area under
  that hull over the single models' cost range [c_min, c_max], divided by the range. The hull
  is flat to the right of the router's best point (as RouterBench's `calc_AIQ` extends it) and
  counts as 0 left of the router's cheapest point (no operating point exists there).
* RouteLLM (Ong et al., 2024, arXiv:2406.18665, `routellm/evals/evaluate.py`): for a strong/weak
  pair, quality against the share of calls sent to the strong model. APGR is the trapezoid area
  of (quality − weak) over the share axis divided by that of (strong − weak); CPT(x) is the
  smallest strong-call share at which the curve reaches weak + x·(strong − weak).
"""
from __future__ import annotations

import math

import numpy as np


# Mean costs that differ by rounding only (the same per-row costs summed in another order: random's
# mean over all cells came out 1 ULP below the single models' means) are one cost.
COST_RTOL = 1e-9


def same_cost(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=COST_RTOL)


def _as_points(costs, qualities) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(costs, dtype=float).ravel()
    y = np.asarray(qualities, dtype=float).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError("need the same, non-zero number of costs and qualities")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("costs and qualities must be finite")
    return x, y


def nondecreasing_hull(costs, qualities) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing upper convex hull, sorted by cost.

    The first vertex is the cheapest point (the best quality among equally cheap ones); the
    last is the best-quality point (the cheapest among equally good ones).
    """
    x, y = _as_points(costs, qualities)
    order = np.lexsort((-y, x))  # by cost, then best quality first
    hull: list[tuple[float, float]] = []
    for xi, yi in zip(x[order], y[order]):
        if hull and xi == hull[-1][0]:
            continue  # same cost, lower quality: dominated
        # Monotone chain, upper hull: drop the last vertex while it lies on or below the chord.
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (yi - y1) - (y2 - y1) * (xi - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append((float(xi), float(yi)))
    hx = np.array([p[0] for p in hull])
    hy = np.array([p[1] for p in hull])
    top = int(np.argmax(hy))  # first maximum: cheapest of the best
    return hx[: top + 1], hy[: top + 1]


def hull_value(hx: np.ndarray, hy: np.ndarray, cost: float) -> float:
    """Quality the hull reaches at `cost`: NaN below its cheapest point, flat after its best."""
    if cost < hx[0] and not same_cost(cost, hx[0]):
        return float("nan")
    return float(np.interp(cost, hx, hy))


def aiq(costs, qualities, c_min: float, c_max: float) -> float:
    """RouterBench's Average Improvement in Quality over the cost range [c_min, c_max].

    Undefined (an error) when every single model costs the same: the range is a point, and an
    area over it divided by its zero width is 0/0, not a quality."""
    if not c_max > c_min or same_cost(c_min, c_max):
        raise ValueError(f"AIQ needs c_max > c_min, got [{c_min}, {c_max}]")
    hx, hy = nondecreasing_hull(costs, qualities)
    start = max(c_min, hx[0])
    if start >= c_max:
        return 0.0
    inner = (hx > start) & (hx < c_max)
    xs = np.concatenate(([start], hx[inner], [c_max]))
    ys = np.interp(xs, hx, hy)
    return float(np.trapezoid(ys, xs) / (c_max - c_min))


def quality_at_budget(costs, qualities, budget: float) -> float:
    """Best mean quality reachable (mixing operating points) at mean cost ≤ budget; NaN if none."""
    hx, hy = nondecreasing_hull(costs, qualities)
    return hull_value(hx, hy, budget)


def cost_to_reach(costs, qualities, target: float) -> float:
    """Smallest mean cost at which the hull reaches mean quality `target`; inf if it never does."""
    hx, hy = nondecreasing_hull(costs, qualities)
    if hy[-1] < target:
        return float("inf")
    if hy[0] >= target:
        return float(hx[0])
    i = int(np.argmax(hy >= target))  # first vertex at or above the target; hy is increasing
    x1, x2, y1, y2 = hx[i - 1], hx[i], hy[i - 1], hy[i]
    return float(x1 + (target - y1) * (x2 - x1) / (y2 - y1))


def _share_curve(strong_share, qualities) -> tuple[np.ndarray, np.ndarray]:
    s, q = _as_points(strong_share, qualities)
    if np.any((s < 0) | (s > 1)):
        raise ValueError("strong-call shares must lie in [0, 1]")
    order = np.lexsort((q, s))
    return s[order], q[order]


def apgr(strong_share, qualities, weak_quality: float, strong_quality: float) -> float:
    """RouteLLM's Average Performance Gap Recovered (trapezoid rule over the share axis)."""
    if strong_quality == weak_quality:
        raise ValueError("APGR is undefined when the strong and weak models are equally good")
    s, q = _share_curve(strong_share, qualities)
    width = s[-1] - s[0]
    if width <= 0:
        raise ValueError("APGR needs operating points at two or more strong-call shares")
    auc = np.trapezoid(q, s)
    return float((auc - weak_quality * width) / ((strong_quality - weak_quality) * width))


def cpt(strong_share, qualities, weak_quality: float, strong_quality: float, fraction: float) -> float:
    """RouteLLM's Call-Performance Threshold: least strong-call share reaching
    weak + fraction·(strong − weak) on the piecewise-linear curve; NaN if it never does."""
    target = weak_quality + fraction * (strong_quality - weak_quality)
    s, q = _share_curve(strong_share, qualities)
    if q[0] >= target:
        return float(s[0])
    for i in range(1, len(s)):
        if q[i] >= target:
            return float(s[i - 1] + (target - q[i - 1]) * (s[i] - s[i - 1]) / (q[i] - q[i - 1]))
    return float("nan")
