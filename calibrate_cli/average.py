r"""The average error <δ_k>(z_k) over the other K - 1 logits.

.. math::

    \langle\delta_k\rangle(z_k) = \int \prod_{j\ne k} dz_j\, p_z(z_j)\;
        \delta_k(z_k, \{z_j\})

A logit bias ε is a shift: <δ_k>(z; ε) = <δ_k>(z + ε; 0).

Exact path (δ_k depends on p = σ_k alone)
-----------------------------------------
Write δ_k = offset + g(p) with g(0) = 0, and p = 1/(1 + cS) with
c = e^{-(z_k - μ)}, S = Σ_{j≠k} Y_j, Y_j = e^{z_j - μ} i.i.d. The kernel
H(x) = g(1/(1+x)) is analytic off the negative real axis and vanishes at
infinity, so it is a Laplace transform, H(x) = ∫_0^∞ ρ(u) e^{-ux} du, and
H(0) = g(1) = ∫ρ. Because S is a sum of i.i.d. terms,
E[e^{-ucS}] = φ(cu)^{K-1} with φ(t) = E[e^{-tY}], hence

.. math::

    \langle\delta_k\rangle = \mathrm{offset} + g(1)
        - \int_0^\infty \rho(u)\,\bigl[1 - \varphi(cu)^{K-1}\bigr]\,du .

One one-dimensional integral whose cost does not depend on K (no array or loop
of length K). ρ(u) comes from H by fixed-Talbot inversion (Abate & Valkó 2004);
1 - φ^{K-1} = -expm1((K-1)·log1p(-ψ)) with ψ(t) = E[-expm1(-tY)] keeps full
relative precision when (K-1)ψ is tiny or huge. The u-integral is the
trapezoidal rule in v = ln u (exponentially convergent for this analytic
integrand); the error estimate is the change when the step is doubled plus the
change when the Talbot order drops from 24 to 18.

The slope d<δ_k>/dz_k (for the ``peak`` criterion) follows by differentiating
under the integral: -∫ρ(u)·(K-1)φ^{K-2}(cu)·E[Y e^{-cuY}]·(-cu) du.

Monte Carlo path (every σ_j matters: NCE, NFL, biTemp, a user's loss)
---------------------------------------------------------------------
Whole logit vectors with common random numbers (the same seeded draws for every
z_k and every parameter value, so a root finder sees a smooth function), in
chunks of bounded memory; the standard error is reported. Exact reductions are
used where a loss allows them: the σ_k-only terms of a weighted sum (the AGCE
in NCE+AGCE) are integrated exactly, each term is evaluated once and re-weighted
(α, β cost nothing), and NCE reduces every draw to two sufficient statistics
(log Σ e^{z_j}, Σ z_j) so that any z_k costs O(samples), not O(samples·K); NFL and biTemp
reduce it to power sums or moments with a rigorous truncation bound
(losses/nfl_series.py, losses/bitemp_series.py) and fall back to whole vectors where the bound
fails. A loss's ``mc_reduce`` runs once per K over the draws (several in one pass, and one may
``provide`` another's statistics); its ``mc_delta`` takes z_k as a column and returns δ_k per
draw, or None. With ``device`` the draws and reductions run in torch (mc_device.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import UsageError
from .logits import LogitDistribution
from .losses.registry import LossSpec, Term, lse_and_sum

TALBOT_ORDER = 24
V_STEP = 0.125
#: Monte Carlo logit vectors by default. NCE and its combinations reduce each vector to two
#: numbers once per K, so 4096 cost little; losses that need whole vectors at every evaluation
#: (NFL, biTemp, user losses) cost K × samples per evaluation, and 1024 already give standard
#: errors of ε near 1e-4 (see README, speed).
DEFAULT_SAMPLES = 4096
DEFAULT_SAMPLES_FULL = 1024
#: Default draw budget per K (logits): 4096 vectors up to K ≈ 16 000, then fewer, never below
#: MIN_SAMPLES (K = 10^6: 256 vectors, a few seconds).
DRAW_BUDGET = 1 << 26
MIN_SAMPLES = 256
MAX_DRAWS = 2_000_000_000
SERIES_T = 1e-3  # below t·max(Y) the Laplace transform of Y is summed as a series
CHUNK_ELEMS = 1 << 21  # logits per Monte Carlo chunk (16 MiB of float64)


@dataclass(frozen=True)
class Average:
    """<δ_k> at each requested z: ``value`` and ``error`` arrays, and how it was computed.

    ``error`` is the numerical error estimate (exact path) combined with the
    Monte Carlo standard error (Monte Carlo path) in quadrature.
    """

    value: np.ndarray
    error: np.ndarray
    method: str  # "exact", "monte-carlo" or "exact+monte-carlo"

    def __getitem__(self, i):
        return Average(self.value[i], self.error[i], self.method)


# ----------------------------------------------------------------- Talbot
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


def _u_grid(H, decay: float, u_lo: float) -> np.ndarray:
    """Nodes u = e^v (v on multiples of V_STEP) covering where ρ(u)·u matters.

    Upper end: ρ decays like e^{-decay·u}. Lower end: below ``u_lo`` the factor
    1 - φ^n is negligible; the other form needs ρ(u)·u itself to be negligible,
    so go down (to u = e^{-690} at most) until |ρ u| < 1e-18 of its maximum.
    """
    v_hi = math.ceil(math.log(45.0 / decay))
    probe = np.arange(v_hi, -690.0, -8.0)
    mag = np.abs(laplace_inverse(H, np.exp(probe)) * np.exp(probe))
    small = np.nonzero(mag < 1e-18 * mag.max())[0]
    small = small[probe[small] < -8.0]
    v_rho = probe[small[0]] if len(small) else probe[-1]
    v_lo = 8.0 * math.floor(min(math.log(u_lo), v_rho) / 8.0)
    return np.exp(np.arange(v_lo, v_hi + V_STEP / 2, V_STEP))


def _trapezoid(rho, rho_lo, weight):
    """∫ρ(u)·weight(u) dv with its error estimate (step doubling + Talbot order)."""
    f = rho * weight
    fine = f.sum() * V_STEP
    coarse = f[::2].sum() * 2 * V_STEP
    talbot = abs(((rho - rho_lo) * weight).sum()) * V_STEP
    return fine, abs(fine - coarse) + talbot


# --------------------------------------------------------------- the engine
class Averager:
    """Computes <δ_k>(z) for one logit distribution.

    Parameters
    ----------
    dist:
        the logit distribution p_z of the other K - 1 logits.
    samples, seed:
        Monte Carlo settings (only losses whose δ_k depends on every σ_j use them).
    draw_budget:
        if given, at most about this many logits are drawn per K: ``samples`` vectors while
        they fit, fewer (never below ``min_samples``) at large K (see :meth:`samples_at`).
    reduce:
        False evaluates whole logit vectors at every z_k even for losses that reduce a draw to
        a few numbers (the reference the reductions are measured against).
    device:
        None: NumPy on the CPU. A torch device ("cuda", "cuda:1", "cpu") draws, reduces and
        evaluates whole vectors with torch there (calibrate_cli/mc_device.py); its draws
        differ from NumPy's (another generator), within the Monte Carlo error.
    """

    def __init__(self, dist: LogitDistribution, *, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                 draw_budget: int | None = None, min_samples: int = MIN_SAMPLES,
                 reduce: bool = True, device: str | None = None):
        if samples < 16:
            raise UsageError(f"--samples must be at least 16, got {samples}")
        self.dist = dist
        self.samples = int(samples)
        self.seed = int(seed)
        self.draw_budget = draw_budget
        self.min_samples = int(min_samples)
        self.reduce = bool(reduce)
        self.device = device
        self._torch = None
        if device is not None:
            from .mc_device import TorchBackend  # imports torch

            self._torch = TorchBackend(device)
        self._x, self._w = dist.quadrature()
        self._m = float(np.sum(self._w * np.exp(self._x)))
        self._mc_cache: dict = {}
        self._stats_cache: dict = {}
        self._rho_cache: dict = {}
        self._cv_cache: dict = {}
        self._moments: list[float] | None = None

    # ................................................................ public
    def mean_delta(self, loss: LossSpec, params: Mapping[str, float], classes: int, z) -> Average:
        """<δ_k>(z) at logit value(s) z (absolute, i.e. including the distribution's mean)."""
        return self._evaluate(loss, params, classes, z, slope=False)

    def slope(self, loss: LossSpec, params: Mapping[str, float], classes: int, z) -> Average:
        """d<δ_k>/dz_k at z."""
        return self._evaluate(loss, params, classes, z, slope=True)

    def exact_possible(self, loss: LossSpec, params: Mapping[str, float]) -> bool:
        return all(t.loss.sigma is not None for t in loss.terms(params))

    # .............................................................. internals
    def _evaluate(self, loss, params, classes, z, slope):
        classes = check_classes(classes)
        z = np.atleast_1d(np.asarray(z, dtype=float))
        terms = loss.terms(params)
        exact = [t for t in terms if t.loss.sigma is not None]
        mc = [t for t in terms if t.loss.sigma is None]
        value = np.zeros_like(z)
        err2 = np.zeros_like(z)
        if exact:
            v, e = self._exact(exact, classes, z - self.dist.mean, slope)
            value += v
            err2 += e * e
        if mc:
            v, e = self._monte_carlo(mc, classes, z - self.dist.mean, slope)
            value += v
            err2 += e * e
        method = "exact" if not mc else ("monte-carlo" if not exact else "exact+monte-carlo")
        return Average(value, np.sqrt(err2), method)

    def _exact(self, terms: list[Term], classes: int, z: np.ndarray, slope: bool):
        offset = sum(t.weight * t.loss.sigma.offset(t.params) for t in terms)

        def H(x):
            p = 1.0 / (1.0 + x)
            return sum(t.weight * t.loss.sigma.g(p, t.params) for t in terms)

        decay = min(t.loss.sigma.decay(t.params) for t in terms)
        g1 = float(np.real(H(np.array([0.0 + 0j]))[0]))
        n = classes - 1
        u_lo = 1e-18 / (n * math.exp(-float(z.min())) * self._m)
        key = tuple((t.loss.name, t.weight, tuple(sorted(t.params.items()))) for t in terms)
        cached = self._rho_cache.get(key)
        if cached is None or cached[0][0] > u_lo:
            u = _u_grid(H, decay, u_lo)
            cached = (u, laplace_inverse(H, u), laplace_inverse(H, u, order=TALBOT_ORDER - 6))
            if len(self._rho_cache) > 256:
                self._rho_cache.clear()
            self._rho_cache[key] = cached
        u, rho, rho_lo = cached
        y = np.exp(self._x)
        out = np.empty_like(z)
        err = np.empty_like(z)
        for i, zk in enumerate(z):
            t = math.exp(-zk) * u  # c·u
            psi, ey = self._laplace(t, y, slope)  # ψ(t) = E[1 - e^{-tY}], E[Y e^{-tY}]
            with np.errstate(divide="ignore"):
                log_phi = np.log1p(-psi)
            if slope:
                with np.errstate(over="ignore", invalid="ignore"):
                    weight = n * np.exp((n - 1) * log_phi) * ey * t
                weight = np.where(np.isfinite(weight), weight, 0.0)
                out[i], err[i] = _trapezoid(rho, rho_lo, weight * u)
                continue
            # Two equal forms; take the better conditioned one for this z:
            #   A = offset + ∫ρ φ^n du           (good when p is mostly small)
            #   B = offset + g(1) - ∫ρ (1 - φ^n) du   (good when p is mostly near 1)
            phi_n = np.exp(n * log_phi)
            a, a_err = _trapezoid(rho, rho_lo, phi_n * u)
            b, b_err = _trapezoid(rho, rho_lo, -np.expm1(n * log_phi) * u)
            cond_a = abs(offset) + np.abs(rho * phi_n * u).sum() * V_STEP
            cond_b = abs(offset + g1) + np.abs(rho * np.expm1(n * log_phi) * u).sum() * V_STEP
            if cond_a <= cond_b:
                out[i], err[i] = offset + a, a_err + 1e-15 * cond_a
            else:
                out[i], err[i] = offset + g1 - b, b_err + 1e-15 * cond_b
        return out, err

    # ............................................................ Monte Carlo
    def _laplace(self, t: np.ndarray, y: np.ndarray, slope: bool):
        """ψ(t) = E[1 - e^{-tY}] and (if ``slope``) E[Y e^{-tY}], Y = e^{z - mean}.

        Where t·max(Y) < SERIES_T the Taylor series in t (five moments of Y) is
        used: its remainder is below (t·max Y)^6/720 ≈ 2e-18 relative, and it
        spares the dense [len(t), atoms] evaluation on most of the u grid.
        """
        if self._moments is None:
            self._ymax = float(y.max())
            self._moments = [float(self._w @ y ** j) for j in range(1, 7)]
        m = self._moments
        small = t * self._ymax < SERIES_T
        ts = t[small]
        psi = np.empty_like(t)
        psi[small] = ts * (m[0] - ts * (m[1] / 2 - ts * (m[2] / 6 - ts * (m[3] / 24
                                                                          - ts * m[4] / 120))))
        ty = np.outer(t[~small], y)
        psi[~small] = np.minimum(-(np.expm1(-ty) @ self._w), 1.0)  # weights sum to 1 ± ulp
        if not slope:
            return psi, None
        ey = np.empty_like(t)
        ey[small] = m[0] - ts * (m[1] - ts * (m[2] / 2 - ts * (m[3] / 6 - ts * m[4] / 24)))
        ey[~small] = (np.exp(-ty) * y) @ self._w
        return psi, ey

    def samples_at(self, classes: int) -> int:
        """Monte Carlo vectors drawn at K: ``samples``, or with a draw budget
        min(samples, max(min_samples, budget // (K - 1))). The standard error of <δ_k> near
        its peak falls faster than 1/√K (the control variates absorb the fluctuation of the
        sums over K - 1 logits), so fewer vectors at large K keep it far below that at small K."""
        if self.draw_budget is None:
            return self.samples
        return min(self.samples, max(self.min_samples, self.draw_budget // max(classes - 1, 1)))

    def _chunks(self, classes: int):
        """Deterministic chunks of the other K - 1 logits (centred), common to all calls."""
        return self._chunks_of(self.dist, classes)

    def _chunks_of(self, dist, classes: int):
        n = classes - 1
        samples = self.samples_at(classes)
        total = samples * n
        if total > MAX_DRAWS:
            raise UsageError(
                f"Monte Carlo at K = {classes} with {samples} samples needs {total:.2g} "
                f"draws (limit {MAX_DRAWS:.0e}); use --samples {max(1, MAX_DRAWS // n)} or fewer")
        rows = max(1, CHUNK_ELEMS // max(n, 1)) if self._torch is None else \
            self._torch.rows_per_chunk(n)
        for i, start in enumerate(range(0, samples, rows)):
            m = min(rows, samples - start)
            if self._torch is not None:
                yield self._torch.sample(dist, (self.seed, classes, i), (m, n))
                continue
            rng = np.random.default_rng([self.seed, classes, i])
            yield dist.sample(rng, (m, n))

    def _per_sample(self, term: Term, classes: int, zs, slope: bool) -> np.ndarray:
        """δ_k (or its slope) per draw at every z of ``zs``: [len(zs), samples], cached per z."""
        name = (term.loss.name, tuple(sorted(term.params.items())), classes, slope)
        zs = [float(z) for z in np.atleast_1d(zs)]
        missing = [z for z in dict.fromkeys(zs) if (name, z) not in self._mc_cache]
        if missing:
            zm = np.array(missing)
            if slope:
                h = 1e-4
                vals = (self._per_sample(term, classes, zm + h, False)
                        - self._per_sample(term, classes, zm - h, False)) / (2 * h)
            else:
                vals = self._delta_draws(term, classes, zm)
            if len(self._mc_cache) + len(missing) > 4096:
                self._mc_cache.clear()
            for z, v in zip(missing, vals):
                self._mc_cache[(name, z)] = v
        return np.stack([self._mc_cache[(name, z)] for z in zs])

    def _delta_draws(self, term: Term, classes: int, zs: np.ndarray) -> np.ndarray:
        """δ_k per draw at each z of ``zs`` ([len(zs), samples]): from the reduced draws where the
        loss reduces them (``mc_delta`` takes z as a column [len(zs), 1] and returns None where
        its error bound fails), else from whole logit vectors."""
        if term.loss.mc_reduce is not None and self.reduce:
            out = term.loss.mc_delta(zs[:, None], self._reduced(classes, reducer_of(term)),
                                     classes, term.params)
            if out is not None:
                return np.broadcast_to(out, (len(zs), np.shape(out)[-1]))
        rows = []
        for zk in zs:
            parts = []
            for c in self._chunks(classes):
                if self._torch is not None:
                    parts.append(self._torch.full_delta(term, float(zk), c))
                    continue
                logits = np.empty((c.shape[0], classes))
                logits[:, 0] = zk
                logits[:, 1:] = c
                parts.append(term.loss.full(logits, term.params))
            rows.append(np.concatenate(parts))
        return np.stack(rows)

    def _reduce_pass(self, classes: int, reducers) -> None:
        """Apply every reducer not yet cached to the common draws, in one pass over them
        (drawing K - 1 logits per sample costs more than any reduction)."""
        work = self._pass_work(classes, reducers)
        if work is None:
            return
        parts: dict = {f: [] for f in work[0]}
        for c in self._chunks(classes):
            self._apply(work[0], c, parts)
        self._pass_store(classes, work, parts)

    def _pass_work(self, classes: int, reducers):
        """(reducers to run, {reducer: (runner, extract)} derived from others), or None.

        A reducer may also deliver another's statistics (``provides``: {reducer: extract}),
        e.g. NFL's pass yields ln Σ e^z and Σ z: then that one costs no pass of its own."""
        todo = [f for f in dict.fromkeys(reducers) if (f, classes) not in self._stats_cache]
        if not todo:
            return None
        derived = {}
        for f in todo:
            for g, extract in getattr(f, "provides", {}).items():
                if g in todo and g not in derived and not getattr(g, "provides", None):
                    derived[g] = (f, extract)
        return [f for f in todo if f not in derived], derived

    def _apply(self, run, chunk, parts) -> None:
        for f in run:
            parts[f].append(f(chunk) if self._torch is None else self._torch.reduce(f, chunk))

    def _pass_store(self, classes: int, work, parts) -> None:
        run, derived = work
        for f in run:  # a reducer may return its own type, joined by its ``concat``
            self._stats_cache[(f, classes)] = getattr(f, "concat", np.concatenate)(parts[f])
        for g, (f, extract) in derived.items():
            self._stats_cache[(g, classes)] = extract(self._stats_cache[(f, classes)])

    def drop(self, classes: int) -> None:
        """Forget the reduced draws and per-draw values at K (bounded memory over many K)."""
        for key in [k for k in self._stats_cache if k[1] == classes]:
            del self._stats_cache[key]
        self._cv_cache.pop(classes, None)
        self._cv_cache.pop((classes, "pinv"), None)
        for key in [k for k in self._mc_cache if k[0][2] == classes]:
            del self._mc_cache[key]

    def _reduced(self, classes: int, reducer) -> np.ndarray:
        """``reducer(draws)`` per sample, cached per (reducer, K)."""
        self._reduce_pass(classes, [reducer])
        return self._stats_cache[(reducer, classes)]

    def _control_variates(self, classes: int) -> np.ndarray:
        """Per draw: Σ_j e^{z_j}/(n m) - 1 and Σ_j z_j / n, whose means are exactly 0."""
        if classes not in self._cv_cache:
            n = classes - 1
            m = self.dist.exp_moment_exact()
            s = self._reduced(classes, lse_and_sum)
            self._cv_cache[classes] = np.stack([np.exp(s[:, 0]) / (n * m) - 1.0, s[:, 1] / n], axis=1)
        return self._cv_cache[classes]

    def _monte_carlo(self, terms: list[Term], classes: int, z: np.ndarray, slope: bool):
        """Sample mean with control variates: δ_i - β·X_i, β fitted by least squares."""
        self._reduce_pass(classes, [lse_and_sum] + [reducer_of(t) for t in terms
                                                    if t.loss.mc_reduce is not None and self.reduce])
        X = self._control_variates(classes)
        if (classes, "pinv") not in self._cv_cache:  # least squares of any δ on X: pinv once per K
            self._cv_cache[(classes, "pinv")] = np.linalg.pinv(X - X.mean(axis=0))
        total = sum(t.weight * self._per_sample(t, classes, z, slope) for t in terms)  # [z, draw]
        beta = self._cv_cache[(classes, "pinv")] @ (total - total.mean(axis=1, keepdims=True)).T
        adjusted = total - (X @ beta).T
        se = adjusted.std(axis=1, ddof=1 + X.shape[1]) / math.sqrt(total.shape[1])
        return adjusted.mean(axis=1), se


def reducer_of(term: Term):
    """The reducer of a Monte Carlo term: its loss's ``mc_reduce``, specialised to the term's
    parameters where the reducer offers that (``for_params``: e.g. how many moments to store)."""
    red = term.loss.mc_reduce
    return red.for_params(term.params) if hasattr(red, "for_params") else red


def default_samples(*specs: LossSpec) -> int:
    """The default number of Monte Carlo vectors for these losses (see DEFAULT_SAMPLES)."""
    return DEFAULT_SAMPLES if all(s.reducible for s in specs) else DEFAULT_SAMPLES_FULL


def check_classes(classes) -> int:
    """K must be an integer >= 2 (and at most 10^9)."""
    if isinstance(classes, bool):
        raise UsageError(f"--classes must be an integer >= 2, got {classes}")
    try:
        k = int(classes)
    except (TypeError, ValueError):
        raise UsageError(f"--classes must be an integer >= 2, got {classes!r}") from None
    if k != classes or k < 2 or k > 10**9:
        raise UsageError(f"--classes must be an integer in [2, 10^9], got {classes}")
    return k


def mean_delta(loss, params, classes, z, dist, **kwargs) -> Average:
    """Functional shortcut: ``Averager(dist, **kwargs).mean_delta(loss, params, classes, z)``."""
    return Averager(dist, **kwargs).mean_delta(loss, params, classes, z)
