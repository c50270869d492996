"""The losses: formulas, conventions, parameters, literature presets, δ_k kernels.

Notation: logits z, softmax σ, correct class k, p = σ_k, δ_k = ∂L/∂z_k.
For a loss L(p) of p alone, δ_k = L'(p) · p (1 - p).

Conventions (each a parameter with a documented default):

* MAE = scale · (1 - p), scale = 2 by default: the full L1 distance
  Σ_j |σ_j - y_j| = 2 (1 - p). APL's code uses scale 1 ("reduced" MAE); inside
  the NCE+MAE and NF-MAE combinations the MAE term is 1 - p, as in APL, so that
  the literature weights β apply unchanged.
* RCE = -Σ_j σ_j ln(clamp(y_j, c, 1)) = A (1 - p) with A = -ln c, c = 1e-4
  (A = 9.2103; the "A = -4" of the SCE paper is not what the public code does).
  The public code also clamps every softmax entry below at 1e-7 before the sum;
  that is ``pmin`` (default 0, the formula as written; 1e-7 in the presets of
  SCE, NCE+RCE and NF-RCE, which come from that code): RCE = A Σ_{j≠k} max(σ_j,
  pmin), δ_k = -A p (1 - p - c_m), c_m the softmax mass of the clamped classes.
* NFL: FL_j = -(1 - σ_j)^γ ln σ_j, NFL = FL_k / Σ_j FL_j; by default gradients
  flow through every factor (the formula as written); ``detach = 1`` treats the
  weights (1 - σ_j)^γ as constants, as the APL code does (``.data``).
* biTemp: tempered softmax with t2 >= 1 normalised exactly (Newton on the
  normaliser), Bregman loss with t1; t1 = t2 = 1 is CE.

Literature presets are the hyperparameters published with the papers and their public code:
Ma et al. 2020 (Active-Passive Losses, ICML; repository APL), Zhou et al. 2021 (Asymmetric
Loss Functions, ICML; repository ALFs), Ye et al. 2023 (Active-Negative Loss, NeurIPS;
repository ANL), Wang et al. 2025 (Joint Asymmetric Loss), Wang et al. 2019 (Symmetric Cross
Entropy, ICCV); each preset names its source (``Preset.source``).
"""

from __future__ import annotations

import math

import numpy as np

from .base import LossSpec, Param, Preset, SigmaKernel, Term, _logsumexp, lse_and_sum, register
from .bitemp_series import bitemp_mc_delta, bitemp_reduce
from .nfl_series import nfl_mc_delta, nfl_reduce
from .rce_series import rce_floor_mc_delta, rce_reduce

APL = "Ma et al. 2020, Active-Passive Losses (ICML), configs/<dataset>"
ALFS = "Zhou et al. 2021, Asymmetric Loss Functions (ICML), lnl/config.py"
ANL = "Ye et al. 2023, Active-Negative Loss (NeurIPS), config/webvision_nce_agce.json"
JAL = "Wang et al. 2025, Joint Asymmetric Loss, config.py"
SCE_SRC = "Wang et al. 2019, Symmetric Cross Entropy (ICCV); APL configs"

CLASSES = {"cifar10": 10, "cifar100": 100, "webvision-mini": 50}


def _presets(source: str, **by_dataset: dict) -> dict[str, Preset]:
    out = {}
    for key, values in by_dataset.items():
        ds = key.replace("_", "-")
        src = values.pop("_source", source)
        out[ds] = Preset(ds, values, src, CLASSES[ds])
    return out


def _pos(name, default, doc, high=math.inf, high_open=True):
    return Param(name, default, 0.0, high, True, high_open, doc)


CLAMP = Param("clamp", 1e-4, 0.0, 1.0, True, True, "clamp c of log(one-hot); A = -ln c")
ALPHA = _pos("alpha", 1.0, "weight of the active (normalised) term")
BETA = _pos("beta", 1.0, "weight of the passive term")
GAMMA = Param("gamma", 0.5, 0.0, math.inf, False, True, "focal exponent γ")
PMIN = Param("pmin", 0.0, 0.0, 0.01, False, False,
             "softmax entries clamped below at pmin before RCE's sum (published code: 1e-7); 0: none")
DETACH = Param("detach", 0.0, 0, 1, False, False, "1: treat (1-σ_j)^γ as constants (APL code)", flag=True)


# ---------------------------------------------------------------- σ_k alone
def _pp(p):
    return p * (1.0 - p)


