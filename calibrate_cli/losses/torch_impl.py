r"""The registry's losses in torch: one function per ``LossSpec.torch_name``.

Every function has the signature ``fn(logits, target, **params) -> loss`` with

* ``logits``: float tensor ``[N, K]`` (float64, float32, or half/bfloat16 --
  half precision is computed in float32 and returned as float32),
* ``target``: long tensor ``[N]`` of class indices,
* ``params``: keyword arguments named exactly like the loss's ``Param`` names
  in ``specs.py``,
* result: the per-sample loss ``[N]`` (no reduction).

Notation as in ``specs.py``: softmax σ_j, correct class k, p = σ_k,
y the one-hot target. Each function is written so that autograd of the loss
with respect to z_k reproduces the NumPy kernel ``LossSpec.delta`` exactly
(same conventions, no hidden clamps of p): the test suite checks this for
every loss. Probabilities are handled in log space, so logits of ±50 neither
overflow nor produce NaN gradients.

**Precision of the σ_k-only losses.** They are all functions of p, so their
gradient is L'(p)·∂p/∂z with ∂p/∂z_k = p(1 - p) and ∂p/∂z_j = -p σ_j. Both
factors p and 1 - p must come out of autograd without cancellation, at p -> 0
(large K: p ≈ 1/K at initialisation) and at p -> 1. :func:`log_p` writes

ln p with a derivative with respect to z_k of 1 - p computed from the *other*
classes' mass (a small autograd function, as fast as ``log_softmax``), and
p = exp(ln p) is differentiated as p itself. The losses are then written as plain functions of p (``1 - p``,
``1 - exp(q ln p)``, ...), never through ``expm1`` of ln p: autograd of
``expm1`` multiplies by (result + 1), which rebuilds p from 1 - (1 - p) and
loses it entirely once p < 1e-16 (float64) or grows a relative error of
1e-2..1 at K = 10^5..10^7 in float32. The test suite checks float32 autograd
against the float64 kernel to 1e-5 up to K = 10^7 and float64 at logits of ±40.

**RCE's softmax clamp.** The published RCE code (SCE, APL, ALFs, ANL) clamps
every softmax entry at 1e-7 before the sum, ``clamp(softmax, min=1e-7)``. Here
that is the parameter ``pmin`` (0: the formula as written; the literature
presets set 1e-7). With it RCE = A Σ_{j≠k} max(σ_j, pmin), written as the
exact part A(1 - p) plus A·:func:`rce_floor`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "ce", "mae", "gce", "agce", "aul", "ael", "rce", "rce_floor", "nce", "nfl", "bitemp",
    "log_p", "tempered_log_softmax",
]


def _as_float(logits: torch.Tensor) -> torch.Tensor:
    """Half and bfloat16 logits are computed in float32; float32/64 are kept."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    return logits


class _LogP(torch.autograd.Function):
    """ln σ_k and its exact gradient: one max, one exp and one sum over the logits.

    With m = max_j z_j (at class j*) and r = Σ_{j≠j*} e^{z_j - m}: s = 1 + r, ln p =
    (z_k - m) - log1p(r), and 1 - p = rest/s with rest = r if k = j*, else s - e^{z_k - m}
    (no cancellation: then p <= 1/2). Backward: ∂ ln p/∂z_j = -σ_j (j ≠ k), 1 - p (j = k).
    """

    @staticmethod
    def forward(ctx, z, t):
        m, top = z.max(dim=1, keepdim=True)
        e = torch.sub(z, m).exp_()
        e.scatter_(1, top, 0.0)
        r = e.sum(dim=1, keepdim=True)
        s = r + 1.0
        rest = torch.where(top == t, r, s - e.gather(1, t))
        ctx.save_for_backward(e, top, t, s, rest)
        return ((z.gather(1, t) - m) - torch.log1p(r)).squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        e, top, t, s, rest = ctx.saved_tensors
        gs = g[:, None] / s
        grad = torch.mul(e, -gs)
        grad.scatter_(1, top, -gs)
        grad.scatter_(1, t, gs * rest)
        return grad, None


