"""A bracketing root finder that evaluates its function a few points at a time.

Each evaluation of <δ_k> (or of its slope) has a fixed cost per call besides its cost per
point z (Monte Carlo: the control-variate regression and the bookkeeping of the per-draw
values; exact: the set-up of the Laplace sums), and the engine accepts arrays of z. Brent's
method asks for one point per call and about ten calls from a bracket of width 2 down to
10^{-12}. :func:`bracketed_root` asks, per call, for F at r ± e, where r is the inverse
interpolation (through the nearest known points, up to four, on which F is monotone) and e an
estimate of its error (the change from one interpolation order to the next, doubled): when e
is right the bracket shrinks to 2e, and the next estimate is of higher order in e. Every point
ever evaluated keeps the bracket honest (the root lies between two known points of opposite
sign at all times), so the answer is as certain as Brent's; after ``max_calls`` calls the rest
is left to Brent's method on the current bracket.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

MAX_CALLS = 8


def _inverse_interpolation(zs, fs):
    """z at F = 0 of the Lagrange polynomial z(F) through the points (fs, zs)."""
    r = 0.0
    for i in range(len(zs)):
        term = zs[i]
        for j in range(len(zs)):
            if j != i:
                term *= fs[j] / (fs[j] - fs[i])
        r += term
    return r


def _estimate(known: dict, a: float, b: float):
    """(r, e): inverse interpolation of the root in (a, b) and its error estimate, from the
    known points nearest to the bracket on which F is strictly monotone."""
    mid = 0.5 * (a + b)
    near = sorted(known, key=lambda z: abs(z - mid))[:4]
    near.sort()
    # keep the longest run around [a, b] that is strictly monotone in F
    fs = [known[z] for z in near]
    ia, ib = near.index(a), near.index(b)
    lo, hi = ia, ib
    sign = 1.0 if known[b] > known[a] else -1.0
    while lo > 0 and sign * (fs[lo] - fs[lo - 1]) > 0:
        lo -= 1
    while hi < len(near) - 1 and sign * (fs[hi + 1] - fs[hi]) > 0:
        hi += 1
    zs, fv = near[lo:hi + 1], fs[lo:hi + 1]
    # order of use: the bracket ends first, then the others by distance
    order = sorted(range(len(zs)), key=lambda i: (zs[i] not in (a, b), abs(zs[i] - mid)))
    zs = [zs[i] for i in order]
    fv = [fv[i] for i in order]
    estimates = [_inverse_interpolation(zs[:m], fv[:m]) for m in range(2, len(zs) + 1)]
    r = estimates[-1]
    e = 2.0 * abs(estimates[-1] - estimates[-2]) if len(estimates) > 1 else 0.25 * (b - a)
    if not (a < r < b) or not math.isfinite(r):
        r, e = mid, 0.25 * (b - a)
    return r, e


def bracketed_root(F, a: float, b: float, fa: float, fb: float, *, xtol: float,
                   known: dict | None = None, max_calls: int = MAX_CALLS) -> float:
    """A root of F in [a, b] (fa, fb of opposite signs or zero) to within ``xtol``.

    ``F`` maps an array of points to an array of values (one vectorised call). ``known``:
    other points already evaluated ({z: F(z)}), used for interpolation only.
    """
    if fa == 0:
        return a
    if fb == 0:
        return b
    pts = dict(known or {})
    pts[a], pts[b] = fa, fb
    xtol = xtol + 4 * np.finfo(float).eps * max(abs(a), abs(b))  # as Brent's xtol + rtol·|x|
    for _ in range(max_calls):
        if b - a <= xtol:
            return a if abs(fa) <= abs(fb) else b
        r, e = _estimate(pts, a, b)
        e = min(max(e, 0.4 * xtol), 0.25 * (b - a))
        new = [r - e, r + e]
        if new[0] <= a:
            new[0] = 0.5 * (a + r)
        if new[1] >= b:
            new[1] = 0.5 * (r + b)
        new = sorted({z for z in new if a < z < b})
        vals = np.asarray(F(np.array(new)), dtype=float)
        for z, v in zip(new, vals):
            pts[z] = float(v)
        for z, v in zip(new, vals):
            if v == 0:
                return z
        # the new bracket: the closest pair of known points around the sign change in [a, b]
        inside = sorted(z for z in pts if a <= z <= b)
        for z0, z1 in zip(inside[:-1], inside[1:]):
            if math.copysign(1.0, pts[z0]) != math.copysign(1.0, pts[z1]):
                a, b, fa, fb = z0, z1, pts[z0], pts[z1]
                break
    if b - a <= xtol:
        return a if abs(fa) <= abs(fb) else b
    return brentq(lambda z: float(F(np.array([z]))[0]), a, b, xtol=xtol,
                  rtol=4 * np.finfo(float).eps)