ce = register(LossSpec(
    name="ce", title="cross entropy", aliases=("cross-entropy", "xent"),
    formula="-ln p", delta_formula="p - 1", bounded=False,
    sigma=SigmaKernel(offset=lambda P: -1.0, g=lambda p, P: p),
    torch_name="ce",
))

mae = register(LossSpec(
    name="mae", title="mean absolute error", aliases=("l1",),
    formula="scale·(1 - p)", delta_formula="-scale·p(1 - p)",
    params=(_pos("scale", 2.0, "2: Σ_j|σ_j - y_j| = 2(1-p); 1: APL's reduced MAE"),),
    sigma=SigmaKernel(offset=lambda P: 0.0, g=lambda p, P: -P["scale"] * _pp(p)),
    torch_name="mae",
    notes="MAE with a logit bias is the paper's MAE*.",
))

gce = register(LossSpec(
    name="gce", title="generalized cross entropy", aliases=("genCE", "lq", "gce-loss"),
    formula="(1 - p^q)/q", delta_formula="-p^q (1 - p)",
    params=(Param("q", 0.7, 0.0, 4.0, True, False, "q -> 0 is CE, q = 1 is MAE/2"),),
    presets=_presets(APL + "; ANL; ε-softmax", cifar10=dict(q=0.7), cifar100=dict(q=0.7),
                     webvision_mini=dict(q=0.7)),
    sigma=SigmaKernel(offset=lambda P: 0.0, g=lambda p, P: -(p ** P["q"]) * (1.0 - p)),
    torch_name="gce",
))

agce = register(LossSpec(
    name="agce", title="asymmetric generalized cross entropy",
    formula="((a + 1)^q - (a + p)^q)/q", delta_formula="-(a + p)^(q-1) p (1 - p)",
    params=(_pos("a", 0.6, "offset a > 0"), _pos("q", 0.6, "exponent q > 0")),
    presets=_presets(ALFS, cifar10=dict(a=0.6, q=0.6), cifar100=dict(a=0.6, q=0.6),
                     webvision_mini=dict(a=1e-5, q=0.5, _source=JAL)),
    sigma=SigmaKernel(offset=lambda P: 0.0,
                      g=lambda p, P: -((P["a"] + p) ** (P["q"] - 1.0)) * _pp(p)),
    torch_name="agce",
))

aul = register(LossSpec(
    name="aul", title="asymmetric unhinged loss",
    formula="((a - p)^q - (a - 1)^q)/q", delta_formula="-(a - p)^(q-1) p (1 - p)",
    params=(Param("a", 5.5, 1.0, math.inf, True, True, "a > 1"), _pos("q", 3.0, "exponent q > 0")),
    presets=_presets(ALFS, cifar10=dict(a=5.5, q=3.0), cifar100=dict(a=5.5, q=3.0)),
    sigma=SigmaKernel(offset=lambda P: 0.0,
                      g=lambda p, P: -((P["a"] - p) ** (P["q"] - 1.0)) * _pp(p),
                      decay=lambda P: 1.0 - 1.0 / P["a"]),
    torch_name="aul",
))

ael = register(LossSpec(
    name="ael", title="asymmetric exponential loss",
    formula="exp(-p/a)", delta_formula="-(1/a) exp(-p/a) p (1 - p)",
    params=(_pos("a", 2.5, "scale a > 0"),),
    presets=_presets(ALFS, cifar10=dict(a=2.5), cifar100=dict(a=2.5)),
    sigma=SigmaKernel(offset=lambda P: 0.0,
                      g=lambda p, P: -np.exp(-p / P["a"]) / P["a"] * _pp(p)),
    torch_name="ael",
))

def _rce_floor_full(logits, P):
    """δ_k of the clamp term F = Σ_{j≠k} (pmin - σ_j)_+: p·c_m, c_m the mass of the clamped others."""
    lse = _logsumexp(logits)
    sig = np.exp(logits - lse[:, None])
    others = sig[:, 1:]
    return sig[:, 0] * np.where(others < P["pmin"], others, 0.0).sum(axis=1)


#: The exact part of RCE, A(1 - p) (unregistered: a term of ``rce``).
rce_exact = LossSpec(
    name="rce-exact", title="reverse cross entropy without the softmax clamp",
    formula="A (1 - p)", delta_formula="-A p (1 - p)", params=(CLAMP,),
    sigma=SigmaKernel(offset=lambda P: 0.0, g=lambda p, P: math.log(P["clamp"]) * _pp(p)),
    torch_name="rce",
)