def log_p(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""ln p = ln σ_k per sample, with a gradient that is accurate at p -> 0 and p -> 1.

    ∂ ln p/∂z_k = 1 - p is computed from the mass of the other classes (never as
    1 - σ_k) and ∂ ln p/∂z_j = -σ_j; the cost is that of ``log_softmax``. First
    derivatives only (no double backward).
    """
    return _LogP.apply(_as_float(logits), target.long().view(-1, 1))


# ------------------------------------------------------------------ σ_k alone
def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Cross entropy :math:`L = -\ln p`; δ_k = p - 1."""
    return -log_p(logits, target)


def mae(logits: torch.Tensor, target: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    r"""Mean absolute error :math:`L = \mathrm{scale}\,(1 - p)`; δ_k = -scale·p(1 - p).

    scale = 2 is the full L1 distance Σ_j |σ_j - y_j| = 2(1 - p); scale = 1 is
    APL's reduced MAE.
    """
    return scale * (1.0 - torch.exp(log_p(logits, target)))


def gce(logits: torch.Tensor, target: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    r"""Generalized cross entropy :math:`L = (1 - p^q)/q`; δ_k = -p^q (1 - p)."""
    return (1.0 - torch.exp(q * log_p(logits, target))) / q


def agce(logits: torch.Tensor, target: torch.Tensor, a: float = 0.6, q: float = 0.6) -> torch.Tensor:
    r"""Asymmetric GCE :math:`L = ((a+1)^q - (a+p)^q)/q`; δ_k = -(a+p)^{q-1} p(1-p)."""
    p = torch.exp(log_p(logits, target))
    return ((a + 1.0) ** q - (a + p) ** q) / q


def aul(logits: torch.Tensor, target: torch.Tensor, a: float = 5.5, q: float = 3.0) -> torch.Tensor:
    r"""Asymmetric unhinged loss :math:`L = ((a-p)^q - (a-1)^q)/q`, a > 1;
    δ_k = -(a-p)^{q-1} p(1-p)."""
    p = torch.exp(log_p(logits, target))
    return ((a - p) ** q - (a - 1.0) ** q) / q


def ael(logits: torch.Tensor, target: torch.Tensor, a: float = 2.5) -> torch.Tensor:
    r"""Asymmetric exponential loss :math:`L = e^{-p/a}`; δ_k = -(1/a) e^{-p/a} p(1-p)."""
    p = torch.exp(log_p(logits, target))
    return torch.exp(-p / a)


def rce(logits: torch.Tensor, target: torch.Tensor, clamp: float = 1e-4) -> torch.Tensor:
    r"""Reverse cross entropy :math:`L = -\sum_j σ_j \ln \mathrm{clamp}(y_j, c, 1) = A(1-p)`,
    A = -ln c (c = 1e-4: A = 9.2103); δ_k = -A p(1-p).

    The softmax clamp of the published code is the separate term :func:`rce_floor`.
    """
    return -math.log(clamp) * (1.0 - torch.exp(log_p(logits, target)))


def rce_floor(logits: torch.Tensor, target: torch.Tensor, pmin: float = 1e-7) -> torch.Tensor:
    r"""What RCE's softmax clamp adds, per unit of A: :math:`F = \sum_{j\ne k} (p_{min} - σ_j)_+`.

    A(1 - p) + A·F = A Σ_{j≠k} max(σ_j, p_min) = -Σ_j clamp(σ_j, p_min, 1) ln clamp(y_j, c, 1),
    the published RCE. δ_k(F) = p·c_m, c_m = Σ_{j≠k, σ_j < p_min} σ_j: the clamped classes
    no longer pass gradient, so RCE's δ_k becomes -A p (1 - p - c_m).
    """
    z = _as_float(logits)
    probs = F.softmax(z, dim=1)
    gap = torch.clamp(pmin - probs, min=0.0)
    own = gap.gather(1, target.long().view(-1, 1)).squeeze(1)
    return gap.sum(dim=1) - own


# ------------------------------------------------------------ every σ_j matters
def nce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Normalized cross entropy :math:`L = (-\ln σ_k) / (-\sum_j \ln σ_j)`.

    With A = -ln p and B = -Σ_j ln σ_j: δ_k = [(p-1)B - A(Kp-1)]/B².
    """
    logs = F.log_softmax(_as_float(logits), dim=1)
    log_pk = logs.gather(1, target.long().view(-1, 1)).squeeze(1)
    return log_pk / logs.sum(dim=1)


def _pow_nonneg(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """x**gamma for x >= 0 whose gradient is 0 (not NaN) where x == 0."""
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, safe ** gamma, torch.full_like(x, 0.0 ** gamma))


def nfl(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 0.5, detach: float = 0.0
) -> torch.Tensor:
    r"""Normalized focal loss :math:`L = FL_k / \sum_j FL_j`, :math:`FL_j = -(1-σ_j)^γ \ln σ_j`.

    ``detach = 0`` (default): gradients flow through every factor, the formula
    as written. ``detach = 1``: every weight (1-σ_j)^γ, the numerator's
    included, is a constant for autograd (APL's code uses ``.data`` for both);
    only the ln σ_j carry gradients. These are the two conventions of the
    NumPy kernel (specs.py ``_nfl_full``).
    """
    logs = F.log_softmax(_as_float(logits), dim=1)
    one_minus = -torch.expm1(logs)  # 1 - σ_j, accurate when σ_j is small
    if detach:
        one_minus = one_minus.detach()
    fl = -_pow_nonneg(one_minus, gamma) * logs
    fl_k = fl.gather(1, target.long().view(-1, 1)).squeeze(1)
    return fl_k / fl.sum(dim=1)


# ------------------------------------------------------------------ bi-tempered
def _log_exp_t(x: torch.Tensor, t: float) -> torch.Tensor:
    """ln exp_t(x) for t > 1 and x <= 0: exp_t(x) = (1 + (1-t) x)^{1/(1-t)}."""
    return -torch.log1p((t - 1.0) * (-x)) / (t - 1.0)


def tempered_log_softmax(
    logits: torch.Tensor, t: float, *, tol: float | None = None, max_iter: int = 200
) -> torch.Tensor:
    r"""ln p_j of the tempered softmax :math:`p_j = \exp_t(a_j - λ)`, :math:`\sum_j p_j = 1`.

    For t = 1 this is ``log_softmax``. For t > 1, λ solves
    f(λ) = Σ_j exp_t(a_j - λ) - 1 = 0. f is convex and decreasing; Newton's
    method started at λ = max_j a_j (where f >= 0) rises monotonically to the
    root (as specs.py's ``tempered_softmax``). The iterations run without
    autograd; one last Newton step is taken with gradients,

    .. math:: λ = λ_* + \frac{\sum_j \exp_t(a_j - λ_*) - 1}{\sum_j \exp_t(a_j - λ_*)^t},

    with λ_* and the denominator held constant. Its gradient is
    ∂λ/∂a_i = p_i^t / Σ_j p_j^t, the exact implicit derivative of the
    normaliser (d exp_t(x)/dx = exp_t(x)^t), so autograd gives the true
    gradient of the normalised tempered softmax.
    """
    z = _as_float(logits)
    if t == 1.0:
        return F.log_softmax(z, dim=1)
    if t < 1.0:
        raise ValueError(f"tempered_log_softmax needs t >= 1, got {t}")
    if tol is None:
        tol = 1e-13 if z.dtype == torch.float64 else 1e-6
    with torch.no_grad():
        a = z.detach()
        lam = a.max(dim=1, keepdim=True).values
        for _ in range(max_iter):
            e = torch.exp(_log_exp_t(a - lam, t))
            f = e.sum(dim=1, keepdim=True) - 1.0
            fp = (e ** t).sum(dim=1, keepdim=True)
            step = f / fp
            lam = lam + step
            if bool((step.abs() <= tol * (1.0 + lam.abs())).all()):
                break
        denom = (torch.exp(_log_exp_t(a - lam, t)) ** t).sum(dim=1, keepdim=True)
    e = torch.exp(_log_exp_t(z - lam, t))
    lam_g = lam + (e.sum(dim=1, keepdim=True) - 1.0) / denom
    # λ > max_j a_j, so a_j - λ < 0 and log1p's argument stays above -1.
    return _log_exp_t(z - lam_g, t)


def bitemp(
    logits: torch.Tensor, target: torch.Tensor, t1: float = 0.8, t2: float = 1.2
) -> torch.Tensor:
    r"""Bi-tempered logistic loss (Amid et al. 2019) with a one-hot target:

    .. math:: L = -\log_{t_1} p_k - \frac{1}{2-t_1} + \sum_j \frac{p_j^{2-t_1}}{2-t_1},

    p = tempered softmax with temperature t2 (:func:`tempered_log_softmax`,
    normalised to 1e-13 in float64), :math:`\log_t x = (x^{1-t} - 1)/(1-t)`
    (ln x at t = 1). t1 = t2 = 1 is CE. δ_k = u_k - (p_k^{t2}/Σ_j p_j^{t2}) Σ_j u_j,
    u_j = (p_j - y_j) p_j^{t2-t1}. Powers of p are taken as exp(r ln p).
    """
    logp = tempered_log_softmax(logits, t2)
    logp_k = logp.gather(1, target.long().view(-1, 1)).squeeze(1)
    if t1 == 1.0:
        log_t1_pk = logp_k
    else:
        log_t1_pk = torch.expm1((1.0 - t1) * logp_k) / (1.0 - t1)
    r = 2.0 - t1
    return -log_t1_pk + (torch.exp(r * logp).sum(dim=1) - 1.0) / r
