"""The bottom of the loss package: what a loss is made of.

:class:`LossSpec` (with :class:`Param`, :class:`Preset`, :class:`SigmaKernel`,
:class:`Term`) and the small NumPy helpers its kernels share. ``specs.py`` builds
one spec per loss from these and declares it with :func:`register`; ``registry.py``
reads the declared specs and answers look-ups by name. Nothing here imports another
module of the package (``torch_impl`` is imported lazily by ``LossSpec.torch_loss``),
so data flows one way: base <- specs <- registry <- engine, torch modules, CLI.

A spec supplies only small kernels; averaging, solving, tables and JSON come
for free (the ``scipy.stats.rv_continuous`` pattern):

* a loss whose error depends on the correct-class probability ``p = σ_k``
  alone gives ``δ_k = offset + g(p)`` with ``g(0) = 0`` (:class:`SigmaKernel`).
  ``g`` must accept complex ``p``: the exact averaging evaluates it on a
  contour in the complex plane.
* any other loss gives ``full_delta(logits)``: δ_k for a batch of logit
  vectors whose correct class sits in column 0; optionally a reduction of the
  other ``K - 1`` logits to a few sufficient statistics (``mc_reduce`` and
  ``mc_delta``) so that Monte Carlo averages are cheap to re-evaluate. An ``mc_delta``
  with the attribute ``takes_dist = True`` is also given ``dist=`` (the logit
  distribution the draws come from, centred), for reductions that integrate part
  of a draw exactly (RCE's softmax clamp). An ``mc_slope`` gives dδ_k/dz_k per draw from
  the same statistics (else slopes are central differences of ``mc_delta``).
* a weighted sum of losses (SCE, NCE+AGCE, ...) gives ``terms(params)``; its
  kernels, torch loss and averages are those of its terms, summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import UsageError

Params = Mapping[str, float]


@dataclass(frozen=True)
class Param:
    """One hyperparameter: default value and valid range (open or closed ends)."""

    name: str
    default: float
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True
    doc: str = ""
    flag: bool = False  # 0/1 switch (e.g. NFL's detach); never solved for

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.flag:
            return value in (0.0, 1.0)
        lo_ok = value > self.low if self.low_open else value >= self.low
        hi_ok = value < self.high if self.high_open else value <= self.high
        return lo_ok and hi_ok

    def range_text(self) -> str:
        if self.flag:
            return "0 or 1"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        return f"{lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"


def _fmt(x: float) -> str:
    if x == math.inf:
        return "inf"
    if x == -math.inf:
        return "-inf"
    return f"{x:g}"


@dataclass(frozen=True)
class Preset:
    """Literature hyperparameters of a loss for one dataset, with their source."""

    dataset: str
    values: Mapping[str, float]
    source: str
    classes: int


@dataclass(frozen=True)
class SigmaKernel:
    """δ_k as a function of p = σ_k alone: ``δ_k = offset(params) + g(p, params)``.

    ``g(0) = 0`` exactly and ``g`` accepts complex arrays. ``decay(params)``
    is the distance from 0 of the right-most singularity of
    ``x -> g(1 / (1 + x))`` on the negative real axis (1 when the only one is
    the pole of p at x = -1); it sets how far the Laplace-space integral runs.
    """

    offset: Callable[[Params], float]
    g: Callable[[Any, Params], Any]
    decay: Callable[[Params], float] = lambda params: 1.0


@dataclass(frozen=True)
class Term:
    weight: float
    loss: "LossSpec"
    params: Mapping[str, float]


@dataclass(frozen=True)
class LossSpec:
    """Everything the tool knows about one loss."""

    name: str
    title: str
    formula: str  # L, in the document's notation (p = σ_k)
    delta_formula: str  # δ_k = ∂L/∂z_k
    params: tuple[Param, ...] = ()
    presets: Mapping[str, Preset] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    bounded: bool = True
    sigma: SigmaKernel | None = None
    full: Callable[[np.ndarray, Params], np.ndarray] | None = None
    mc_reduce: Callable[[np.ndarray], np.ndarray] | None = None
    mc_delta: Callable[[np.ndarray, np.ndarray, int, Params], np.ndarray] | None = None
    #: dδ_k/dz_k per draw from the same statistics (as ``mc_delta``); without it a slope is a
    #: central difference of ``mc_delta``, whose rounding blurs a flat peak
    mc_slope: Callable[[np.ndarray, np.ndarray, int, Params], np.ndarray] | None = None
    terms_of: Callable[[Params], Sequence[Term]] | None = None
    torch_name: str | None = None  # function in calibrate_cli.losses.torch_impl
    torch_factory: Callable[[Params], Callable] | None = None  # user losses
    notes: str = ""

    # ----------------------------------------------------------------- params
    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise UsageError(
            f"loss '{self.name}' has no parameter '{name}'"
            f" (its parameters: {', '.join(self.param_names) or 'none'})"
        )

    def defaults(self) -> dict[str, float]:
        return {p.name: float(p.default) for p in self.params}

    # --------------------------------------------------------------- kernels
    def terms(self, params: Params) -> list[Term]:
        """The loss as a weighted sum of losses (itself, weight 1, if simple)."""
        if self.terms_of is None:
            return [Term(1.0, self, dict(params))]
        out: list[Term] = []
        for t in self.terms_of(params):
            for sub in t.loss.terms(t.params):
                out.append(Term(t.weight * sub.weight, sub.loss, sub.params))
        return out

    @property
    def sigma_only(self) -> bool:
        """Whether δ_k depends on σ_k alone (then <δ_k> is computed exactly)."""
        if self.terms_of is not None:
            return all(t.loss.sigma is not None for t in self.terms(self.defaults()))
        return self.sigma is not None

    @property
    def reducible(self) -> bool:
        """Whether every term is exact or reduces each Monte Carlo draw to a few numbers
        (``mc_reduce``): then the draws are made once per K and any K up to 10^6 is cheap."""
        return all(t.loss.sigma is not None or t.loss.mc_reduce is not None
                   for t in self.terms(self.defaults()))

    def delta(self, logits: np.ndarray, params: Params) -> np.ndarray:
        """δ_k = ∂L/∂z_k for logit vectors ``logits[N, K]``, correct class in column 0."""
        logits = np.asarray(logits, dtype=float)
        total = np.zeros(logits.shape[0])
        for t in self.terms(params):
            total += t.weight * t.loss._delta_simple(logits, t.params)
        return total

    def _delta_simple(self, logits: np.ndarray, params: Params) -> np.ndarray:
        if self.sigma is not None:
            lse = _logsumexp(logits)
            p = np.exp(logits[:, 0] - lse)
            return self.sigma.offset(params) + self.sigma.g(p, params)
        if self.full is not None:
            return self.full(logits, params)
        raise NotImplementedError(self.name)

    def delta_of_p(self, p: Any, params: Params) -> Any:
        """δ_k(p) for a σ_k-only loss (sum over its terms)."""
        total = 0.0
        for t in self.terms(params):
            if t.loss.sigma is None:
                raise ValueError(f"{self.name}: δ_k depends on more than σ_k")
            total = total + t.weight * (t.loss.sigma.offset(t.params) + t.loss.sigma.g(p, t.params))
        return total

    # ------------------------------------------------------------------ torch
    def torch_loss(self, params: Params) -> Callable:
        """The loss in torch: ``fn(logits[N, K], target[N]) -> per-sample loss[N]``.

        Imports torch on first use only.
        """
        params = dict(params)
        if self.torch_factory is not None:
            return self.torch_factory(params)
        terms = self.terms(params)
        from . import torch_impl  # lazy: torch is heavy

        fns = [(t.weight, getattr(torch_impl, t.loss.torch_name), dict(t.params)) for t in terms]

        def loss(logits, target):
            out = None
            for w, fn, kw in fns:
                v = w * fn(logits, target, **kw)
                out = v if out is None else out + v
            return out

        loss.__name__ = self.name.replace("-", "_")
        return loss


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = np.max(a, axis=1, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=1, keepdims=True)))[:, 0]


def lse_and_sum(others: np.ndarray) -> np.ndarray:
    """Per row of logits [n, K-1]: ln Σ_j e^{z_j} and Σ_j z_j.

    These two numbers are all that NCE needs of the other logits, and all that the Monte
    Carlo control variates need; the Averager computes them in one pass over its draws.
    """
    return np.stack([_logsumexp(others), others.sum(axis=1)], axis=1)


# --------------------------------------------------------------------------
_DECLARED: list[LossSpec] = []


def register(spec: LossSpec) -> LossSpec:
    """Declare a loss (in ``specs.py``); the registry lists the declared specs in this order."""
    if any(s.name == spec.name for s in _DECLARED):
        raise ValueError(f"duplicate loss name {spec.name}")
    _DECLARED.append(spec)
    return spec


def declared() -> tuple[LossSpec, ...]:
    """Every declared spec, in declaration order."""
    return tuple(_DECLARED)


def pad_columns(x: np.ndarray, width: int, value: float) -> np.ndarray:
    """``x`` [rows, w] padded on the right to ``width`` columns with ``value`` (the reductions
    of chunks of draws are joined this way)."""
    return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)