#: What the published softmax clamp adds to RCE, per unit of A (unregistered: a term of ``rce``).
rce_floor = LossSpec(
    name="rce-floor", title="RCE's softmax clamp",
    formula="Σ_{j≠k} (pmin - σ_j)_+", delta_formula="p c_m, c_m = Σ_{j≠k, σ_j < pmin} σ_j",
    params=(Param("pmin", 1e-7, 0.0, 0.01, True, False, "softmax floor"),),
    full=_rce_floor_full, torch_name="rce_floor",
    mc_reduce=rce_reduce, mc_delta=rce_floor_mc_delta,  # one number per draw (rce_series.py)
)


def _rce_terms(P):
    """RCE = A(1 - p) + A Σ_{j≠k} (pmin - σ_j)_+ = A Σ_{j≠k} max(σ_j, pmin), A = -ln c."""
    terms = [Term(1.0, rce_exact, {"clamp": P["clamp"]})]
    if P["pmin"] > 0:
        terms.append(Term(-math.log(P["clamp"]), rce_floor, {"pmin": P["pmin"]}))
    return terms


rce = register(LossSpec(
    name="rce", title="reverse cross entropy",
    formula="-Σ_j clamp(σ_j, pmin) ln clamp(y_j, c) = A Σ_{j≠k} max(σ_j, pmin), A = -ln c",
    delta_formula="-A p (1 - p - c_m), c_m = Σ_{j≠k, σ_j < pmin} σ_j", params=(CLAMP, PMIN),
    terms_of=_rce_terms,
    notes="pmin = 0 is the formula as written (exact averages); the published code clamps the "
          "softmax at 1e-7, which the presets of the RCE combinations set.",
))


def _rce_params(P):
    return {"clamp": P["clamp"], "pmin": P["pmin"]}


sce = register(LossSpec(
    name="sce", title="symmetric cross entropy", aliases=("sl",),
    formula="α CE + β RCE", delta_formula="α (p - 1) - β A p (1 - p)", bounded=False,
    params=(_pos("alpha", 0.1, "CE weight"), _pos("beta", 1.0, "RCE weight"), CLAMP, PMIN),
    presets=_presets(SCE_SRC, cifar10=dict(alpha=0.1, beta=1.0, pmin=1e-7),
                     cifar100=dict(alpha=6.0, beta=0.1, pmin=1e-7),
                     webvision_mini=dict(alpha=10.0, beta=1.0, pmin=1e-7)),
    terms_of=lambda P: [Term(P["alpha"], ce, {}), Term(P["beta"], rce, _rce_params(P))],
))


# ------------------------------------------------------- every σ_j matters
def _nce_from(zk, lse, sum_all, K):
    """δ_k of NCE from z_k, log Σ_j e^{z_j} and Σ_j z_j (all K classes)."""
    logp = zk - lse
    p = np.exp(logp)
    A = -logp
    B = K * lse - sum_all
    return ((p - 1.0) * B - A * (K * p - 1.0)) / (B * B)


def _nce_full(logits, P):
    K = logits.shape[1]
    return _nce_from(logits[:, 0], _logsumexp(logits), logits.sum(axis=1), K)


def _nce_mc(zk, stats, K, P):
    lse = np.logaddexp(zk, stats[:, 0])
    return _nce_from(zk, lse, zk + stats[:, 1], K)


def _nce_mc_slope(zk, stats, K, P):
    """dδ_k/dz_k of NCE per draw. With N = (p-1)B - A(Kp-1), δ = N/B², and dp/dz = p(1-p),
    dA/dz = p - 1, dB/dz = Kp - 1: dN/dz = p(1-p)(B - AK), so
    dδ/dz = [p(1-p)(B - AK) - 2N(Kp-1)/B] / B²."""
    logp = -np.logaddexp(0.0, stats[:, 0] - zk)  # ln p without cancellation where p ≈ 1
    lse = zk - logp
    p = np.exp(logp)
    q = -np.expm1(logp)  # 1 - p
    A = -logp
    B = K * lse - (zk + stats[:, 1])
    N = -q * B - A * (K * p - 1.0)
    return (p * q * (B - A * K) - 2.0 * N * (K * p - 1.0) / B) / (B * B)


