r"""NFL's Monte Carlo draws reduced to a few numbers each, with a rigorous truncation bound.

Notation: correct class k, the other logits z_j (j ≠ k) of one draw, ℓ = ln Σ_{j≠k} e^{z_j},
π_j = e^{z_j - ℓ} (softmax over the others), p = σ_k = 1/(1 + e^{ℓ - z_k}), q = 1 - p.
Then σ_j = q π_j for j ≠ k: z_k enters the other classes only through q.

δ_k of NFL = FL_k / D (FL_j = -(1-σ_j)^γ ln σ_j, D = Σ_j FL_j) is

.. math::

    \delta_k = \frac{(1-p)\,g_k D - FL_k\,(g_k - p\,G)}{D^2},\qquad
    g_j = \frac{\partial FL_j}{\partial \ln\sigma_j}
        = \gamma(1-\sigma_j)^{\gamma-1}\sigma_j\ln\sigma_j - (1-\sigma_j)^\gamma,
    \quad G = \sum_j g_j

(``detach = 1``: g_j = -(1-σ_j)^γ). So a draw enters only through D and G, sums over j ≠ k of
functions of σ_j = q π_j. Split the other classes into the *explicit* ones, π_j > τ = 1/32
(fewer than 32 per draw, kept as numbers), and the *rest* R, π_j ≤ τ. Over R expand
(1 - σ)^γ = Σ_n C(γ, n)(-σ)^n, which gives, with the power sums
a_n = Σ_R π_j^n and b_n = Σ_R π_j^n ln π_j (ln σ_j = ln π_j + ln q),

.. math::

    \sum_R (1-\sigma_j)^\gamma = \sum_n C(\gamma,n)(-q)^n a_n,\qquad
    \sum_R (1-\sigma_j)^\gamma \ln\sigma_j = \sum_n C(\gamma,n)(-q)^n (b_n + a_n\ln q),

    \sum_R (1-\sigma_j)^{\gamma-1}\sigma_j\ln\sigma_j
        = \sum_n C(\gamma-1,n)(-1)^n q^{n+1} (b_{n+1} + a_{n+1}\ln q).

Each draw is stored once per K as ℓ, its explicit ln π_j and a_n, b_n for n ≤ P (a handful at
large K); every z_k and every γ then costs O(samples · (P + explicit)), whatever K is.

Truncation bound (rigorous). For n ≥ N+1 ≥ (γ-1)/2 the |C(γ, n)| do not increase (their ratio
is |γ-n|/(n+1) ≤ 1), so the tail of Σ_n C(γ,n)(-σ)^n is at most |C(γ,N+1)| σ^{N+1}/(1-σ), i.e.
relative to (1-σ)^γ at most |C(γ,N+1)| σ^{N+1}/(1-σ)^{γ+1}; likewise for C(γ-1, n) (needs
N+1 ≥ (γ-2)/2). Every summand of D (FL_j > 0) and of G (both parts of g_j ≤ 0) has one sign,
so the relative error of D_R and G_R is at most

.. math::

    \eta(N) = \max(|C(\gamma,N+1)|, |C(\gamma-1,N+1)|)\; r^{N+1} / (1-r)^{\gamma+1},

r = max_R π_j ≥ max_R σ_j, uniform in z_k (σ_j ≤ π_j). Each draw i uses the smallest order N_i
with η_i ≤ 1e-12; the bound propagated to δ_k (first order in η) is returned with the values.
The draws store the powers that every γ ≤ 5 needs at their r.
Integer γ makes the series finite (η = 0 from N = γ on). When no stored order reaches the
tolerance (large γ), :func:`nfl_series_delta` returns None and the engine evaluates whole
vectors instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .base import lse_and_sum, pad_columns

TAU = 1.0 / 32  # π_j above this is kept explicitly (fewer than 1/TAU per draw)
TOL = 1e-12  # relative truncation error allowed in the sums over the rest
POWER_CAP = 26  # power sums a_n, b_n stored for n < POWER_CAP at most
GAMMA_STORED = 5.0  # the powers stored per draw reach TOL for every γ up to this (if r allows)


@dataclass(frozen=True)
class NFLDraws:
    """The reduced draws: per draw ℓ = ln Σ e^{z_j}, Σ z_j, the explicit ln π_j (-inf padding),
    r = max_R π_j, a[:, n] = Σ_R π^n and b[:, n] = Σ_R π^n ln π for n = 0 … P-1 (NaN beyond
    the powers a draw's chunk needed)."""

    lse: np.ndarray
    total: np.ndarray
    explicit: np.ndarray
    r: np.ndarray
    a: np.ndarray
    b: np.ndarray
    plans: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def size(self) -> int:
        return self.lse.shape[0]


@lru_cache(maxsize=None)
def _coefficient_bound_stored(n: int) -> float:
    """max over γ ∈ [0, GAMMA_STORED] of |C(γ, n)| and |C(γ-1, n)| (n ≥ 1), on a fine grid of γ
    (the coefficients are polynomials in γ of degree n; the grid's maximum is raised by 10 %)."""
    gammas = np.linspace(0.0, GAMMA_STORED, 2001)
    best = 0.0
    for g in gammas:
        best = max(best, abs(_binomials(g, n + 1)[n]), abs(_binomials(g - 1.0, n + 1)[n]))
    return 1.1 * best


def powers_needed(r_max: float, gamma: float = GAMMA_STORED) -> int:
    """How many power sums (n = 0 … P-1) reach TOL at r = r_max for every γ ≤ ``gamma``."""
    if r_max <= 0.0:
        return 2
    for N in range(POWER_CAP - 1):
        eta = _coefficient_bound_stored(N + 1) * r_max ** (N + 1) / (1.0 - r_max) ** (gamma + 1)
        if eta <= TOL and N + 1 >= (gamma - 1) / 2:
            return N + 2  # the derivative part needs a_{N+1}, b_{N+1}
    return POWER_CAP


BLOCK = 1 << 16  # logits per block of rows: the passes over a block stay in cache


class NFLReduce:
    """``reducer(draws[m, K-1]) -> NFLDraws``: the per-K pass over the draws (NumPy or torch).

    It also yields (ln Σ e^z, Σ z), the statistics of NCE and of the control variates."""

    accepts_torch = True  # torch tensors are reduced on their device (mc_device.py)

    def __init__(self):
        self.provides = {lse_and_sum: lambda s: np.stack([s.lse, s.total], axis=1)}

    def __call__(self, draws) -> NFLDraws:
        if not isinstance(draws, np.ndarray):
            return nfl_reduce_torch(draws)
        rows = max(1, BLOCK // max(draws.shape[1], 1))
        return self.concat([self._block(draws[i:i + rows])
                            for i in range(0, draws.shape[0], rows)])

    def _block(self, z) -> NFLDraws:
        m, n = z.shape
        zmax = z.max(axis=1, keepdims=True)
        pi = np.exp(z - zmax)
        norm = pi.sum(axis=1)
        lse = zmax[:, 0] + np.log(norm)
        pi *= (1.0 / norm)[:, None]
        logpi = z - lse[:, None]
        explicit, r, b0_explicit = self._split(pi, logpi)
        P = powers_needed(float(r.max()))
        a = np.empty((m, P))
        b = np.empty((m, P))
        a[:, 0] = n - np.isfinite(explicit).sum(axis=1)
        b[:, 0] = logpi.sum(axis=1) - b0_explicit
        a[:, 1:], b[:, 1:] = _power_sums(pi, logpi, P - 1)
        return NFLDraws(lse, z.sum(axis=1), explicit, r, a, b)

    @staticmethod
    def _split(pi, logpi):
        """Move the entries with π > TAU out of ``pi`` (set to 0 there, in place) into a padded
        array of their ln π; also max over the rest and Σ of the explicit ln π per draw."""
        m = pi.shape[0]
        rowmax = pi.max(axis=1)
        rows = np.nonzero(rowmax > TAU)[0]
        if len(rows) == 0:
            return np.full((m, 0), -np.inf), rowmax, np.zeros(m)
        sub = pi[rows]
        mask = sub > TAU
        width = int(mask.sum(axis=1).max())
        vals = np.where(mask, logpi[rows], -np.inf)
        if width < vals.shape[1]:
            vals = -np.partition(-vals, width - 1, axis=1)[:, :width]
        explicit = np.full((m, width), -np.inf)
        explicit[rows] = vals
        sub[mask] = 0.0
        pi[rows] = sub
        rest_max = rowmax.copy()
        rest_max[rows] = sub.max(axis=1)
        b0 = np.zeros(m)
        b0[rows] = np.where(np.isfinite(vals), vals, 0.0).sum(axis=1)
        return explicit, rest_max, b0

    @staticmethod
    def concat(parts: list[NFLDraws]) -> NFLDraws:
        """Join the reductions of several chunks: explicit entries padded with -inf, power sums
        a chunk did not need with NaN (its draws' orders never reach them)."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.explicit.shape[1] for p in parts)
        P = max(p.a.shape[1] for p in parts)

        return NFLDraws(np.concatenate([p.lse for p in parts]),
                        np.concatenate([p.total for p in parts]),
                        np.concatenate([pad_columns(p.explicit, width, -np.inf) for p in parts]),
                        np.concatenate([p.r for p in parts]),
                        np.concatenate([pad_columns(p.a, P, np.nan) for p in parts]),
                        np.concatenate([pad_columns(p.b, P, np.nan) for p in parts]))


SLAB = 8192  # long rows are summed in slabs of this many columns, so the powers stay in cache


def _power_sums(pi, logpi, count):
    """(Σ_j π_j^n, Σ_j π_j^n ln π_j) per row for n = 1 … count."""
    m, n = pi.shape
    a = np.zeros((m, count))
    b = np.zeros((m, count))
    for j in range(0, n, SLAB if n > 2 * SLAB else n):
        p, lp = (pi, logpi) if n <= 2 * SLAB else (pi[:, j:j + SLAB], logpi[:, j:j + SLAB])
        power = p
        for k in range(count):
            a[:, k] += power.sum(axis=1)
            b[:, k] += np.einsum("ij,ij->i", power, lp)
            if k + 1 < count:
                power = power * p
    return a, b


nfl_reduce = NFLReduce()


def _binomials(x: float, count: int) -> np.ndarray:
    """C(x, n) for n = 0 … count-1 (x real), by C(x, n+1) = C(x, n)(x - n)/(n + 1)."""
    out = np.empty(count)
    c = 1.0
    for n in range(count):
        out[n] = c
        c = c * (x - n) / (n + 1)
    return out


def series_orders(r: np.ndarray, powers: np.ndarray, gamma: float, detach: bool):
    """Per draw, the smallest order N_i whose bound η_i ≤ TOL (the series uses a_n, b_n for
    n ≤ N_i + 1, so N_i ≤ powers_i - 2); (N, η), or None if some draw has no such order."""
    pmax = int(powers.max()) if len(powers) else 2
    orders = np.arange(max(pmax - 1, 1))
    c = np.abs(_binomials(gamma, pmax + 1))[orders + 1]
    if not detach and gamma != 0.0:
        c = np.maximum(c, np.abs(_binomials(gamma - 1.0, pmax + 1))[orders + 1])
    c = np.where(orders + 1 >= (gamma - 1) / 2, c, np.inf)  # below: coefficients may still grow
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        eta = c * r[:, None] ** (orders + 1) / (1.0 - r[:, None]) ** (gamma + 1)
    eta = np.where(r[:, None] == 0.0, 0.0, np.where(r[:, None] < 1.0, eta, np.inf))
    ok = (eta <= TOL) & (orders <= powers[:, None] - 2)
    if not ok.any(axis=1).all():
        return None
    N = np.argmax(ok, axis=1)
    return N, eta[np.arange(len(r)), N]


def _plan(s: NFLDraws, gamma: float, detach: bool):
    """Per (γ, detach), once per reduced draws: η per draw and the power sums weighted by the
    binomial coefficients, zero beyond each draw's order (None where the bound fails)."""
    key = (gamma, detach)
    if key not in s.plans:
        order = series_orders(s.r, np.isfinite(s.a).sum(axis=1), gamma, detach)
        if order is None:
            s.plans[key] = None
        else:
            N, eta = order
            top = int(N.max())
            use = np.arange(top + 1) <= N[:, None]
            c = _binomials(gamma, top + 1)
            ca = np.where(use, c * s.a[:, :top + 1], 0.0)
            cb = np.where(use, c * s.b[:, :top + 1], 0.0)
            if detach or gamma == 0.0:
                da = db = None
            else:
                d = _binomials(gamma - 1.0, top + 1)
                da = np.where(use, d * s.a[:, 1:top + 2], 0.0)
                db = np.where(use, d * s.b[:, 1:top + 2], 0.0)
            s.plans[key] = (eta, ca, cb, da, db)
    return s.plans[key]


def nfl_series_delta(zk, s: NFLDraws, gamma: float, detach: bool):
    """(δ_k per draw, bound on its truncation error per draw), or None when the bound fails.

    ``zk`` a number, or a column [n_z, 1] for several z_k at once (results [n_z, draws])."""
    plan = _plan(s, float(gamma), bool(detach))
    if plan is None:
        return None
    eta, ca, cb, da, db = plan
    x = zk - s.lse
    log_p = -np.logaddexp(0.0, -x)
    log_q = -np.logaddexp(0.0, x)
    p = np.exp(log_p)
    q = np.exp(log_q)
    qg = q ** gamma

    # the correct class
    fl_k = -qg * log_p
    if detach:
        g_k = -qg
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(q > 0, log_p / q, -1.0)  # (ln p)/(1-p) -> -1 as p -> 1
        g_k = qg * (gamma * p * ratio - 1.0)

    # explicit other classes (-inf padding: σ = 0, masked)
    D = fl_k.copy()
    G = g_k.copy()
    if s.explicit.shape[1]:
        live = np.isfinite(s.explicit)
        sj = np.where(live, s.explicit, 0.0) + log_q[..., None]
        om = -np.expm1(sj)
        w = np.where(live, om ** gamma, 0.0)
        D += np.sum(-w * sj, axis=-1)
        if detach:
            G += np.sum(-w, axis=-1)
        else:
            G += np.sum(w * (gamma * np.exp(sj) * sj / om - 1.0), axis=-1)

    # the rest: power series in σ_j = q π_j (coefficients zero beyond each draw's order)
    Q = np.empty(q.shape + (ca.shape[1],))
    Q[..., 0] = 1.0
    Q[..., 1:] = -q[..., None]
    np.cumprod(Q, axis=-1, out=Q)  # (-q)^n
    W = np.einsum("...mn,mn->...m", Q, ca)  # Σ_R (1-σ)^γ
    D_R = -np.einsum("...mn,mn->...m", Q, cb) - log_q * W  # -Σ_R (1-σ)^γ ln σ
    if da is None:
        G_R = -W
    else:
        V = q * (np.einsum("...mn,mn->...m", Q, db) + log_q * np.einsum("...mn,mn->...m", Q, da))
        G_R = gamma * V - W
    D += D_R
    G += G_R
    delta = ((1.0 - p) * g_k * D - fl_k * (g_k - p * G)) / (D * D)
    # first-order propagation of |ΔD_R| ≤ η D_R and |ΔG_R| ≤ η |G_R|
    dD = (1.0 - p) * g_k / (D * D) - 2.0 * delta / D
    dG = fl_k * p / (D * D)
    bound = eta * (np.abs(dD) * np.abs(D_R) + np.abs(dG) * np.abs(G_R))
    return delta, bound


def nfl_mc_delta(zk, stats: NFLDraws, K, P):
    """``mc_delta`` of NFL: δ_k per draw from the reduced draws, None where the bound fails."""
    out = nfl_series_delta(zk, stats, float(P["gamma"]), bool(P["detach"]))
    return None if out is None else out[0]


def nfl_reduce_torch(z):
    """:class:`NFLReduce` on a torch tensor on its device (the same statistics; torch is
    imported here only, when a device was asked for)."""
    import torch

    m, n = z.shape
    lse = torch.logsumexp(z, dim=1)
    logpi = z - lse[:, None]
    pi = torch.exp(logpi)
    mask = pi > TAU
    counts = mask.sum(dim=1)
    width = int(counts.max()) if m else 0
    if width:
        top = torch.topk(torch.where(mask, logpi, torch.full_like(logpi, -torch.inf)), width, dim=1)
        explicit = top.values
        pi = torch.where(mask, torch.zeros_like(pi), pi)
        b0 = (logpi.sum(dim=1) - torch.where(torch.isfinite(explicit), explicit,
                                             torch.zeros_like(explicit)).sum(dim=1))
    else:
        explicit = torch.empty((m, 0), dtype=z.dtype, device=z.device)
        b0 = logpi.sum(dim=1)
    r = pi.max(dim=1).values
    P = powers_needed(float(r.max()))
    a = torch.empty((m, P), dtype=z.dtype, device=z.device)
    b = torch.empty((m, P), dtype=z.dtype, device=z.device)
    a[:, 0] = n - counts
    b[:, 0] = b0
    power = pi
    for k in range(1, P):
        a[:, k] = power.sum(dim=1)
        b[:, k] = (power * logpi).sum(dim=1)
        if k + 1 < P:
            power = power * pi
    return NFLDraws(_np(lse), _np(z.sum(dim=1)), _np(explicit), _np(r), _np(a), _np(b))


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy()
