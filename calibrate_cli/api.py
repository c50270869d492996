r"""The Python API: the calibration commands as functions.

Notation: K classes, logits z_1..z_K, p = σ_k(z) = e^{z_k}/Σ_j e^{z_j} the softmax of
the correct class k, δ_k = ∂L/∂z_k the backpropagation error of a loss L. At
initialisation the other K − 1 logits are i.i.d. draws from a distribution p_z
(Gaussian N(μ, s²) by default, or measured), and

    <δ_k>(z) = E_{z_j ~ p_z, j≠k}[ δ_k(z_k = z, z_{j≠k}) ].

With a logit bias ε added to the correct-class logit during training, the network
sees <δ_k>(z + ε). Every function returns the dataclass of :mod:`calibrate_cli.engine.solve`
(or :class:`calibrate_cli.engine.average.Average`) with the value, its numerical error
estimate and the quantities it was derived from. ``method`` says how <δ_k> was averaged
("exact", "monte-carlo" or both); a loss whose δ_k depends on σ_k alone is exact unless its
quadrature cannot reach its accuracy for the given parameters (then ``note`` says why and
Monte Carlo is used). Inputs that cannot be computed honestly (a NaN or infinite average,
a logit std above 10) raise :class:`calibrate_cli.errors.UsageError`.

>>> from calibrate_cli import epsilon, q
>>> round(epsilon(1000).epsilon, 4)          # MAE, match criterion, Gaussian std 0.5
4.7342
>>> round(q(100, 1000).value, 4)             # GCE's q = 0.7 at K = 100, carried to K = 1000
0.4716
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .engine.average import DRAW_BUDGET, Average, Averager, default_samples
from .errors import ArgumentTypeError, UsageError
from .engine.logits import DEFAULT_LOGIT_STD, Gaussian, LogitDistribution
from .losses import get_loss, resolve_params
from .engine.solve import EpsilonResult, TransferResult, solve_epsilon, solve_transfer


def _setup(loss, preset, params, dist, logit_std, samples, seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be an integer >= 0, got {seed!r}")
    if dist is not None and not isinstance(dist, LogitDistribution):
        raise ArgumentTypeError(f"dist must be a logit distribution (Gaussian(mean, std), "
                                f"from_array(logits), load_logits(path)), got {dist!r}")
    if params is not None and not isinstance(params, Mapping):
        raise ArgumentTypeError(f"params must be a mapping name: value, got {params!r}")
    spec = get_loss(loss)
    values = resolve_params(spec, preset, params)
    d = dist if dist is not None else Gaussian(0.0, logit_std)
    n = samples if samples is not None else default_samples(spec)
    budget = DRAW_BUDGET if samples is None else None  # as the command line: fewer at huge K
    return spec, values, d, Averager(d, samples=n, seed=seed, draw_budget=budget)


def epsilon(classes: int, loss: str = "mae", *, criterion: str = "match",
            reference_classes: int = 10, target: float | None = None, branch: str = "below",
            preset: str | None = None, params: Mapping[str, float] | None = None,
            dist: LogitDistribution | None = None, logit_std: float = DEFAULT_LOGIT_STD,
            samples: int | None = None, seed: int = 0) -> EpsilonResult:
    r"""The logit bias ε at K = ``classes``.

    match:  <δ_k>_K(μ + ε) = <δ_k>_{K_ref}(μ), the root below the peak of <δ_k>(z);
    peak:   d<δ_k>_K/dz (μ + ε) = 0;
    target: <δ_k>_K(μ + ε) = ``target``.
    """
    spec, values, d, av = _setup(loss, preset, params, dist, logit_std, samples, seed)
    return solve_epsilon(spec, values, classes, d, criterion=criterion,
                         reference_classes=reference_classes, target=target, branch=branch,
                         averager=av)


def transfer(loss: str, param: str, k_from: int, k_to: int, *, preset: str | None = None,
             params: Mapping[str, float] | None = None, at: float | None = None,
             dist: LogitDistribution | None = None, logit_std: float = DEFAULT_LOGIT_STD,
             samples: int | None = None, seed: int = 0) -> TransferResult:
    r"""θ at K_to with <δ_k>_{K_to, θ}(z*) = <δ_k>_{K_from, θ_from}(z*), z* = μ or ``at``.

    θ_from is the parameter's value from ``preset`` / ``params`` / its default.
    """
    spec, values, d, av = _setup(loss, preset, params, dist, logit_std, samples, seed)
    return solve_transfer(spec, values, param, k_from, k_to, d, at=at, averager=av)


def q(k_from: int, k_to: int, q_from: float = 0.7, *, loss: str = "gce",
      at: float | None = None, dist: LogitDistribution | None = None,
      logit_std: float = DEFAULT_LOGIT_STD) -> TransferResult:
    r"""GCE's q at K_to: <δ_k>_{K_to, q}(μ) = <δ_k>_{K_from, q_from}(μ)."""
    return transfer(loss, "q", k_from, k_to, params={"q": q_from}, at=at, dist=dist,
                    logit_std=logit_std)


def mean_delta(z, classes: int, loss: str = "mae", *, preset: str | None = None,
               params: Mapping[str, float] | None = None, dist: LogitDistribution | None = None,
               logit_std: float = DEFAULT_LOGIT_STD, samples: int | None = None,
               seed: int = 0) -> Average:
    r"""<δ_k>(z) at the logit value(s) ``z`` (exact for σ_k-only losses, else Monte Carlo)."""
    spec, values, d, av = _setup(loss, preset, params, dist, logit_std, samples, seed)
    try:
        zs = np.asarray(z, dtype=float)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"z must be a number or an array of numbers, got {z!r}") from None
    if not np.all(np.isfinite(zs)):
        raise UsageError(f"z must be finite logit values, got {z!r}")
    return av.mean_delta(spec, values, classes, zs)