nce = register(LossSpec(
    name="nce", title="normalized cross entropy",
    formula="(-ln p) / (-Σ_j ln σ_j)",
    delta_formula="[(p-1)B - A(Kp-1)]/B², A = -ln p, B = -Σ_j ln σ_j",
    full=_nce_full, mc_reduce=lse_and_sum, mc_delta=_nce_mc, mc_slope=_nce_mc_slope,
    torch_name="nce",
))


def _log_softmax(a):
    """ln σ per row, accurate also for the largest entry when it dominates: there
    ln σ_max = -log1p(Σ_{j≠max} e^{a_j - a_max}) (a - logsumexp loses it to the rounding of 1 + s)."""
    rows = np.arange(a.shape[0])
    top = np.argmax(a, axis=1)
    m = a[rows, top][:, None]
    e = np.exp(a - m)
    e[rows, top] = 0.0
    s = e.sum(axis=1)
    logs = a - (m + np.log1p(s)[:, None])
    logs[rows, top] = -np.log1p(s)
    return logs


def _nfl_full(logits, P):
    gamma, detach = P["gamma"], P["detach"]
    logs = _log_softmax(logits)
    sig = np.exp(logs)
    one_minus = -np.expm1(logs)
    w = one_minus ** gamma
    fl = -w * logs
    D = fl.sum(axis=1)
    if detach:
        g = -w
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            g = gamma * one_minus ** (gamma - 1.0) * sig * logs - w
        g = np.where(one_minus > 0, g, 0.0)
    sk = sig[:, 0]
    dfl_k = (1.0 - sk) * g[:, 0]
    dD = g[:, 0] - sk * g.sum(axis=1)
    return (dfl_k * D - fl[:, 0] * dD) / (D * D)


nfl = register(LossSpec(
    name="nfl", title="normalized focal loss",
    formula="FL_k / Σ_j FL_j, FL_j = -(1-σ_j)^γ ln σ_j",
    delta_formula="(FL_k' D - FL_k D')/D², D = Σ_j FL_j (see docs)",
    params=(GAMMA, DETACH), full=_nfl_full, torch_name="nfl",
    mc_reduce=nfl_reduce, mc_delta=nfl_mc_delta,
))


def _exp_t(x, t):
    if t == 1.0:
        return np.exp(x)
    return np.maximum(1.0 + (1.0 - t) * x, 0.0) ** (1.0 / (1.0 - t))


def tempered_softmax(a: np.ndarray, t: float, tol: float = 1e-13, max_iter: int = 200) -> np.ndarray:
    """p_j = exp_t(a_j - λ) with λ such that Σ_j p_j = 1 (t >= 1), by Newton on λ.

    f(λ) = Σ_j exp_t(a_j - λ) - 1 is convex and decreasing; Newton started at
    λ = max_j a_j (where f >= 0) increases monotonically to the root.
    """
    if t == 1.0:
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    lam = a.max(axis=1, keepdims=True)
    for _ in range(max_iter):
        e = _exp_t(a - lam, t)
        f = e.sum(axis=1, keepdims=True) - 1.0
        fp = -(e ** t).sum(axis=1, keepdims=True)
        step = f / fp
        lam = lam - step
        if np.all(np.abs(step) <= tol * (1.0 + np.abs(lam))):
            break
    return _exp_t(a - lam, t)


def _bitemp_full(logits, P):
    t1, t2 = P["t1"], P["t2"]
    p = tempered_softmax(logits, t2)
    y = np.zeros_like(p)
    y[:, 0] = 1.0
    u = (p - y) * p ** (t2 - t1)
    escort = p ** t2
    return u[:, 0] - escort[:, 0] / escort.sum(axis=1) * u.sum(axis=1)


bitemp = register(LossSpec(
    name="bitemp", title="bi-tempered logistic loss", aliases=("bi-tempered", "bitempered"),
    formula="-log_t1 p_k - 1/(2-t1) + Σ_j p_j^(2-t1)/(2-t1), p = tempered softmax_t2",
    delta_formula="u_k - (p_k^t2 / Σ_j p_j^t2) Σ_j u_j, u_j = (p_j - y_j) p_j^(t2-t1)",
    params=(Param("t1", 0.8, 0.0, 1.0, False, False, "t1 < 1: bounded loss"),
            Param("t2", 1.2, 1.0, 5.0, False, False, "t2 > 1: heavy-tailed softmax")),
    bounded=True, full=_bitemp_full, torch_name="bitemp",
    mc_reduce=bitemp_reduce, mc_delta=bitemp_mc_delta,
    notes="No peer ships defaults; t1 = 0.8, t2 = 1.2 are this tool's choice.",
))


