r"""ψ(t) = E[1 - e^{-tY}] of many atoms in time independent of their number (``--atoms 0``).

:meth:`~calibrate_cli.engine.laplace.LaplaceTransform.psi` sums over the atoms x_i (centred
logits, Y = e^x) at every t it is asked for; with every measured value an atom (10^6 and more)
that costs minutes. Here the atoms are grouped once into bins of width h = :data:`BIN_WIDTH` in
x, and each bin keeps the moments of its atoms about its centre c_b,

.. math::  M_{m,b} = \sum_{i \in b} w_i\, d_i^m / m!, \qquad d_i = x_i - c_b,\ |d_i| \le h/2,

for m = 0 … :data:`ORDER`. With s = ln t + x and G(s) = 1 - exp(-e^s) (so 1 - e^{-tY} = G(ln t + x)),
Taylor's theorem about each centre gives

.. math::  ψ(t) = \sum_b \sum_{m=0}^{M} G^{(m)}(\ln t + c_b)\, M_{m,b} + R,

and E[tY e^{-tY}] (the slope) the same with G' in place of G. G^{(m)}(s) = Q_m(y) e^{-y} with
y = e^s, Q_1 = y, Q_{m+1} = y (Q_m' - Q_m); the sum over m of Q_m M_m is a polynomial in y per
bin, whose coefficients are computed once, so each t costs one polynomial per bin of the band
where 10^{-18} <= tY <= 50 (below it 1 - e^{-tY} = tY and above it 1, to 10^{-18}, from prefix
and suffix sums over the bins, as the atom sums do).

The remainder: G is analytic and |G| < 2 in the strip |Im s| < π/2 (Re e^s > 0 there), and
|G'| = |e^s exp(-e^s)| <= 1/(e cos r) for |Im s| <= r; Cauchy's estimate on a disc of radius
r = 1.4 about each real point bounds the terms beyond ORDER by 2.2 q^{M+1}/(1 - q), q = h/(2r):
with h = 1/8 and M = 12 that is 4e-18 of the bins' weight, below the rounding of the sums
themselves. The binning is used above :data:`MIN_ATOMS` atoms (the default 2048 atoms and
smaller arrays are summed atom by atom, as before).
"""

from __future__ import annotations

import math

import numpy as np

#: Width in x (logit units) of a bin.
BIN_WIDTH = 0.125
#: Highest moment kept per bin (the Taylor order).
ORDER = 12
#: From this many atoms on, ψ is computed from the bins.
MIN_ATOMS = 1 << 15
#: (t, bin) pairs per block of the band evaluation.
CHUNK = 1 << 18
_LO, _HI = math.log(1e-18), math.log(50.0)


def _q_polynomials(n: int) -> list[np.ndarray]:
    """Coefficients (of y^0 … y^m) of Q_m, m = 0 … n: G^{(m)} = Q_m(y) e^{-y} for m >= 1
    (Q_0 is unused: G itself is 1 - e^{-y})."""
    polys = [np.zeros(1), np.array([0.0, 1.0])]
    for m in range(1, n):
        q = polys[-1]
        dq = np.arange(1, len(q)) * q[1:]  # Q'
        diff = np.zeros(len(q))
        diff[:len(dq)] += dq
        diff -= q
        polys.append(np.concatenate([[0.0], diff]))  # y (Q' - Q)
    return polys


class BinnedAtoms:
    """The bins of atoms ``x`` (ascending) with weights ``w``, and ψ from them."""

    def __init__(self, x: np.ndarray, w: np.ndarray):
        h = BIN_WIDTH
        idx = np.floor((x - x[0]) / h).astype(np.int64)  # ascending: each bin is a slice
        starts = np.concatenate([[0], np.flatnonzero(np.diff(idx)) + 1])  # non-empty bins
        self.c = x[0] + (idx[starts] + 0.5) * h
        d = x - np.repeat(self.c, np.diff(np.append(starts, len(x))))
        moments = np.empty((ORDER + 1, len(starts)))
        term = np.array(w, dtype=float)
        for m in range(ORDER + 1):  # reduceat sums pairwise: rounding ~ε log n, not ε n
            moments[m] = np.add.reduceat(term, starts)
            term = term * d / (m + 1)
        wy = np.add.reduceat(w * np.exp(x), starts)
        self.m0 = moments[0]
        q = _q_polynomials(ORDER + 2)

        def coefficients(shift: int, first: int) -> np.ndarray:
            """Σ_{m >= first} Q_{m + shift}(y) M_m as polynomial coefficients per bin [k, b]."""
            deg = ORDER + shift
            out = np.zeros((deg + 1, len(self.c)))
            for m in range(first, ORDER + 1):
                qm = q[m + shift]
                out[:len(qm)] += qm[:, None] * moments[m][None, :]
            return out

        self.a = coefficients(0, 1)  # ψ: G M_0 apart (1 - e^{-y}), then G^(m) for m >= 1
        self.b = coefficients(1, 0)  # slope: G^(m+1) for m >= 0
        self.prefix_wy = np.concatenate([[0.0], np.cumsum(wy)])
        self.suffix_w = np.concatenate([np.cumsum(self.m0[::-1])[::-1], [0.0]])

    def psi(self, log_t: np.ndarray, slope: bool):
        """ψ(t) and (if ``slope``) E[tY e^{-tY}] at t = e^log_t (every log_t: the caller takes
        the series for small t itself)."""
        h2 = BIN_WIDTH / 2
        c = self.c
        j0 = np.searchsorted(c + h2, _LO - log_t)  # bins before: every tY < 1e-18
        j1 = np.searchsorted(c - h2, _HI - log_t, side="right")  # bins from here: tY > 50
        width = max(1, int(np.max(j1 - j0)))
        nb = len(c)
        pad = np.concatenate([c, np.full(width, c[-1])])
        m0 = np.concatenate([self.m0, np.zeros(width)])
        a = np.concatenate([self.a, np.zeros((self.a.shape[0], width))], axis=1)
        b = np.concatenate([self.b, np.zeros((self.b.shape[0], width))], axis=1)
        band = np.arange(width)
        psi = np.empty_like(log_t)
        ty_e = np.empty_like(log_t) if slope else None
        rows = max(1, CHUNK // width)
        for s in range(0, len(log_t), rows):
            lt, lo, hi = log_t[s:s + rows], j0[s:s + rows], j1[s:s + rows]
            idx = lo[:, None] + band[None, :]
            live = idx < hi[:, None]
            y = np.exp(np.minimum(lt[:, None] + pad[idx], _HI + 1.0))
            y = np.where(live, y, 0.0)
            e = np.exp(-y)
            poly = a[-1][idx]
            for k in range(a.shape[0] - 2, -1, -1):  # Horner in y
                poly = poly * y + a[k][idx]
            t = np.exp(np.minimum(lt, 700.0))
            below = t * self.prefix_wy[lo]
            above = self.suffix_w[np.minimum(hi, nb)]
            inner = np.where(live, -np.expm1(-y) * m0[idx] + e * poly, 0.0).sum(axis=1)
            psi[s:s + rows] = np.minimum(below + inner + above, 1.0)
            if slope:
                poly = b[-1][idx]
                for k in range(b.shape[0] - 2, -1, -1):
                    poly = poly * y + b[k][idx]
                ty_e[s:s + rows] = below + np.where(live, e * poly, 0.0).sum(axis=1)
        return psi, ty_e
