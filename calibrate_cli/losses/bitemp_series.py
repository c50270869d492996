r"""The bi-tempered loss's Monte Carlo draws reduced to a few numbers each (t2 > 1).

Tempered softmax with c = t2 - 1 > 0, β = 1/c: p_j = (1 + c(λ - a_j))^{-β}, λ fixed by
Σ_j p_j = 1. With the mean ā of the other logits of a draw, d_j = a_j - ā and y = λ + β - ā,

.. math::

    p_j^\alpha = (c\,(y - d_j))^{-s},\qquad s = \alpha\beta,

so a draw enters δ_k only through S_α(y) = Σ_{j≠k} p_j^α for α ∈ {1, t2, 1 + t2 - t1}
(λ from p_k + S_1 = 1; the escort sum S_{t2}; Σ_j u_j = u_k + S_{1+t2-t1}). Split the other
classes into *explicit* ones (|d_j| > κ, a few per draw, kept as numbers) and the rest R, and
expand (1 - d_j/y)^{-s} = Σ_n (s)_n/n! (d_j/y)^n over R:

.. math::

    \sum_R (c(y - d_j))^{-s} = (c y)^{-s} \sum_n \frac{(s)_n}{n!} \frac{h^n \tilde M_n}{y^n},
    \qquad \tilde M_n = \sum_R (d_j/h)^n,\; h = \max_R |d_j| .

The moments M̃_n do not depend on t1, t2: each draw is stored once per K as ā, its explicit
d_j, h and M̃_0 … M̃_{P-1}; λ is then a one-dimensional Newton solve per draw on the series.

Bounds. λ ≥ a_j + β for every j (p_j ≤ 1), and by Jensen (p is convex in a_j)
n (c(y - 0))^{-β} ≤ Σ_{j≠k} p_j ≤ 1, i.e. y ≥ n^c / c, so y ≥ y_lb = max(n^c/c, max_j d_j + β)
for every z_k; ρ = h / y_lb ≥ |d_j|/y on R. With q = ρ max(1, (s+N+1)/(N+2)) < 1 the tail of the
series after order N is at most (s)_{N+1}/(N+1)! ρ^{N+1}/(1-q) per class, relative to
(1 - d_j/y)^{-s} ≥ (1+ρ)^{-s}; all summands are positive, so this bounds the relative error of
each S_α. Rounding of the alternating terms is amplified at most ((1+ρ)/(1-ρ))^s, which must stay
below 10^4. N is the smallest order with the bound ≤ 1e-12 for every draw and every α; the
error is propagated to δ_k to first order (through λ as well) and returned with the values.
Where no stored order suffices (t2 very close to 1, very wide logits), or t2 = 1,
:func:`bitemp_series_delta` returns None and the engine evaluates whole vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.special import ndtri

from .base import pad_columns

TOL = 1e-12  # relative truncation error allowed in each S_α over the rest
ROUNDING = 1e4  # largest rounding amplification ((1+ρ)/(1-ρ))^s accepted
ALL_EXPLICIT = 64  # draws of at most this many other classes are kept whole
EXPECTED_EXPLICIT = 8.0  # κ: the |d| a Gaussian of the draw's spread exceeds this often …
RHO_FREE = 0.1  # … unless below RHO_FREE·e·ln n, where ρ ≤ 0.1 for every t2 (y ≥ e ln n)
WIDTH_CAP = 64  # explicit classes per draw at most (the largest |d| beyond)
MOMENT_CAP = 48  # moments stored per draw at most
STORED_T2 = 1.1  # moments_needed's default coverage: every t2 ≥ this at t1 ≥ 0 (if it can)
BLOCK = 1 << 16  # logits per block of rows
SLAB = 4096  # moments: long rows are cut into slabs of this many columns …
SLAB_BLOCK = 1 << 14  # … processed this many logits at a time
_BASE = 6  # moments from powers d^0…d^5 times d^0, d^6, d^12, …: one batched matmul


@dataclass(frozen=True)
class BiTempDraws:
    """Per draw: ā, explicit d_j (-inf padding), the max of all d_j, h = max_R |d_j|, and the
    scaled moments m[:, n] = Σ_R (d_j/h)^n, n = 0 … P-1 (NaN beyond what a chunk needed)."""

    mean: np.ndarray
    explicit: np.ndarray
    dmax: np.ndarray
    h: np.ndarray
    m: np.ndarray
    others: int  # n = K - 1
    plans: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def size(self) -> int:
        return self.mean.shape[0]


def _rising_over_factorial(s: float, count: int) -> np.ndarray:
    """(s)_n / n! for n = 0 … count-1."""
    out = np.empty(count)
    c = 1.0
    for n in range(count):
        out[n] = c
        c = c * (s + n) / (n + 1)
    return out


def _order_for(rho: np.ndarray, s: float, top: int):
    """Per draw the smallest order N ≤ top - 1 whose tail bound at ρ is ≤ TOL, and that bound;
    N = -1 where none is (or ρ ≥ 1, or rounding would exceed ROUNDING)."""
    k = np.arange(top)
    coef = _rising_over_factorial(s, top + 1)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        q = rho[:, None] * np.maximum(1.0, (s + k + 1) / (k + 2))
        tail = coef[k + 1] * rho[:, None] ** (k + 1) / (1.0 - q) * (1.0 + rho[:, None]) ** s
        tail = np.where((q < 1.0) & (rho[:, None] < 1.0), tail, np.inf)
        rounding = ((1.0 + rho) / (1.0 - rho)) ** s
    tail = np.where(rho[:, None] == 0.0, 0.0, tail)
    ok = (tail <= TOL) & (rounding <= ROUNDING)[:, None]
    N = np.where(ok.any(axis=1), np.argmax(ok, axis=1), -1)
    return N, np.where(N >= 0, tail[np.arange(len(rho)), np.maximum(N, 0)], np.inf)


def _y_lower(n: int, c: float, dmax: np.ndarray) -> np.ndarray:
    return np.maximum(n ** c / c, dmax + 1.0 / c)


def moments_needed(h: float, n: int, t2_min: float = STORED_T2, t1_min: float = 0.0) -> int:
    """Moments to store for a block whose largest h is ``h``: enough for every t2 ≥ t2_min and
    t1 ≥ t1_min where that is possible at all (else MOMENT_CAP). h is rounded up to 2^(1/16)."""
    if h <= 0.0:
        return 1
    return _moments_needed(math.ceil(16 * math.log2(h)), n, t2_min, t1_min)


@lru_cache(maxsize=4096)
def _moments_needed(h16: int, n: int, t2_min: float, t1_min: float) -> int:
    h = 2.0 ** (h16 / 16)
    need = 1
    for t2 in sorted({t2_min, *(t for t in (1.15, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0) if t > t2_min)}):
        c = t2 - 1.0
        rho = np.array([h / (n ** c / c)])
        N, _ = _order_for(rho, (2.0 - t1_min + c) / c, MOMENT_CAP - 1)
        need = max(need, int(N[0]) + 1 if N[0] >= 0 else MOMENT_CAP)
    return min(need, MOMENT_CAP)


#: coverage levels (t2_min, t1_min) of the stored moments: a loss's parameters pick the highest
#: level at or below them, so the default (0.8, 1.2) stores no more than it needs, and t2 down
#: to 1.02 still finds its moments (a separate pass over the same draws).
T2_LEVELS = (1.02, 1.05, 1.1, 1.2)
T1_LEVELS = (0.0, 0.5, 0.8)


class BiTempReduce:
    """``reducer(draws[m, K-1]) -> BiTempDraws`` (NumPy; torch tensors via mc_device), storing
    the moments that parameters t2 ≥ t2_min, t1 ≥ t1_min need."""

    accepts_torch = True  # torch tensors are reduced on their device (mc_device.py)

    def __init__(self, t2_min: float = T2_LEVELS[-1], t1_min: float = T1_LEVELS[-1]):
        self.t2_min, self.t1_min = t2_min, t1_min

    def for_params(self, P) -> "BiTempReduce":
        """The reducer whose stored moments cover these parameters (one instance per level, so
        that draws are reduced once per level and K)."""
        t2 = max([t for t in T2_LEVELS if t <= P["t2"]], default=T2_LEVELS[0])
        t1 = max([t for t in T1_LEVELS if t <= P["t1"]], default=T1_LEVELS[0])
        return _LEVEL_REDUCERS.setdefault((t2, t1), BiTempReduce(t2, t1))

    def __call__(self, draws) -> BiTempDraws:
        if not isinstance(draws, np.ndarray):
            return bitemp_reduce_torch(draws, self.t2_min, self.t1_min)
        rows = max(1, BLOCK // max(draws.shape[1], 1))
        return self.concat([self._block(draws[i:i + rows])
                            for i in range(0, draws.shape[0], rows)])

    def _block(self, z) -> BiTempDraws:
        m, n = z.shape
        mean = z.mean(axis=1)
        d = z - mean[:, None]
        dmax = d.max(axis=1)
        if n <= ALL_EXPLICIT:
            return BiTempDraws(mean, d, dmax, np.zeros(m), np.zeros((m, 1)), n)
        absd = np.abs(d)
        kappa = np.maximum(np.sqrt((d * d).mean(axis=1)) * ndtri(1.0 - EXPECTED_EXPLICIT / (2 * n)),
                           RHO_FREE * math.e * math.log(n))
        explicit, h, where = _split(d, absd, kappa)
        P = moments_needed(float(h.max()), n, self.t2_min, self.t1_min)
        return BiTempDraws(mean, explicit, dmax, h, _moments(d, h, P, where), n)

    @staticmethod
    def concat(parts: list[BiTempDraws]) -> BiTempDraws:
        if len(parts) == 1:
            return parts[0]
        width = max(p.explicit.shape[1] for p in parts)
        P = max(p.m.shape[1] for p in parts)

        return BiTempDraws(np.concatenate([p.mean for p in parts]),
                           np.concatenate([pad_columns(p.explicit, width, -np.inf) for p in parts]),
                           np.concatenate([p.dmax for p in parts]),
                           np.concatenate([p.h for p in parts]),
                           np.concatenate([pad_columns(p.m, P, np.nan) for p in parts]),
                           parts[0].others)


def _split(d, absd, kappa):
    """Explicit d_j (|d_j| > κ, -inf padded; at most WIDTH_CAP, the largest |d|), h = max_R |d|,
    and where the explicit entries sit (rows, columns); their entries of ``absd`` are set to -1
    (in place)."""
    m = d.shape[0]
    mask = absd > kappa[:, None]
    counts = mask.sum(axis=1)
    over = np.nonzero(counts > WIDTH_CAP)[0]
    for i in over:  # rare: keep the WIDTH_CAP largest |d| explicit, the rest in the series
        keep = np.argpartition(-absd[i], WIDTH_CAP - 1)[:WIDTH_CAP]
        mask[i] = False
        mask[i, keep] = True
    counts = np.minimum(counts, WIDTH_CAP)
    width = int(counts.max()) if m else 0
    explicit = np.full((m, width), -np.inf)
    rows = cols = np.empty(0, dtype=np.intp)
    if width:
        rows, cols = np.nonzero(mask)
        starts = np.cumsum(counts) - counts
        explicit[rows, np.arange(len(rows)) - np.repeat(starts, counts)] = d[rows, cols]
        absd[rows, cols] = -1.0
    return explicit, np.maximum(absd.max(axis=1), 0.0), (rows, cols)


def _moments(d, h, P, where):
    """m[:, n] = Σ_R (d_j/h)^n for n < P (R: all but the explicit entries at ``where``).

    x = d/h with the explicit entries set to 0, so that they add nothing to the moments n ≥ 1
    and exactly one each to n = 0, which is then the count of R. Long rows are cut into slabs
    of SLAB columns (views; the moments add up), processed a few at a time, so that the powers
    stay in cache."""
    m, n = d.shape
    x = d * (1.0 / np.where(h > 0, h, 1.0))[:, None]
    rows, cols = where
    x[rows, cols] = 0.0
    out = np.zeros((m, P))
    if n <= SLAB:
        step = max(1, SLAB_BLOCK // n)
        for i in range(0, m, step):
            out[i:i + step] = _moments_rows(x[i:i + step], P)
    else:
        full = n - n % SLAB
        slabs = x[:, :full].reshape(m, -1, SLAB)  # a view
        step = max(1, SLAB_BLOCK // SLAB)
        for i in range(m):
            for j in range(0, slabs.shape[1], step):
                out[i] += _moments_rows(slabs[i, j:j + step], P).sum(axis=0)
            if full < n:
                out[i] += _moments_rows(x[i:i + 1, full:], P)[0]
    out[:, 0] = n - np.bincount(rows, minlength=m)  # the count of R, exactly
    return out


def _moments_rows(x, P):
    """Σ_j x^n per row (n < P): powers x^0…x^5 and x^0, x^6, x^12, … multiplied in one batched
    matmul, Σ_j x^{6g+b} = Σ_j (x^6)^g x^b."""
    m, n = x.shape
    groups = -(-P // _BASE)
    low = np.empty((m, _BASE, n))
    low[:, 0] = 1.0
    low[:, 1] = x
    for b in range(2, _BASE):
        np.multiply(low[:, b - 1], x, out=low[:, b])
    high = np.empty((m, groups, n))
    high[:, 0] = 1.0
    if groups > 1:
        np.multiply(low[:, _BASE - 1], x, out=high[:, 1])
        for g in range(2, groups):
            np.multiply(high[:, g - 1], high[:, 1], out=high[:, g])
    return np.matmul(high, low.transpose(0, 2, 1)).reshape(m, groups * _BASE)[:, :P]


_LEVEL_REDUCERS: dict = {}
bitemp_reduce = BiTempReduce()


@dataclass
class _Plan:
    """What one (t1, t2) needs of the reduced draws, computed once: per α the masked
    coefficient·moment rows C (and C·(s + n) for the derivative), the bounds η_α, and y of the
    other classes alone (p_k = 0), below the root for every z_k (Newton's start). The roots y
    found so far (``solved_z``, ``solved_y``) start later solves: y grows with z_k in every draw,
    so the root at a smaller z_k is below the root at a larger one."""

    c: float
    s: tuple
    C: tuple
    D: tuple
    eta: tuple
    y_others: np.ndarray
    solved_z: np.ndarray = field(default_factory=lambda: np.empty(0))
    solved_y: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))

    def start(self, z: np.ndarray) -> np.ndarray:
        """The largest known root at or below each z (y_others where none): [len(z), draws]."""
        if not len(self.solved_z):
            return np.broadcast_to(self.y_others, (len(z), len(self.y_others)))
        i = np.searchsorted(self.solved_z, z, side="right") - 1
        return np.where((i >= 0)[:, None], self.solved_y[np.maximum(i, 0)], self.y_others)

    def remember(self, z: np.ndarray, y: np.ndarray) -> None:
        if len(self.solved_z) > 256:
            self.solved_z, self.solved_y = np.empty(0), np.empty((0, y.shape[1]))
        zs = np.concatenate([self.solved_z, z])
        ys = np.concatenate([self.solved_y.reshape(-1, y.shape[1]), y])
        order = np.argsort(zs, kind="stable")
        self.solved_z, self.solved_y = zs[order], ys[order]


def _plan(st: BiTempDraws, t1: float, t2: float) -> _Plan | None:
    key = (t1, t2)
    if key in st.plans:
        return st.plans[key]
    c = t2 - 1.0
    beta = 1.0 / c
    rho = st.h / _y_lower(st.others, c, st.dmax)
    powers = np.isfinite(st.m).sum(axis=1)
    m = np.where(np.isfinite(st.m), st.m, 0.0)
    n = np.arange(m.shape[1])
    ss, Cs, Ds, etas = [], [], [], []
    for a in (1.0, t2, 1.0 + t2 - t1):
        s = a * beta
        N, eta = _order_for(rho, s, m.shape[1])
        if np.any(N < 0) or np.any(N > powers - 1):
            st.plans[key] = None
            return None
        top = int(N.max()) + 1
        C = np.where(n[:top] <= N[:, None], _rising_over_factorial(s, top) * m[:, :top], 0.0)
        ss.append(s)
        Cs.append(C)
        Ds.append(C * (s + n[:top]))
        etas.append(eta)
    plan = _Plan(c, tuple(ss), tuple(Cs), tuple(Ds), tuple(etas), np.empty(0))
    # the other classes alone: S_1(y) = 1 from y_lb ≤ root (convex decreasing: monotone Newton)
    y = _y_lower(st.others, c, st.dmax)
    for _ in range(200):
        S1, dS1 = _sums(st, plan, y, 0)
        step = (S1 - 1.0) / dS1
        y = y - step
        if np.all(np.abs(step) <= 1e-14 * y):
            break
    plan = _Plan(c, plan.s, plan.C, plan.D, plan.eta, y)
    st.plans[key] = plan
    return plan


def _sums(st: BiTempDraws, plan: _Plan, y: np.ndarray, k: int):
    """S_α(y) = Σ_{j≠k} p_j^α and dS_α/dy (α the k-th of 1, t2, 1 + t2 - t1)."""
    s, c = plan.s[k], plan.c
    P = plan.C[k].shape[1]
    T = np.empty(y.shape + (P,))
    T[..., 0] = 1.0
    if P > 1:
        T[..., 1:] = (st.h / y)[..., None]
        np.cumprod(T, axis=-1, out=T)
    cy = np.exp(-s * np.log(c * y))
    val = cy * np.einsum("...mn,mn->...m", T, plan.C[k])
    der = -cy * np.einsum("...mn,mn->...m", T, plan.D[k]) / y
    if st.explicit.shape[1]:
        L = np.log(c * (y[..., None] - st.explicit))  # +inf for the -inf padding: adds 0
        val = val + np.exp(-s * L).sum(axis=-1)
        der = der - s * c * np.exp(-(s + 1.0) * L).sum(axis=-1)
    return val, der


def bitemp_series_delta(zk, st: BiTempDraws, t1: float, t2: float):
    """(δ_k per draw, first-order bound on its truncation error), or None (whole vectors).

    ``zk`` a number, or a column [n_z, 1] for several z_k at once (results [n_z, draws])."""
    if t2 <= 1.0:
        return None
    plan = _plan(st, float(t1), float(t2))
    if plan is None:
        return None
    beta = 1.0 / plan.c
    column = np.ndim(zk) == 2
    zcol = np.asarray(zk, dtype=float).reshape(-1, 1)
    dk = zcol - st.mean
    # λ: p_k(y) + S_1(y) = 1, convex decreasing in y; Newton from y0 ≤ root increases to it
    y = np.maximum(plan.start(zcol[:, 0]), dk + beta)
    for _ in range(200):
        pk = (plan.c * (y - dk)) ** (-beta)
        S1, dS1 = _sums(st, plan, y, 0)
        step = (pk + S1 - 1.0) / (dS1 - beta * pk / (y - dk))
        y = y - step
        if np.all(np.abs(step) <= 1e-14 * y):
            break
    plan.remember(zcol[:, 0], y)
    pk = (plan.c * (y - dk)) ** (-beta)
    S1, dS1 = _sums(st, plan, y, 0)
    St, dSt = _sums(st, plan, y, 1)
    Su, dSu = _sums(st, plan, y, 2)
    uk = (pk - 1.0) * pk ** (t2 - t1)
    Ek = pk ** t2
    W = Ek + St
    U = uk + Su
    delta = uk - Ek * U / W

    # first-order propagation: S_α -> S_α (1 ± η_α); η_1 moves the root y
    dlog = -beta / (y - dk)  # d ln p_k / dy
    duk = pk ** (t2 - t1) * (pk + (pk - 1.0) * (t2 - t1)) * dlog
    dEk = t2 * Ek * dlog
    d_dy = (duk - ((dEk * U + Ek * (duk + dSu)) * W - Ek * U * (dEk + dSt)) / (W * W))
    dy = plan.eta[0] * S1 / np.abs(dS1 + pk * dlog)
    bound = (np.abs(d_dy) * dy + np.abs(Ek * U / (W * W)) * plan.eta[1] * St
             + np.abs(Ek / W) * plan.eta[2] * Su)
    if not column:
        delta, bound = delta.reshape(np.shape(zk) + (-1,)), bound.reshape(np.shape(zk) + (-1,))
    return delta, bound


def bitemp_mc_delta(zk, stats: BiTempDraws, K, P):
    out = bitemp_series_delta(zk, stats, float(P["t1"]), float(P["t2"]))
    return None if out is None else out[0]


def bitemp_reduce_torch(z, t2_min: float, t1_min: float):
    """:class:`BiTempReduce` on a torch tensor on its device (torch imported here only)."""
    import torch

    m, n = z.shape
    mean = z.mean(dim=1)
    d = z - mean[:, None]
    dmax = d.max(dim=1).values
    if n <= ALL_EXPLICIT:
        return BiTempDraws(_np(mean), _np(d), _np(dmax), np.zeros(m), np.zeros((m, 1)), n)
    absd = d.abs()
    kappa = torch.clamp(torch.sqrt((d * d).mean(dim=1)) * float(ndtri(1 - EXPECTED_EXPLICIT / (2 * n))),
                        min=RHO_FREE * math.e * math.log(n))
    mask = absd > kappa[:, None]
    width = min(int(mask.sum(dim=1).max()), WIDTH_CAP)
    if width:
        top = torch.topk(torch.where(mask, absd, torch.full_like(absd, -1.0)), width, dim=1)
        taken = top.values >= 0
        explicit = torch.where(taken, torch.gather(d, 1, top.indices),
                               torch.full_like(top.values, -torch.inf))
        live = torch.ones_like(d, dtype=torch.bool)
        live.scatter_(1, top.indices, ~taken)
    else:
        explicit = torch.empty((m, 0), dtype=z.dtype, device=z.device)
        live = torch.ones_like(d, dtype=torch.bool)
    h = torch.where(live, absd, torch.zeros_like(absd)).max(dim=1).values
    P = moments_needed(float(h.max()), n, t2_min, t1_min)
    x = torch.where(live, d / torch.where(h > 0, h, torch.ones_like(h))[:, None],
                    torch.zeros_like(d))
    mom = torch.empty((m, P), dtype=z.dtype, device=z.device)
    mom[:, 0] = live.sum(dim=1)
    power = x
    for k in range(1, P):
        mom[:, k] = power.sum(dim=1)
        if k + 1 < P:
            power = power * x
    return BiTempDraws(_np(mean), _np(explicit), _np(dmax), _np(h), _np(mom), n)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy()
