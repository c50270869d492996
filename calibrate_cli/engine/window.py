"""Where in z the solver looks for the structure of <δ_k>(z).

All structure of <δ_k>(z) lies near where p = σ_k ≈ 1/2, i.e. near ln S, S = Σ_{j≠k} e^{z_j}:
:func:`scan_window` covers z_c ± HALF_WINDOW, z_c = μ + ln((K-1)·E[e^{z-μ}]), widened to the
range ln S takes. A loss whose own softmax moves its structure further (biTemp's tempered
softmax) is followed by :func:`widen_scan`, as long as |<δ_k>| still grows at an end.
"""

from __future__ import annotations

import math

import numpy as np

from .average import Z_LIMIT

HALF_WINDOW = 25.0


def scan_window(dist, averager, classes: int, step: float = 2.0):
    """z_c ± HALF_WINDOW, widened to ln S ± HALF_WINDOW for the range ln S takes (wide
    logit distributions: S is dominated by its largest term, far from (K-1)·E[e^z])."""
    zc = dist.mean + math.log((classes - 1) * averager._m)
    lo, hi = averager.log_sum_range(classes)
    a = math.floor((min(zc, dist.mean + lo) - HALF_WINDOW - zc) / step)
    b = math.ceil((max(zc, dist.mean + hi) + HALF_WINDOW - zc) / step)
    return zc + step * np.arange(a, b + 1)


#: Points added at a time when the largest |<δ_k>| of the scan sits at one of its ends.
EXTEND = 16
#: ... as long as the last step there still changed |<δ_k>| by this much (relative): a curve
#: that flattens towards its asymptote is monotone, not a peak beyond the window.
EXTEND_RTOL = 1e-6


def widen_scan(loss, params, classes, averager, grid, vals):
    """Widen the scan beyond an end that holds the largest |<δ_k>| while |<δ_k>| still grows
    there (the softmax of a loss may put its structure beyond the window: biTemp's tempered
    softmax at K ≳ 10^5 peaks 40 and more above the logit mean), up to Z_LIMIT."""
    mu = averager.dist.mean
    while True:
        a = np.abs(vals)
        i = int(np.argmax(a))
        if 0 < i < len(grid) - 1:
            return grid, vals
        j = 1 if i == 0 else len(grid) - 2
        if abs(a[i] - a[j]) <= EXTEND_RTOL * a[i]:
            return grid, vals  # flat at the end: monotone towards an asymptote
        step = float(grid[1] - grid[0])
        if i == 0:
            new = grid[0] - step * np.arange(EXTEND, 0, -1)
        else:
            new = grid[-1] + step * np.arange(1, EXTEND + 1)
        new = new[np.abs(new - mu) <= Z_LIMIT]
        if not len(new):
            return grid, vals
        nv = averager.mean_delta(loss, params, classes, new).value
        grid, vals = ((np.concatenate([new, grid]), np.concatenate([nv, vals])) if i == 0 else
                      (np.concatenate([grid, new]), np.concatenate([vals, nv])))
