r"""RCE's softmax clamp in Monte Carlo, each draw reduced to one number (exact at every K).

The published RCE clamps every softmax entry below at pmin; what that adds to δ_k, per unit of
A, is δ = p c_m with p = σ_k and c_m = Σ_{j≠k, σ_j < pmin} σ_j (specs.py, ``rce_floor``).
Let the other n = K - 1 logits be i.i.d. with density φ (centred, as the Monte Carlo draws are),
z = z_k - mean. By exchangeability of the n others,

.. math::

    E[p\,c_m] = n\,E_{S'}\Bigl[\int_{-\infty}^{U} \varphi(u)\,
        \frac{e^{z+u}}{(D_0 + e^u)^2}\,du\Bigr],\qquad D_0 = e^z + S',

S' = Σ e^{z_i} over n - 1 of the others, and σ_j < pmin ⇔ e^u (1 - pmin) < pmin D_0 ⇔
u < U = ln(r D_0), r = pmin / (1 - pmin). So a draw needs only ln S' (its first n - 1 others:
one column of the draw is integrated out exactly instead of sampled; the average is unchanged,
it is the conditional expectation given the rest). Below U, x = e^u / D_0 < r, and

.. math::

    \frac{1}{(D_0 + e^u)^2} = D_0^{-2} \sum_{m \ge 0} (m + 1)(-x)^m,

    \int_{-\infty}^{U} \varphi(u) \frac{e^{z+u}}{(D_0+e^u)^2} du
        = e^z \sum_{m=0}^{N-1} (-1)^m (m+1)\, D_0^{-m-2} M_{m+1}(U) + R_N,

with the partial exponential moments M_j(U) = ∫_{-∞}^U φ(u) e^{ju} du of exactly the distribution
the draws sample (``LogitDistribution.log_partial_moment``: closed form for the Gaussian, prefix
sums over the sorted values for measured logits). Every z then costs O(samples · N), whatever K.

Truncation bound (rigorous). For x ≤ 1/2 the terms (m+1) x^m decrease in m (their ratio is
x (m+2)/(m+1) ≤ 2x ≤ 1) and alternate, so |Σ_{m≥N} (m+1)(-x)^m| ≤ (N+1) x^N; the integrand is
positive, so integrating this pointwise bound gives the per-draw bound
|R_N| ≤ e^z (N+1) D_0^{-N-2} M_{N+1}(U) (returned with the values), and relative to the
integral it is at most η(N) = (N+1) r^N (1+r)^2 (because 1/(1+x)^2 ≥ 1/(1+r)^2). N is the
smallest order with η(N) ≤ TOL = 1e-14: N = 3 at pmin = 1e-7, 4 at 1e-4, 8 at pmin = 0.01 (the
parameter's upper limit). Where no N ≤ N_MAX reaches TOL (pmin > 1/3, or beyond N_MAX), or the
distribution has no partial moments, :func:`rce_floor_mc_delta` returns None and the engine
evaluates whole vectors.
"""

from __future__ import annotations

import math

import numpy as np

from .base import _logsumexp, lse_and_sum

TOL = 1e-14  # relative truncation error allowed
N_MAX = 8  # series orders at most (η(8) ≤ 1.1e-15 at pmin = 0.01)


def series_order(pmin: float) -> int | None:
    """The smallest N with η(N) = (N+1) r^N (1+r)^2 ≤ TOL, r = pmin/(1-pmin), or None (N > N_MAX,
    or r > 1/2 where the alternating bound does not hold)."""
    if not 0.0 < pmin < 1.0:
        return None
    r = pmin / (1.0 - pmin)
    if r > 0.5:
        return None
    for N in range(1, N_MAX + 1):
        if (N + 1) * r ** N * (1.0 + r) ** 2 <= TOL:
            return N
    return None


class RCEReduce:
    """``reducer(draws[m, n]) -> [m, 3]``: per draw ln S' (S' = Σ e^z over the first n - 1
    columns; -inf when n = 1), and ln Σ e^z, Σ z over all n (what NCE and the control variates
    use: ``provides``, so the pass serves them too). NumPy or torch (on the tensor's device)."""

    accepts_torch = True

    def __init__(self):
        self.provides = {lse_and_sum: lambda s: np.ascontiguousarray(s[:, 1:])}

    def __call__(self, draws) -> np.ndarray:
        m, n = draws.shape
        if not isinstance(draws, np.ndarray):
            import torch

            rest = (torch.logsumexp(draws[:, :-1], dim=1) if n > 1 else
                    torch.full((m,), -math.inf, dtype=draws.dtype, device=draws.device))
            out = torch.stack([rest, torch.logaddexp(rest, draws[:, -1]), draws.sum(dim=1)], dim=1)
            return out.cpu().numpy()
        rest = _logsumexp(draws[:, :-1]) if n > 1 else np.full(m, -np.inf)
        return np.stack([rest, np.logaddexp(rest, draws[:, -1]), draws.sum(axis=1)], axis=1)


rce_reduce = RCEReduce()


def rce_floor_series(zk, log_s, classes: int, pmin: float, dist):
    """(δ per draw, truncation bound per draw), or None where the series or the distribution
    does not serve. ``zk`` a number or a column [n_z, 1] (centred), ``log_s`` = ln S' per draw."""
    N = series_order(pmin)
    if N is None:
        return None
    z = np.asarray(zk, dtype=float)
    log_d0 = np.logaddexp(z, log_s)  # ln(e^z + S'); S' = 0 (K = 2): ln D_0 = z
    U = math.log(pmin) - math.log1p(-pmin) + log_d0
    total = np.zeros(np.broadcast(z, log_s).shape)
    for m in range(N + 1):
        log_mom = dist.log_partial_moment(U, m + 1)
        if log_mom is None:
            return None
        with np.errstate(under="ignore"):
            term = (m + 1) * np.exp(z - (m + 2) * log_d0 + log_mom)
        if m == N:
            return (classes - 1) * total, (classes - 1) * term
        total += term if m % 2 == 0 else -term
    raise AssertionError("unreachable")  # pragma: no cover


def rce_floor_mc_delta(zk, stats, classes, P, dist=None):
    """``mc_delta`` of the clamp term: δ per draw from ln S' (stats[:, 0]) and the logit
    distribution's partial moments; None where the bound fails or ``dist`` has none."""
    if dist is None:
        return None
    out = rce_floor_series(zk, stats[:, 0], classes, float(P["pmin"]), dist)
    return None if out is None else out[0]


rce_floor_mc_delta.takes_dist = True  # the engine passes dist= (the draws' distribution)
