r"""Solving for the logit bias ε and for recalibrated hyperparameters.

Criteria for ε (the logit bias adds ε to the correct-class logit, so
<δ_k>(z; ε) = <δ_k>(z + ε; 0), and μ is the mean of the logit distribution):

``match`` (default)
    <δ_k>_K(μ + ε) = <δ_k>_{K_ref}(μ): the loss sees, at K classes and at the
    centre of the initial logits, the same average error it sees without bias
    at a class count K_ref where it is known to learn (K_ref = 10 by default;
    mean field: ε ≈ ln((K-1)/(K_ref-1))). For a loss whose <δ_k>(z) is a bump
    (every bounded loss) there are two roots. We take the one **below** the
    peak: at K_ref the logits sit below the peak, so learning makes |δ_k| grow
    as z_k rises; the root below the peak reproduces both the value and that
    dynamics, while the root above starts the network where |δ_k| already
    shrinks as it learns -- the loss is "satisfied" while z_k still lies among
    the other logits, which is also why the paper prefers a small ε.
    ``branch="above"`` gives the other root.
``peak``
    the extremum of <δ_k>(z) sits at μ: the largest possible average error
    at initialisation (mean field: ε ≈ ln(K-1) + s²/2 for MAE).
``target``
    <δ_k>_K(μ + ε) = ``target``.

Brackets are derived, not guessed: every <δ_k>(z) is a function of
x = e^{-(z-μ)} S with S ≈ (K-1)·m (m = E[e^{z-μ}]), so all structure lies
within a few units of z_c = μ + ln((K-1)·m), where p ≈ 1/2; p falls below
e^{-25} 25 units to the left and above 1 - e^{-25} 25 units to the right.
We scan that window in steps of 2 (one vectorised evaluation), locate the
extremum and the sign changes, then refine each to 1e-12 with a bracketing
root finder that evaluates two points per call (:mod:`calibrate_cli.engine.roots`:
inverse interpolation through the nearest known points, Brent's method as the
fallback), about five calls where Brent's method makes ten.

Transfer (``q`` is the transfer of GCE's q): given the loss at K_from with
parameter value θ_from, find θ at K_to with <δ_k>_{K_to,θ}(z*) =
<δ_k>_{K_from,θ_from}(z*), z* = μ (or ``at``). The scan runs over the
parameter's valid range (log-spaced when it spans decades); among several roots
the one closest to θ_from (in ratio) is returned and the others reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from .average import Z_LIMIT, Averager, NonFiniteAverage, check_classes, default_samples
from ..errors import NoSolutionError, UsageError, option
from .logits import LogitDistribution
from .param_scan import near_scan, searched_text, whole_range
from .roots import bracketed_root
from .window import scan_window, widen_scan
from ..losses.registry import LossSpec, check_params

CRITERIA = ("match", "peak", "target")
BRANCHES = ("below", "above")
XTOL = 1e-12
PEAK_STEP = 0.25  # first guess of the error of the parabola's vertex through the scan


@dataclass(frozen=True)
class EpsilonResult:
    """ε and everything needed to check it."""

    epsilon: float
    error: float  # numerical error estimate of ε
    criterion: str
    classes: int
    reference_classes: int | None
    target: float | None  # the <δ_k> value matched (match, target)
    delta_before: float  # <δ_k>_K(μ), no bias
    delta_after: float  # <δ_k>_K(μ + ε)
    peak_z: float | None  # where <δ_k>_K(z) is extremal (no bias)
    peak_delta: float | None
    branch: str
    method: str
    other_root: float | None = None
    note: str = ""  # why a σ_k-only loss was averaged by Monte Carlo, if it was


@dataclass(frozen=True)
class TransferResult:
    param: str
    value: float
    error: float
    value_from: float
    k_from: int
    k_to: int
    at: float
    target: float  # <δ_k>_{K_from, θ_from}(at)
    delta_before: float  # <δ_k>_{K_to, θ_from}(at)
    delta_after: float  # <δ_k>_{K_to, θ}(at)
    method: str
    other_roots: list = field(default_factory=list)
    note: str = ""  # why a σ_k-only loss was averaged by Monte Carlo, if it was


# ------------------------------------------------------------------ helpers
def check_k(value, cli: str = "--classes", python: str | None = None) -> int:
    """A class count (an integer in [2, 10^9]); the error names the option ``cli`` on the
    command line, the argument ``python`` (default: ``cli`` as a Python name) elsewhere."""
    return check_classes(value, option(cli, python))


def find_peak(loss: LossSpec, params, classes: int, averager: Averager):
    """(z*, <δ_k>(z*)) where |<δ_k>| is largest, or None if it is monotone (in the window,
    widened while |<δ_k>| still grows at its end)."""
    grid = scan_window(averager.dist, averager, classes)
    vals = averager.mean_delta(loss, params, classes, grid).value
    grid, vals = widen_scan(loss, params, classes, averager, grid, vals)
    i = int(np.argmax(np.abs(vals)))
    if i == 0 or i == len(grid) - 1:
        return None, grid, vals

    def slope(z):
        return averager.slope(loss, params, classes, z).value

    a, b = float(grid[i - 1]), float(grid[i + 1])
    # first call: the bracket's ends and two points around the vertex of the parabola through
    # the three scan values (one vectorised evaluation)
    h, (v0, v1, v2) = float(grid[i] - grid[i - 1]), vals[i - 1:i + 2]
    curv = v0 - 2 * v1 + v2
    r = float(grid[i]) + (0.5 * h * (v0 - v2) / curv if curv else 0.0)
    r = min(max(r, a + PEAK_STEP), b - PEAK_STEP)
    first = sorted({a, r - PEAK_STEP, r + PEAK_STEP, b})
    sv = slope(np.array(first))
    known = {z: float(s) for z, s in zip(first, sv)}
    if known[a] * known[b] > 0:  # extremum at a grid point within rounding; take the best
        zs = grid[i]
    else:
        zs = _bracket(lambda z: slope(z), known, a, b)
    return float(zs), grid, vals


def _bracket(F, known: dict, a: float, b: float) -> float:
    """The root of F between a and b (opposite signs in ``known``), from the closest pair of
    known points around a sign change, to XTOL (:func:`roots.bracketed_root`)."""
    inside = sorted(z for z in known if a <= z <= b)
    for z0, z1 in zip(inside[:-1], inside[1:]):
        if known[z0] == 0:
            return z0
        if known[z0] * known[z1] <= 0:
            return bracketed_root(F, z0, z1, known[z0], known[z1], xtol=XTOL, known=known)
    return bracketed_root(F, a, b, known[a], known[b], xtol=XTOL, known=known)


def _root(f, a, b):
    return brentq(f, a, b, xtol=XTOL, rtol=4 * np.finfo(float).eps)


def _with_extrema(f, grid, vals, most: int = 8, known=None):
    """``grid`` and ``vals`` with every interior local extremum of the scan refined between
    its neighbours and inserted: a scan of step 2 can miss the extremum of a narrow bump by a
    quarter of its height, and with it two roots, or the true range of ``f`` that a "no
    solution" message reports. Used only when the scan finds no root. ``most``: extrema
    refined at most (those farthest from the median first). ``known``: (z, f(z)) of an extremum
    already located to XTOL (the peak): inserted, and not refined again."""
    grid = np.asarray(grid, dtype=float)
    vals = np.asarray(vals, dtype=float)
    skip = None
    if known is not None and grid[0] < known[0] < grid[-1]:
        skip = int(np.searchsorted(grid, known[0]))
        grid, vals = np.insert(grid, skip, known[0]), np.insert(vals, skip, known[1])
    inner = [i for i in range(1, len(vals) - 1)
             if (vals[i] - vals[i - 1]) * (vals[i + 1] - vals[i]) <= 0 and i != skip]
    inner.sort(key=lambda i: -abs(vals[i] - np.nanmedian(vals)))
    xs, vs = [], []
    for i in inner[:most]:
        sign = 1.0 if vals[i] <= min(vals[i - 1], vals[i + 1]) else -1.0

        def g(x):
            try:
                v = float(f(x))
            except NonFiniteAverage:
                return math.inf
            return sign * v if math.isfinite(v) else math.inf

        with np.errstate(all="ignore"):
            r = minimize_scalar(g, bounds=(float(grid[i - 1]), float(grid[i + 1])),
                                method="bounded", options={"xatol": 1e-9})
        if math.isfinite(r.fun) and sign * r.fun < sign * vals[i]:
            xs.append(float(r.x))
            vs.append(float(sign * r.fun))
    if not xs:
        return grid, vals
    g2 = np.append(grid, xs)
    order = np.argsort(g2, kind="stable")
    return g2[order], np.append(vals, vs)[order]


# ------------------------------------------------------------------- epsilon
def solve_epsilon(
    loss: LossSpec,
    params: Mapping[str, float],
    classes: int,
    dist: LogitDistribution,
    *,
    criterion: str = "match",
    reference_classes: int = 10,
    target: float | None = None,
    branch: str = "below",
    averager: Averager | None = None,
    other_root: bool = True,
) -> EpsilonResult:
    """The logit bias ε for ``loss`` at ``classes`` classes under ``criterion``.

    ``other_root=False`` skips refining the root on the other side of the peak (its
    ``other_root`` is then None; ε itself is the same). Raises :class:`NoSolutionError` when no
    real ε satisfies the criterion.
    """
    classes = check_classes(classes)
    if criterion not in CRITERIA:
        raise UsageError(f"{option('--criterion')} must be one of {', '.join(CRITERIA)}, "
                         f"got {criterion!r}")
    if branch not in BRANCHES:
        raise UsageError(f"{option('--branch')} must be 'below' or 'above', got {branch!r}")
    check_params(loss, params)
    av = averager or Averager(dist, samples=default_samples(loss))
    mu = dist.mean
    zs, grid, vals = find_peak(loss, params, classes, av)
    peak_delta = float(av.mean_delta(loss, params, classes, zs).value[0]) if zs is not None else None
    before = av.mean_delta(loss, params, classes, mu)
    ref_k = None

    if criterion == "peak":
        if zs is None:
            raise NoSolutionError(
                f"{loss.name}: <δ_k>(z) at K = {classes} has no extremum (it is monotone in z), "
                "so the peak criterion is undefined; use --criterion match or target")
        eps = zs - mu
        # error of z*: slope error / curvature
        h = 1e-3
        curv = (av.slope(loss, params, classes, zs + h).value[0]
                - av.slope(loss, params, classes, zs - h).value[0]) / (2 * h)
        at_peak = av.slope(loss, params, classes, zs)
        err = abs(at_peak.error[0] / curv) if curv else math.inf
        central = at_peak.note or any(t.loss.sigma is None and t.loss.mc_slope is None
                                      for t in loss.terms(params))
        if at_peak.method != "exact" and central:  # a central-difference slope's rounding
            # moves its root; twice the scatter: two root searches (another bracket, another
            # release) sample the noise at different points, and their difference is what a
            # user sees
            err += 2 * _slope_rounding(av, loss, params, classes, zs) / abs(curv) if curv else 0.0
        after = av.mean_delta(loss, params, classes, mu + eps)
        return EpsilonResult(eps, float(err + XTOL), criterion, classes, None, None,
                             float(before.value[0]), float(after.value[0]), zs, peak_delta,
                             branch, _method(before, after), note=_note(before, after))

    ref = None
    if criterion == "match":
        ref_k = check_k(reference_classes, "--reference-classes")
        ref = av.mean_delta(loss, params, ref_k, mu)
        t, t_err = float(ref.value[0]), float(ref.error[0])
    else:
        if target is None or not math.isfinite(target):
            raise UsageError(f"{option('--criterion')} target needs a finite {option('--target')} "
                             f"value, got {target!r}")
        t, t_err = float(target), 0.0

    f = vals - t
    z_root, other = _pick_root(f, grid, zs, branch, loss, params, classes, av, t, other_root)
    if z_root is None:  # refine the scan's other extrema: a root may hide between two points
        grid, vals = _with_extrema(lambda z: av.mean_delta(loss, params, classes, z).value[0],
                                   grid, vals, known=None if zs is None else (zs, peak_delta))
        z_root, other = _pick_root(vals - t, grid, zs, branch, loss, params, classes, av, t,
                                   other_root)
    if z_root is None:
        _no_root(loss, classes, t, zs, peak_delta, grid, vals)
    at = av.mean_delta(loss, params, classes, z_root)
    slope = av.slope(loss, params, classes, z_root).value[0]
    method = _method(before, at, ref)
    err = (_difference_error(method, t_err, float(at.error[0]), same_draws=ref_k == classes)
           / abs(slope) if slope else math.inf)
    eps = z_root - mu
    return EpsilonResult(eps, float(err + XTOL), criterion, classes, ref_k, t,
                         float(before.value[0]), float(at.value[0]), zs, peak_delta, branch,
                         method, None if other is None else other - mu,
                         note=_note(before, at, ref))


#: offsets (in z) at which the rounding noise of a Monte Carlo slope is sampled around its root
ROUNDING_PROBE = 1e-7 * np.arange(-2.0, 3.0)


def _slope_rounding(av, loss, params, classes: int, z: float) -> float:
    """The rounding noise of a Monte Carlo slope near z, where the slope is a central difference
    of per-draw δ_k (step 1e-4; NFL, biTemp, RCE's clamp, your own losses: a loss with
    ``mc_slope``, such as NCE, has exact per-draw slopes): where a peak is flat (curvature
    10^{-12} and below at large K) that rounding, not the draws, can decide where the root
    falls. Sampled at five points 10^{-7} apart, where the slope itself is linear: the scatter
    about a fitted line."""
    zs = z + ROUNDING_PROBE
    vals = av.slope(loss, params, classes, zs).value
    fit = np.polyval(np.polyfit(ROUNDING_PROBE, vals, 1), ROUNDING_PROBE)
    return float(np.std(vals - fit, ddof=2))


def _method(*averages) -> str:
    """One word for how the averages behind a result were computed."""
    methods = {a.method for a in averages if a is not None}
    return methods.pop() if len(methods) == 1 else "exact+monte-carlo"


def _note(*averages) -> str:
    return "; ".join(dict.fromkeys(a.note for a in averages if a is not None and a.note))


def _difference_error(method: str, target_err: float, value_err: float, *, same_draws: bool) -> float:
    """Error of <δ_k>(root) - target, from the errors of its two parts.

    Exact averages carry deterministic bounds of the numerical error: they add. Monte Carlo
    averages carry standard errors of draws seeded by K, so two different K draw independently
    and their errors add in quadrature; at the same K (match with K = K_ref) the draws are the
    same and cancel exactly (ε = 0 whatever they are).
    """
    if method == "exact":
        return target_err + value_err
    if same_draws:
        return 0.0
    return math.hypot(target_err, value_err)


def _pick_root(f, grid, zs, branch, loss, params, classes, av, t, other_root=True):
    """Bracket the root on the requested side of the peak, then refine it (and the root on the
    other side, unless ``other_root`` is False)."""

    def F(z):
        return float(av.mean_delta(loss, params, classes, z).value[0]) - t

    def Fv(z):
        return av.mean_delta(loss, params, classes, z).value - t

    roots = []
    if zs is None:
        sides = [(grid, f)]
    else:
        fz = F(zs)
        left = grid < zs
        sides = [(np.append(grid[left], zs), np.append(f[left], fz)),
                 (np.insert(grid[~left], 0, zs), np.insert(f[~left], 0, fz))]
    wanted = 0 if branch == "below" else 1
    for side, (g, fv) in enumerate(sides):
        found = None
        if not other_root and zs is not None and side != wanted:
            roots.append(found)
            continue
        idx = np.nonzero(np.sign(fv[:-1]) * np.sign(fv[1:]) <= 0)[0]
        if len(idx):
            # below the peak take the sign change closest to the peak (largest z)
            i = idx[-1] if g is sides[0][0] and zs is not None else idx[0]
            a, b = float(g[i]), float(g[i + 1])
            near = range(max(i - 1, 0), min(i + 3, len(g)))  # neighbours for interpolation
            found = _bracket(Fv, {float(g[j]): float(fv[j]) for j in near}, a, b)
        roots.append(found)
    if zs is None:
        return roots[0], None
    below, above = roots
    if branch == "below":
        return below, above
    return above, below


def _no_root(loss, classes, t, zs, peak_delta, grid, vals):
    """NoSolutionError saying why: the target lies beyond the extremum, or outside the range
    that <δ_k>(z) takes (the true range: ``vals`` hold the scan's extrema refined, and the
    tails are flat beyond the scanned window)."""
    if zs is not None and t * peak_delta > 0 and abs(t) > abs(peak_delta):
        raise NoSolutionError(
            f"{loss.name} at K = {classes}: the target <δ_k> = {t:.6g} is beyond the extremum "
            f"{peak_delta:.6g} (reached at z = {zs:.4g}); no logit bias reaches it. "
            "Use --criterion peak, or a larger --reference-classes")
    lo, hi = float(np.min(vals)), float(np.max(vals))
    if peak_delta is not None:
        lo, hi = min(lo, peak_delta), max(hi, peak_delta)
    side = "above" if t > hi else "below"
    raise NoSolutionError(
        f"{loss.name} at K = {classes}: <δ_k>(z) stays within [{lo:.6g}, {hi:.6g}] for every z "
        f"(extrema refined; flat outside the scanned z in [{grid[0]:.4g}, {grid[-1]:.4g}]); the "
        f"target {t:.6g} lies {side}, so no logit bias reaches it")


# ------------------------------------------------------------------ transfer
def solve_transfer(
    loss: LossSpec,
    params: Mapping[str, float],
    param: str,
    k_from: int,
    k_to: int,
    dist: LogitDistribution,
    *,
    at: float | None = None,
    averager: Averager | None = None,
) -> TransferResult:
    """θ at ``k_to`` such that <δ_k>(at) equals its value at ``k_from`` with ``params[param]``."""
    k_from, k_to = check_k(k_from, "--from", "k_from"), check_k(k_to, "--to", "k_to")
    spec = loss.param(param)
    if spec.flag:
        raise UsageError(f"{loss.name}: '{param}' is a 0/1 switch and cannot be transferred")
    check_params(loss, params)
    av = averager or Averager(dist, samples=default_samples(loss))
    z = dist.mean if at is None else float(at)
    if not math.isfinite(z):
        raise UsageError(f"{option('--at')} must be a finite logit value, got {at!r}")
    if abs(z - dist.mean) > Z_LIMIT:
        raise UsageError(f"{option('--at')} must lie within ±{Z_LIMIT:g} of the logit mean {dist.mean:g} "
                         f"(beyond, p = σ_k or 1 - p underflows in float64), got {at:g}")
    theta0 = float(params[param])
    ref = av.mean_delta(loss, params, k_from, z)
    t, t_err = float(ref.value[0]), float(ref.error[0])

    def F(theta):
        p = dict(params)
        p[param] = float(theta)
        return float(av.mean_delta(loss, p, k_to, z).value[0]) - t

    before = F(theta0) + t

    def F_scan(theta):  # extreme corners of the range may overflow: skip them
        try:
            return F(theta)
        except NonFiniteAverage:
            return math.nan

    grid, fv = np.empty(0), np.empty(0)
    for points in (near_scan, whole_range):  # near θ_from; then, without a root, everywhere
        more = points(spec, theta0) if points is near_scan else points(spec, grid)
        with np.errstate(all="ignore"):
            fm = np.array([F_scan(g) for g in more])
        ok = np.isfinite(fm)
        order = np.argsort(np.concatenate([grid, more[ok]]))
        grid, fv = np.concatenate([grid, more[ok]])[order], np.concatenate([fv, fm[ok]])[order]
        if len(grid) < 2:
            continue
        idx = np.nonzero(np.sign(fv[:-1]) * np.sign(fv[1:]) <= 0)[0]
        if not len(idx):  # refine the scan's extrema: two roots may hide between two points
            grid, fv = _with_extrema(F_scan, grid, fv)
            idx = np.nonzero(np.sign(fv[:-1]) * np.sign(fv[1:]) <= 0)[0]
        if len(idx):
            break
    if len(grid) < 2:
        raise NoSolutionError(f"{loss.name}: <δ_k> is not finite over the range of {param}")
    roots = []
    for i in idx:
        a, b = grid[i], grid[i + 1]
        roots.append(a if fv[i] == 0 else (b if fv[i + 1] == 0 else _root(F, a, b)))
    roots = sorted(set(roots), key=lambda r: abs(math.log(r / theta0)) if r > 0 and theta0 > 0
                   else abs(r - theta0))
    if not roots:
        lo, hi = float(fv.min()) + t, float(fv.max()) + t
        side = "above" if t > hi else "below"
        raise NoSolutionError(
            f"{loss.name}: no {param} gives <δ_k> = {t:.6g} at K = {k_to} (z = {z:g}): searched "
            f"{param} in {searched_text(spec, grid)}, a scan with its extrema refined, "
            f"<δ_k> stays within [{lo:.6g}, {hi:.6g}] and the target lies {side}")
    value = float(roots[0])
    p = dict(params)
    p[param] = value
    after = av.mean_delta(loss, p, k_to, z)
    h = 1e-6 * max(abs(value), 1e-6)
    dfd = (F(value + h) - F(value - h)) / (2 * h) if spec.contains(value - h) and spec.contains(value + h) else 0.0
    err = (_difference_error(_method(ref, after), t_err, float(after.error[0]), same_draws=False)
           / abs(dfd) if dfd else math.inf)
    method = _method(ref, after)
    return TransferResult(param, value, float(err + XTOL * max(1.0, abs(value))), theta0, k_from, k_to, z,
                          t, before, float(after.value[0]), method,
                          [float(r) for r in roots[1:]], note=_note(ref, after))


def solve_q(k_from: int, k_to: int, dist: LogitDistribution, *, q_from: float = 0.7,
            at: float | None = None, loss: str = "gce", averager: Averager | None = None) -> TransferResult:
    """GCE's q at ``k_to`` from ``q_from`` at ``k_from`` (the paper's Figure 3)."""
    from ..losses import get_loss, resolve_params

    spec = get_loss(loss)
    if "q" not in spec.param_names:
        raise UsageError(f"loss '{spec.name}' has no parameter q (try gce, agce, aul or nce-agce)")
    if not q_from > 0:
        raise UsageError(f"{option('--q-from')} must be > 0, got {q_from!r}")
    params = resolve_params(spec, overrides={"q": q_from})
    return solve_transfer(spec, params, "q", k_from, k_to, dist, at=at, averager=averager)
