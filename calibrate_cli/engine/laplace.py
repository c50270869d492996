r"""The Laplace-space machinery of the exact path of :mod:`calibrate_cli.engine.average`.

* :func:`laplace_inverse`: ρ(u) with ∫ρ(u) e^{-ux} du = H(x), by the fixed Talbot contour;
* :func:`u_grid`: the nodes u = e^v of the trapezoidal rule in v = ln u;
* :class:`Representation` and :func:`check_representation`: ρ on that grid and the measured
  bound sup_x |H_rep(x) - H(x)| that makes the reported error honest (see average.py);
* :class:`LaplaceTransform`: ψ(t) = E[1 - e^{-tY}] of the logit distribution (Y = e^{z - mean})
  from its quadrature nodes (kept per z on the lattice of u), and the range that ln Σ Y_j takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .binned import MIN_ATOMS, BinnedAtoms

TALBOT_ORDER = 24
V_STEP = 0.125
SERIES_T = 1e-3  # below t·max(Y) the Laplace transform of Y is summed as a series
LAPLACE_CHUNK = 1 << 19  # (t, atom) pairs per block of the dense Laplace sums (4 MiB each)
CHECK_STEP = 0.5  # spacing in ln x of the check of the Laplace representation
CHECK_CHUNK = 1 << 21  # (x, u) pairs per block of the check
PSI_CACHE = 64  # ψ on the lattice of u kept per z (LaplaceTransform.psi_on_lattice)


def _talbot_nodes(order: int):
    k = np.arange(1, order)
    theta = k * math.pi / order
    cot = 1.0 / np.tan(theta)
    s_unit = theta * (cot + 1j)                      # s(θ)/r
    sigma = theta + (theta * cot - 1.0) * cot
    return s_unit, sigma


def laplace_inverse(H, u: np.ndarray, order: int = TALBOT_ORDER) -> np.ndarray:
    """ρ(u) with ∫ρ(u) e^{-ux} du = H(x), by the fixed Talbot contour.

    ρ(u) = (r/M)[½ H(r) e^{ru} + Σ_{k=1}^{M-1} Re(e^{u s_k} H(s_k)(1 + iσ_k))],
    s_k = rθ_k(cot θ_k + i), σ_k = θ_k + (θ_k cot θ_k - 1) cot θ_k, r = 2M/(5u).
    Valid when H's singularities lie on the negative real axis.
    """
    u = np.asarray(u, dtype=float)
    s_unit, sigma = _talbot_nodes(order)
    r = 2.0 * order / (5.0 * u)
    s = r[:, None] * s_unit[None, :]
    with np.errstate(over="ignore", invalid="ignore"):
        terms = np.exp(u[:, None] * s) * H(s) * (1.0 + 1j * sigma[None, :])
        first = 0.5 * np.real(H(r.astype(complex))) * np.exp(r * u)
    return (r / order) * (first + np.real(terms).sum(axis=1))


def u_grid(H, decay: float, log_u_lo: float) -> np.ndarray:
    """Nodes u = e^v (v on multiples of V_STEP) covering where ρ(u)·u matters.

    Upper end: ρ decays like e^{-decay·u}. Lower end: below ``e^log_u_lo`` the
    factor 1 - φ^n is negligible; the other form needs ρ(u)·u itself to be
    negligible, so go down (to u = e^{-690} at most) until |ρ u| < 1e-18 of its
    maximum. Where ρ·u decays too slowly for that (GCE at small q: ρ u ~ u^q),
    only the form 1 - φ^n is accurate, and the representation check says so.
    """
    v_hi = math.ceil(math.log(45.0 / decay))
    probe = np.arange(v_hi, -690.0, -8.0)
    up = v_hi + np.arange(1.0, 7.0)  # ρ ~ u^m e^{-decay·u} (a pole of order m) peaks late
    mag = np.abs(laplace_inverse(H, np.exp(probe)) * np.exp(probe))
    mag_up = np.abs(laplace_inverse(H, np.exp(up)) * np.exp(up))
    top = max(mag.max(), mag_up.max())
    large = np.nonzero(~(mag_up < 1e-18 * top))[0]
    v_hi = up[large[-1]] + 1.0 if len(large) else v_hi
    small = np.nonzero(mag < 1e-18 * top)[0]
    small = small[probe[small] < -8.0]
    v_rho = probe[small[0]] if len(small) else probe[-1]
    v_lo = 8.0 * math.floor(max(min(log_u_lo, v_rho), -700.0) / 8.0)
    return np.exp(np.arange(v_lo, v_hi + V_STEP / 2, V_STEP))


@dataclass
class Representation:
    """ρ on the u grid of one kernel H, and how well Σ_i ρ_i u_i e^{-u_i x} ΔV reproduces H.

    What the engine computes is exactly E[H_rep(c S)] with H_rep that sum (form A), or
    E[H_rep(c S) - H_rep(0) + H(0)] (form B), so sup_x |H_rep - H| over the x = c·S that
    occur bounds every error of the Laplace representation at once: Talbot inversion,
    step of the trapezoidal rule, truncation of the u range. ``err_a``/``err_b`` are those
    bounds for the two forms, ``err_slope`` the one of x·H'(x) (the slope), all checked for
    ln x in [``log_x_lo``, ``log_x_hi``] and at x = 0.
    """

    u: np.ndarray
    rho: np.ndarray
    log_x_lo: float = math.inf
    log_x_hi: float = -math.inf
    err_a: float = math.inf
    err_b: float = math.inf
    err_slope: float = math.inf
    scale: float = 0.0
    g1: float = 0.0  # H(0) = g(1)
    checked: np.ndarray | None = None  # the ln x checked so far

    def __post_init__(self):
        self.ru = self.rho * self.u * V_STEP  # the trapezoidal weights ρ_i u_i Δv
        self.abs_ru = np.abs(self.ru)
        self.v0 = V_STEP * round(math.log(self.u[0]) / V_STEP)


def check_representation(rep: Representation, H, offset: float, lo: float, hi: float) -> None:
    """Fill the error bounds of ``rep`` by comparing H_rep with H on ln x in [lo, hi] and x = 0.

    The points of ln x lie on a fixed lattice; a representation checked before is compared
    only on the lattice points not yet checked, and its bounds become the larger of the old
    and the new ones (the same numbers as checking the whole range again)."""
    lx_all = np.arange(math.floor(lo), min(hi, 200.0) + CHECK_STEP, CHECK_STEP)
    if hi > 200.0:  # past x = e^200 only the slowest kernels (GCE, small q) still change
        lx_all = np.append(lx_all, np.arange(204.0, min(hi, 1500.0) + 4.0, 4.0))
    before = rep.checked
    lx = lx_all if before is None else lx_all[~np.isin(lx_all, before)]
    with np.errstate(over="ignore"):
        x = np.concatenate([[0.0], np.exp(lx)])
    ru = rep.rho * rep.u * V_STEP
    with np.errstate(over="ignore", invalid="ignore"):
        h = np.real(H(x.astype(complex)))
        h[~np.isfinite(x)] = 0.0  # H(∞) = g(0) = 0
        step = 1e-30 * (1.0 + x[np.isfinite(x)])
        xs = x[np.isfinite(x)]
        dh = xs * np.imag(H(xs + 1j * step)) / step  # x·H'(x) by the complex step
    hr = np.empty_like(x)
    dhr = np.empty_like(xs)
    nf = len(xs)  # x ascends: its finite values come first
    rows = max(1, CHECK_CHUNK // len(ru))
    for a in range(0, len(x), rows):
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(-np.outer(x[a:a + rows], rep.u))
        hr[a:a + rows] = e @ ru
        b = min(a + rows, nf)
        if b > a:
            dhr[a:b] = -(e[:b - a] @ (ru * rep.u)) * x[a:b]

    def bound(err, old):
        new = float(np.max(err)) if np.all(np.isfinite(err)) else math.inf
        return new if before is None else max(old, new)

    rep.err_a = bound(np.abs(hr - h), rep.err_a)
    rep.err_b = bound(np.abs(hr - hr[0] - h + h[0]), rep.err_b)
    rep.err_slope = bound(np.abs(dhr - dh), rep.err_slope)
    rep.checked = lx_all
    if not rep.scale:  # the kernel's size, max |δ_k| over all p (not only the x checked)
        xs = np.concatenate([[0.0], np.exp(np.arange(-40.0, 40.0, 0.25))])
        with np.errstate(all="ignore"):
            hs = np.abs(np.real(H(xs.astype(complex))))
        rep.scale = max(abs(offset), float(np.max(hs[np.isfinite(hs)], initial=0.0)),
                        float(np.max(np.abs(h[np.isfinite(h)]), initial=0.0)))
    rep.log_x_lo, rep.log_x_hi = float(lx_all[0]), float(hi)


def logsumexp1(a: np.ndarray) -> float:
    m = float(np.max(a))
    return m + math.log(float(np.sum(np.exp(a - m))))


class LaplaceTransform:
    """ψ(t) = E[1 - e^{-tY}], Y = e^{z - mean}, for a logit distribution given by quadrature
    nodes ``x`` (centred logits) and weights ``w``; sorted ascending here."""

    def __init__(self, x, w):
        x, w = np.asarray(x, dtype=float), np.asarray(w, dtype=float)
        if np.any(x[1:] < x[:-1]):  # ascending nodes: the band search needs them
            order = np.argsort(x, kind="stable")
            x, w = x[order], w[order]
        self.x, self.w = x, w
        self.x_lo, self.x_hi = float(x[0]), float(x[-1])
        self.log_m = logsumexp1(np.log(w) + x)  # ln E[Y]
        self._log_moments: list[float] | None = None
        self._lattice: dict = {}  # psi_on_lattice's values per (z, slope)
        self._binned: BinnedAtoms | None = None  # the atoms' bins (binned.py), when many

    def psi(self, log_t: np.ndarray, slope: bool):
        """ψ(t) = E[1 - e^{-tY}] and (if ``slope``) E[tY e^{-tY}], Y = e^{z - mean}, at t = e^log_t.

        Where t·max(Y) < SERIES_T the Taylor series in t (five moments of Y, kept as
        logarithms so that wide distributions do not overflow) is used: its remainder is
        below (t·max Y)^6/720 ≈ 2e-18 relative, and it spares the dense [len(t), atoms]
        evaluation on most of the u grid. Elsewhere only the atoms with 1e-18 <= tY <= 50
        are evaluated: below, 1 - e^{-tY} = tY (prefix sums of w·Y), above, 1 (suffix sums
        of w), both to 1e-18. That band is narrow for a wide distribution (std 10: an
        eighth of the atoms), and the evaluation runs in blocks of at most LAPLACE_CHUNK
        numbers. From MIN_ATOMS atoms on (``--atoms 0`` on a measured file) the atoms are
        binned once and each t costs a polynomial per bin instead of a term per atom
        (:mod:`calibrate_cli.engine.binned`: O(N log N) in all, bounded memory).
        """
        x, w = self.x, self.w
        if self._log_moments is None:
            lw = np.log(w)
            self._log_moments = [float(logsumexp1(lw + j * x)) for j in range(1, 6)]
            self._prefix_wy = np.concatenate([[0.0], np.cumsum(w * np.exp(x))])
            self._suffix_w = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
        lm = self._log_moments
        small = log_t + self.x_hi < math.log(SERIES_T)
        tm = np.exp(log_t[small] + self.x_hi)  # t·max(Y) < SERIES_T
        # E[(tY)^j] = (t max Y)^j · E[Y^j]/max(Y)^j, each below SERIES_T^j (no overflow)
        T, power = [], tm
        for j in range(1, 6):  # powers by products (tm ** j calls pow, a third of ψ's time)
            T.append(power * math.exp(lm[j - 1] - j * self.x_hi))
            power = power * tm
        psi = np.empty_like(log_t)
        psi[small] = T[0] - T[1] / 2 + T[2] / 6 - T[3] / 24 + T[4] / 120
        ty_e = np.empty_like(log_t) if slope else None
        if slope:
            ty_e[small] = T[0] - T[1] + T[2] / 2 - T[3] / 6 + T[4] / 24
        big = np.nonzero(~small)[0]
        if not len(big):
            return psi, ty_e
        if len(x) >= MIN_ATOMS:  # many atoms (--atoms 0): from their bins' moments
            if self._binned is None:
                self._binned = BinnedAtoms(x, w)
            psi[big], part = self._binned.psi(log_t[big], slope)
            if slope:
                ty_e[big] = part
            return psi, ty_e
        i0 = np.searchsorted(x, math.log(1e-18) - log_t[big])  # atoms below: tY < 1e-18
        i1 = np.searchsorted(x, math.log(50.0) - log_t[big])  # atoms from here: tY >= 50
        width = max(1, int(np.max(i1 - i0)))
        if 2 * width >= len(x):  # a narrow distribution: every atom matters, plain products
            rows = max(1, LAPLACE_CHUNK // len(x))
            for a in range(0, len(big), rows):
                r = big[a:a + rows]
                ty = np.exp(np.minimum(log_t[r, None] + x[None, :], 700.0))
                psi[r] = np.minimum(-(np.expm1(-ty) @ w), 1.0)  # weights sum to 1 ± ulp
                if slope:
                    ty_e[r] = (ty * np.exp(-ty)) @ w
            return psi, ty_e
        xp = np.concatenate([x, np.full(width, x[-1])])  # padding with zero weight
        wp = np.concatenate([w, np.zeros(width)])
        band = np.arange(width)
        rows = max(1, LAPLACE_CHUNK // width)
        for a in range(0, len(big), rows):
            r, j = big[a:a + rows], i0[a:a + rows]
            idx = j[:, None] + band[None, :]
            ty = np.exp(np.minimum(log_t[r, None] + xp[idx], 700.0))
            t = np.exp(np.minimum(log_t[r], 700.0))
            below = t * self._prefix_wy[j]
            above = self._suffix_w[np.minimum(j + width, len(x))]
            psi[r] = np.minimum(below - np.einsum("ij,ij->i", np.expm1(-ty), wp[idx]) + above, 1.0)
            if slope:
                ty_e[r] = below + np.einsum("ij,ij->i", ty * np.exp(-ty), wp[idx])
        return psi, ty_e

    def psi_on_lattice(self, z: float, v0: float, nu: int, slope: bool):
        """:meth:`psi` at ln t = v0 + V_STEP·i - z, i < nu (v0 on the lattice of V_STEP, as every u
        grid is). These values depend on a kernel only through the range of i, so they are kept
        per (z, slope) over the widest range asked for (PSI_CACHE of them, least recently used
        dropped) and serve every kernel and K evaluated at z: a transfer's scan, all at z = μ."""
        j0 = int(round(v0 / V_STEP))
        key = (z, slope)
        hit = self._lattice.pop(key, None)
        if hit is None or not (hit[0] <= j0 and j0 + nu <= hit[0] + len(hit[1])):
            lo = j0 if hit is None else min(j0, hit[0])
            hi = j0 + nu if hit is None else max(j0 + nu, hit[0] + len(hit[1]))
            hit = (lo, *self.psi(V_STEP * np.arange(lo, hi) - z, slope))
        if len(self._lattice) >= PSI_CACHE:
            del self._lattice[next(iter(self._lattice))]
        self._lattice[key] = hit
        a = j0 - hit[0]
        return hit[1][a:a + nu], (hit[2][a:a + nu] if slope else None)

    def log_sum_range(self, n: int, alpha: float = 1e-12) -> tuple[float, float]:
        """(lo, hi) with P(ln S < lo) <= alpha and P(ln S > hi) <= alpha, S the sum of n draws of Y.

        Where <δ_k>(z) changes, z lies within a few units of ln S. Lower end: the Chernoff
        bound P(S <= s) <= e^{ts} φ(t)^n, at its best t on a log grid (tight for narrow
        distributions, where S ≈ n·E[e^z]), or S >= max_j e^{z_j} with P(max_j z_j < x) =
        F(x)^n (tight for wide ones). Upper end: P(S > s) <= n·P(e^z > s/n) (tight for wide
        ones, where S is dominated by its largest term).
        """
        x, w = self.x, self.w  # ascending
        tail = np.cumsum(w[::-1])[::-1]  # P(z >= x_i)
        hi = math.log(n) + float(x[np.nonzero(tail > alpha / n)[0][-1]])
        cdf = np.cumsum(w)  # P(z <= x_i)
        below = np.nonzero(n * np.log(np.maximum(cdf, 1e-300)) <= math.log(alpha))[0]
        lo_max = float(x[below[-1]]) if len(below) else float(x[0])
        log_t = -(self.log_m + math.log(n)) + np.arange(-5.0, 40.0, 0.25)
        with np.errstate(divide="ignore"):
            log_phi = np.log1p(-self.psi(log_t, False)[0])
        s_t = (math.log(alpha) - n * log_phi) / np.exp(log_t)  # P(S <= s_t) <= alpha
        s_lo = float(np.max(s_t[np.isfinite(s_t)], initial=0.0))
        lo = max(math.log(s_lo) if s_lo > 0 else -math.inf, lo_max)
        return min(lo, hi), hi
