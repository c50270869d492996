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
integrand).

The error bound: what is computed is exactly E[H_rep(cS)], H_rep(x) = Σ_i ρ_i u_i
Δv e^{-u_i x} the discrete representation (or, in the second form, E[H_rep(cS) -
H_rep(0) + H(0)]), so sup_x |H_rep(x) - H(x)| over the x that c·S can take bounds
every error of the representation at once (Talbot, step, range of the u grid).
It is measured per kernel (``laplace.check_representation``) and reported; where it
exceeds EXACT_TOL of max|δ_k| (AEL at small a: its essential singularity at
x = -1 makes the Talbot contour blow up; AGCE/AUL at large q) the kernel is
averaged by Monte Carlo of p = 1/(1 + e^{ln S - z}) instead, and ``Average.note``
says so. Of the two forms the one with the smaller bound is used (GCE at small q:
ρ(u)·u ~ u^q has mass below any u grid, which only the second form tolerates).

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
fails. RCE's softmax clamp keeps one number per draw, ln Σ e^{z_j} over all others but one,
and integrates that one logit exactly against the distribution's partial exponential moments
(losses/rce_series.py). A loss's ``mc_reduce`` runs once per K over the draws (several in one
pass, and one may ``provide`` another's statistics); its ``mc_delta`` takes z_k as a column and
returns δ_k per draw, or None (one marked ``takes_dist`` also gets ``dist=``, the distribution
the draws come from). With ``device`` the draws and reductions run in torch (mc_device.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import UsageError, option
from .laplace import (V_STEP, LaplaceTransform, Representation, check_representation,
                      laplace_inverse, u_grid)
from .logits import LogitDistribution
from ..losses.registry import LossSpec, Term, lse_and_sum

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
CHUNK_ELEMS = 1 << 21  # logits per Monte Carlo chunk (16 MiB of float64)
Z_LIMIT = 500.0  # |z - mean| beyond this: p or 1 - p underflows, δ_k is not representable
#: The exact path is used when its representation error bound is below EXACT_TOL times the
#: kernel's scale (max |δ_k|); otherwise that term is averaged by Monte Carlo, and the
#: result says so (``Average.note``).
EXACT_TOL = 1e-8
RHO_CACHE = 256  # Laplace representations kept per Averager (least recently used dropped)


class NonFiniteAverage(UsageError):
    """<δ_k> came out NaN or infinite (δ_k overflows for these inputs): never a silent number."""


@dataclass(frozen=True)
class Average:
    """<δ_k> at each requested z: ``value`` and ``error`` arrays, and how it was computed.

    ``error`` is the numerical error estimate (exact path) combined with the
    Monte Carlo standard error (Monte Carlo path) in quadrature.
    """

    value: np.ndarray
    error: np.ndarray
    method: str  # "exact", "monte-carlo" or "exact+monte-carlo"
    note: str = ""  # why a σ_k-only loss was averaged by Monte Carlo, if it was

    def __getitem__(self, i):
        return Average(self.value[i], self.error[i], self.method, self.note)


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
        evaluates whole vectors with torch there (calibrate_cli/engine/mc_device.py); its draws
        differ from NumPy's (another generator), within the Monte Carlo error.
    """

    #: Progress hook: called with the number of logits in each Monte Carlo chunk once it has
    #: been used (the command line counts them against its up-front cost estimate).
    on_draws = None

    def __init__(self, dist: LogitDistribution, *, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                 draw_budget: int | None = None, min_samples: int = MIN_SAMPLES,
                 reduce: bool = True, device: str | None = None):
        if (isinstance(samples, bool) or not isinstance(samples, (int, np.integer))
                or samples < 16):
            raise UsageError(f"{option('--samples')} must be an integer >= 16, got {samples!r}")
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
        self._lt = LaplaceTransform(*dist.quadrature())
        self._x_lo, self._x_hi = self._lt.x_lo, self._lt.x_hi
        self._log_m = self._lt.log_m  # ln E[e^{z - mean}]
        self._m = math.exp(self._log_m)
        self._mc_cache: dict = {}
        self._stats_cache: dict = {}
        self._rho_cache: dict = {}
        self._cv_cache: dict = {}

    # ................................................................ public
    def mean_delta(self, loss: LossSpec, params: Mapping[str, float], classes: int, z) -> Average:
        """<δ_k>(z) at logit value(s) z (absolute, i.e. including the distribution's mean)."""
        return self._evaluate(loss, params, classes, z, slope=False)

    def slope(self, loss: LossSpec, params: Mapping[str, float], classes: int, z) -> Average:
        """d<δ_k>/dz_k at z."""
        return self._evaluate(loss, params, classes, z, slope=True)

    def exact_possible(self, loss: LossSpec, params: Mapping[str, float]) -> bool:
        return all(t.loss.sigma is not None for t in loss.terms(params))

    def log_sum_range(self, classes: int, alpha: float = 1e-12) -> tuple[float, float]:
        """(lo, hi) with P(ln S < lo) <= alpha and P(ln S > hi) <= alpha, S = Σ_{j≠k} e^{z_j - mean}
        (see :meth:`LaplaceTransform.log_sum_range`): where <δ_k>(z) changes, z is near ln S."""
        return self._lt.log_sum_range(check_classes(classes) - 1, alpha)

    # .............................................................. internals
    def _evaluate(self, loss, params, classes, z, slope):
        classes = check_classes(classes)
        z = np.atleast_1d(np.asarray(z, dtype=float))
        far = ~(np.abs(z - self.dist.mean) <= Z_LIMIT)
        if far.any():
            raise UsageError(
                f"z = {z[far][0]:.6g} lies beyond ±{Z_LIMIT:g} of the logit mean, where p = σ_k "
                "or 1 - p underflows in float64 and δ_k is not representable; <δ_k> is not "
                "computed there")
        terms = loss.terms(params)
        exact = [t for t in terms if t.loss.sigma is not None]
        mc = [t for t in terms if t.loss.sigma is None]
        value = np.zeros_like(z)
        err = np.zeros_like(z)
        note = ""
        if exact:
            v, e = self._exact(exact, classes, z - self.dist.mean, slope)
            if v is None:  # the quadrature cannot reach EXACT_TOL: Monte Carlo, and say so
                note = (f"{loss.name} ({_describe(params)}): the exact quadrature cannot reach its "
                        f"accuracy here (error bound {e:.1g} × max|δ_k|, limit {EXACT_TOL:g}), so "
                        "<δ_k> is averaged by Monte Carlo and its standard error is in the error")
                mc, exact = exact + mc, []
            else:
                value += v
                err = np.hypot(err, e)
        if mc:
            try:
                with np.errstate(all="ignore"):  # non-finite results are refused below
                    v, e = self._monte_carlo(mc, classes, z - self.dist.mean, slope)
            except UsageError as exc:
                raise UsageError(f"{note}; {exc}" if note else str(exc)) from None
            value += v
            err = np.hypot(err, e)
        method = "exact" if not mc else ("monte-carlo" if not exact else "exact+monte-carlo")
        bad = ~np.isfinite(value)
        if bad.any():
            raise NonFiniteAverage(
                f"<δ_k> of {loss.name} ({_describe(params)}) at K = {classes} is not finite at "
                f"z = {z[bad][0]:.6g} ({method}): δ_k overflows or is NaN for these inputs")
        return Average(value, err, method, note)

    def _exact(self, terms: list[Term], classes: int, z: np.ndarray, slope: bool):
        """(value, error) by the Laplace representation, or None where it cannot reach
        EXACT_TOL (then the caller averages these terms by Monte Carlo)."""
        offset = sum(t.weight * t.loss.sigma.offset(t.params) for t in terms)

        def H(x):
            p = 1.0 / (1.0 + x)
            return sum(t.weight * t.loss.sigma.g(p, t.params) for t in terms)

        n = classes - 1
        z_lo, z_hi = float(z.min()), float(z.max())
        # ln x = ln(c·S) with S = Σ Y_j between n·min(Y) and n·max(Y)
        lx_lo = min(max(math.log(n) + self._x_lo - z_hi, -60.0), 1500.0)
        lx_hi = max(math.log(n) + self._x_hi - z_lo, lx_lo)
        log_u_lo = math.log(1e-18) - math.log(n) - self._log_m + z_lo
        key = tuple((t.loss.name, t.weight, tuple(sorted(t.params.items()))) for t in terms)
        rep = self._rho_cache.pop(key, None)  # re-inserted below: the most recent last
        if rep is None or rep.v0 > max(log_u_lo, -700.0) + 1e-9:
            with np.errstate(all="ignore"):
                decay = min(t.loss.sigma.decay(t.params) for t in terms)
                u = u_grid(H, decay, log_u_lo)
                rep = Representation(u, laplace_inverse(H, u))
                rep.g1 = float(np.real(H(np.array([0.0 + 0j]))[0]))
        if len(self._rho_cache) >= RHO_CACHE:  # least recently used out (a transfer's scan
            del self._rho_cache[next(iter(self._rho_cache))]  # values stay across its rows)
        self._rho_cache[key] = rep
        if lx_lo < rep.log_x_lo or lx_hi > rep.log_x_hi:
            check_representation(rep, H, offset, min(lx_lo, rep.log_x_lo), max(lx_hi, rep.log_x_hi))
        tol = EXACT_TOL * rep.scale
        if not (min(rep.err_a, rep.err_b) <= tol and (not slope or rep.err_slope <= tol)):
            return None, min(rep.err_a, rep.err_b) / max(rep.scale, 1e-300)
        g1, u, ru, abs_ru, v0 = rep.g1, rep.u, rep.ru, rep.abs_ru, rep.v0
        # ψ(t) = E[1 - e^{-tY}] and E[tY e^{-tY}] at every ln t = ln u - z, from the lattice cache
        # of ψ (kept per z, shared by every kernel and K). z on a grid whose step is a multiple
        # of V_STEP (the solver's scan): every ln t lies on the lattice of its largest z, so all
        # of them come from one stretch of it
        nu = len(u)
        shift = (z.max() - z) / V_STEP
        if len(z) > 2 and np.all(np.abs(shift - np.round(shift)) < 1e-9):
            shift = np.round(shift).astype(int)
            psi_l, ty_l = self._lt.psi_on_lattice(float(z.max()), v0, nu + shift.max(), slope)
            rows = shift[:, None] + np.arange(nu)[None, :]
            psi, ty_e = psi_l[rows], (None if ty_l is None else ty_l[rows])
        else:
            parts = [self._lt.psi_on_lattice(float(zi), v0, nu, slope) for zi in z]
            psi = np.stack([p for p, _ in parts])
            ty_e = np.stack([t for _, t in parts]) if slope else None
        with np.errstate(divide="ignore"):
            log_phi = np.log1p(-psi)
        if slope:
            with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                weight = n * np.exp((n - 1) * log_phi) * ty_e
            weight = np.where(np.isfinite(weight), weight, 0.0)
            return weight @ ru, rep.err_slope + 1e-15 * (np.abs(weight) @ abs_ru)
        # Two equal forms; take the one with the smaller error bound at each z:
        #   A = offset + ∫ρ φ^n du           (good when p is mostly small)
        #   B = offset + g(1) - ∫ρ (1 - φ^n) du   (good when p is mostly near 1)
        phi_n = np.exp(n * log_phi)
        one_minus = -np.expm1(n * log_phi)
        err_a = rep.err_a + 1e-15 * (abs(offset) + phi_n @ abs_ru)
        err_b = rep.err_b + 1e-15 * (abs(offset + g1) + one_minus @ abs_ru)
        use_a = err_a <= err_b
        out = np.where(use_a, offset + phi_n @ ru, offset + g1 - one_minus @ ru)
        err = np.where(use_a, err_a, err_b)
        return out, err

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
                f"draws (limit {MAX_DRAWS:.0e}); use {option('--samples')} {max(1, MAX_DRAWS // n)} "
                "or fewer")
        rows = max(1, CHUNK_ELEMS // max(n, 1)) if self._torch is None else \
            self._torch.rows_per_chunk(n)
        for i, start in enumerate(range(0, samples, rows)):
            m = min(rows, samples - start)
            if self._torch is not None:
                yield self._torch.sample(dist, (self.seed, classes, i), (m, n))
            else:
                yield dist.sample(np.random.default_rng([self.seed, classes, i]), (m, n))
            if self.on_draws is not None:
                self.on_draws(m * n)

    def _per_sample(self, term: Term, classes: int, zs, slope: bool) -> np.ndarray:
        """δ_k (or its slope) per draw at every z of ``zs``: [len(zs), samples], cached per z."""
        name = (term.loss.name, tuple(sorted(term.params.items())), classes, slope)
        zs = [float(z) for z in np.atleast_1d(zs)]
        missing = [z for z in dict.fromkeys(zs) if (name, z) not in self._mc_cache]
        if missing:
            zm = np.array(missing)
            if slope and term.loss.mc_slope is not None and self.reduce:  # exact per draw
                vals = term.loss.mc_slope(zm[:, None], self._reduced(classes, reducer_of(term)),
                                          classes, term.params)
            elif slope:
                h = 1e-4  # both sides in one evaluation (one Newton solve, one set-up)
                both = self._per_sample(term, classes, np.concatenate([zm + h, zm - h]), False)
                vals = (both[:len(zm)] - both[len(zm):]) / (2 * h)
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
        its error bound fails), else from whole logit vectors. A σ_k-only loss here is one whose
        exact quadrature cannot reach its accuracy: its δ_k is a function of p alone, and p per
        draw follows from ln Σ_{j≠k} e^{z_j}."""
        if term.loss.sigma is not None:
            lse = self._reduced(classes, lse_and_sum)[:, 0]
            with np.errstate(over="ignore"):
                p = 1.0 / (1.0 + np.exp(lse[None, :] - zs[:, None]))
            with np.errstate(all="ignore"):
                return term.loss.sigma.offset(term.params) + term.loss.sigma.g(p, term.params)
        if term.loss.mc_reduce is not None and self.reduce:
            # ``takes_dist``: also the draws' distribution (RCE's clamp integrates one logit exactly)
            extra = {"dist": self.dist} if getattr(term.loss.mc_delta, "takes_dist", False) else {}
            out = term.loss.mc_delta(zs[:, None], self._reduced(classes, reducer_of(term)),
                                     classes, term.params, **extra)
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
        """Per draw: Σ_j e^{z_j}/(n m) - 1 and Σ_j z_j / n, whose means are exactly 0.

        A variate whose sample mean lies more than 4 standard errors from 0 is dropped: the
        draws do not represent it (e^z of a wide distribution, std ~ 10, has its mean in
        draws too rare to occur), and correcting by it would bias the average.
        """
        if classes not in self._cv_cache:
            n = classes - 1
            s = self._reduced(classes, lse_and_sum)
            with np.errstate(over="ignore"):
                X = np.stack([np.exp(s[:, 0] - math.log(n) - self.dist.log_exp_moment_exact())
                              - 1.0, s[:, 1] / n], axis=1)
            se = X.std(axis=0, ddof=1) / math.sqrt(len(X))
            keep = np.isfinite(se) & (np.abs(X.mean(axis=0)) <= 4 * se)
            self._cv_cache[classes] = X[:, keep]
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


def _describe(params: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.10g}" for k, v in params.items()) or "no parameters"


def default_samples(*specs: LossSpec) -> int:
    """The default number of Monte Carlo vectors for these losses (see DEFAULT_SAMPLES)."""
    return DEFAULT_SAMPLES if all(s.reducible for s in specs) else DEFAULT_SAMPLES_FULL


def check_classes(classes, name: str | None = None) -> int:
    """K must be an integer >= 2 (and at most 10^9); the error names ``name`` (default: the
    option --classes on the command line, the argument ``classes`` in Python)."""
    number = isinstance(classes, (int, float, np.integer, np.floating)) and not isinstance(
        classes, bool) and math.isfinite(classes)
    if not number or int(classes) != classes or not 2 <= classes <= 10**9:
        raise UsageError(f"{name or option('--classes')} must be an integer in [2, 10^9], "
                         f"got {classes!r}")
    return int(classes)


def mean_delta(loss, params, classes, z, dist, **kwargs) -> Average:
    """Functional shortcut: ``Averager(dist, **kwargs).mean_delta(loss, params, classes, z)``."""
    return Averager(dist, **kwargs).mean_delta(loss, params, classes, z)