# ------------------------------------------------------------ combinations
mae1 = {"scale": 1.0}

nce_rce = register(LossSpec(
    name="nce-rce", title="NCE + RCE (APL)", aliases=("ncerce", "nce-and-rce"),
    formula="α NCE + β RCE", delta_formula="α δ_NCE - β A p (1 - p)",
    params=(ALPHA, BETA, CLAMP, PMIN),
    presets=_presets(APL, cifar10=dict(alpha=1.0, beta=1.0, pmin=1e-7),
                     cifar100=dict(alpha=10.0, beta=0.1, pmin=1e-7),
                     webvision_mini=dict(alpha=50.0, beta=0.1, pmin=1e-7)),
    terms_of=lambda P: [Term(P["alpha"], nce, {}), Term(P["beta"], rce, _rce_params(P))],
))

nce_mae = register(LossSpec(
    name="nce-mae", title="NCE + MAE (APL)", aliases=("ncemae",),
    formula="α NCE + β (1 - p)", delta_formula="α δ_NCE - β p (1 - p)",
    params=(ALPHA, BETA),
    presets=_presets(APL, cifar10=dict(alpha=1.0, beta=1.0), cifar100=dict(alpha=10.0, beta=1.0),
                     webvision_mini=dict(alpha=50.0, beta=1.0)),
    terms_of=lambda P: [Term(P["alpha"], nce, {}), Term(P["beta"], mae, mae1)],
))

nce_agce = register(LossSpec(
    name="nce-agce", title="NCE + AGCE (ALFs)", aliases=("nceagce", "nce-and-agce"),
    formula="α NCE + β AGCE(a, q)", delta_formula="α δ_NCE - β (a + p)^(q-1) p (1 - p)",
    params=(ALPHA, Param("beta", 4.0, 0.0, math.inf, True, True, "AGCE weight"),
            _pos("a", 6.0, "AGCE offset a"), _pos("q", 1.5, "AGCE exponent q")),
    presets=_presets(ALFS, cifar10=dict(alpha=1.0, beta=4.0, a=6.0, q=1.5),
                     cifar100=dict(alpha=10.0, beta=0.1, a=1.8, q=3.0),
                     webvision_mini=dict(alpha=50.0, beta=0.1, a=2.5, q=3.0, _source=ANL)),
    terms_of=lambda P: [Term(P["alpha"], nce, {}), Term(P["beta"], agce, {"a": P["a"], "q": P["q"]})],
))


def _nfl_params(P):
    return {"gamma": P["gamma"], "detach": P["detach"]}


nf_mae = register(LossSpec(
    name="nf-mae", title="NFL + MAE (APL)", aliases=("nfl-mae", "nflmae", "nfl-and-mae"),
    formula="α NFL + β (1 - p)", delta_formula="α δ_NFL - β p (1 - p)",
    params=(GAMMA, ALPHA, BETA, DETACH),
    presets=_presets(APL, cifar10=dict(gamma=0.5, alpha=1.0, beta=1.0),
                     cifar100=dict(gamma=0.5, alpha=10.0, beta=1.0),
                     webvision_mini=dict(gamma=0.5, alpha=50.0, beta=1.0)),
    terms_of=lambda P: [Term(P["alpha"], nfl, _nfl_params(P)), Term(P["beta"], mae, mae1)],
))

nf_rce = register(LossSpec(
    name="nf-rce", title="NFL + RCE (APL)", aliases=("nfl-rce", "nflrce"),
    formula="α NFL + β RCE", delta_formula="α δ_NFL - β A p (1 - p)",
    params=(GAMMA, ALPHA, BETA, CLAMP, PMIN, DETACH),
    presets=_presets(APL, cifar10=dict(gamma=0.5, alpha=1.0, beta=1.0, pmin=1e-7),
                     cifar100=dict(gamma=0.5, alpha=10.0, beta=0.1, pmin=1e-7),
                     webvision_mini=dict(gamma=0.5, alpha=50.0, beta=0.1, pmin=1e-7)),
    terms_of=lambda P: [Term(P["alpha"], nfl, _nfl_params(P)), Term(P["beta"], rce, _rce_params(P))],
))
