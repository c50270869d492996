"""Where a transfer looks for the parameter value: the scans of :func:`~calibrate_cli.engine.solve.solve_transfer`.

A transfer first scans around the known value θ_from (three decades either side, where the
answer almost always lies). When that scan holds no root, it scans the whole valid range of the
parameter before it reports "no solution" (:func:`whole_range`): both ends of a finite range, up to
:data:`FAR` for an unbounded one, geometrically (the distance to each end on a log scale, so values
near an open end such as GCE's q → 0 are searched too). The message then states the range
searched (:func:`searched_text`), which is the valid range itself up to the :data:`NEAR` closest
to an open end and beyond :data:`FAR`.
"""

from __future__ import annotations

import math

import numpy as np

#: Closest a scan comes to an open end of a range (relative to max(1, |end|)).
NEAR = 1e-12
#: Farthest a scan goes toward an infinite end of a range.
FAR = 1e12
#: Points per decade of the whole-range scan.
PER_DECADE = 3


def near_scan(param, value_from: float, n: int = 25) -> np.ndarray:
    """The first scan: ``n`` points over [θ/1000, 1000 θ] (or ±1000 for θ <= 0) within the
    valid range, and θ_from itself."""
    lo, hi = param.low, param.high
    span_lo = value_from * 1e-3 if value_from > 0 else -1e3
    span_hi = value_from * 1e3 if value_from > 0 else 1e3
    a = max(lo, span_lo) if math.isfinite(lo) else span_lo
    b = min(hi, span_hi) if math.isfinite(hi) else span_hi
    if a > 0 and b / a > 20:
        grid = np.geomspace(a, b, n)
    else:
        grid = np.linspace(a, b, n)
    grid = np.unique(np.append(grid, value_from))
    return np.array([g for g in grid if param.contains(float(g))])


def _ends(param) -> tuple[float, float]:
    """The outermost values a scan takes: the ends of the range (NEAR inside an open end),
    ±FAR for an infinite end."""
    lo, hi = param.low, param.high
    if math.isfinite(lo):
        a = lo + (NEAR * max(1.0, abs(lo)) if param.low_open else 0.0)
    else:
        a = -FAR
    if math.isfinite(hi):
        b = hi - (NEAR * max(1.0, abs(hi)) if param.high_open else 0.0)
    else:
        b = FAR
    return a, b


def _toward(end: float, span: float, sign: float, closest: float) -> np.ndarray:
    """Points end + sign·d for d from ``closest`` to ``span``, PER_DECADE per decade."""
    if span <= closest:
        return np.array([end + sign * span])
    count = max(2, int(math.ceil(PER_DECADE * math.log10(span / closest))) + 1)
    return end + sign * np.geomspace(closest, span, count)


def whole_range(param, scanned: np.ndarray) -> np.ndarray:
    """Points over the whole valid range of ``param`` not in ``scanned``, ascending: dense near
    each end on a log scale of the distance to it (finite ends), and across the decades up to
    ±FAR (infinite ends)."""
    lo, hi = param.low, param.high
    a, b = _ends(param)
    parts = [np.array([a, b])]
    if math.isfinite(lo) and math.isfinite(hi):
        half = (hi - lo) / 2
        parts += [_toward(lo, half, 1.0, NEAR * max(1.0, abs(lo))),
                  _toward(hi, half, -1.0, NEAR * max(1.0, abs(hi)))]
    elif math.isfinite(lo):
        parts.append(_toward(lo, FAR, 1.0, NEAR * max(1.0, abs(lo))))
    elif math.isfinite(hi):
        parts.append(_toward(hi, FAR, -1.0, NEAR * max(1.0, abs(hi))))
    else:
        parts += [_toward(0.0, FAR, 1.0, NEAR), _toward(0.0, FAR, -1.0, NEAR), np.array([0.0])]
    grid = np.unique(np.concatenate(parts))
    grid = np.array([g for g in grid if param.contains(float(g))])
    return grid[~np.isin(grid, scanned)]


def searched_text(param, grid: np.ndarray) -> str:
    """What was searched, for a "no solution" message: the interval of ``grid`` and how it
    relates to the valid range (all of it; all but NEAR at an open end; part of it)."""
    a, b = float(grid[0]), float(grid[-1])
    lo, hi = _ends(param)
    where = f"[{a:.4g}, {b:.4g}]"
    if a > lo or b < hi:
        return (f"{where} of its range {param.range_text()} (beyond, <δ_k> is not finite "
                "in float64)")
    if not (math.isfinite(param.low) and math.isfinite(param.high)):
        return f"{where} of its range {param.range_text()}"
    if param.low_open or param.high_open:
        return f"{where}, its whole range {param.range_text()} up to {NEAR:g} from an open end"
    return f"{where}, its whole range"
