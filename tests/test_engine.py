"""The averaging engine and the solvers against independent computations.

Independent references used here:
* brute-force Monte Carlo over whole logit vectors with the loss's own δ_k
  (``spec.delta`` on [N, K] arrays, its own RNG), compared within 4 standard errors;
* scipy.integrate.quad at K = 2, where <δ_k>(z) is a one-dimensional integral;
* mean-field formulas, which the exact average must approach as K grows;
* invariants of the problem (shift invariance, ε(K_ref) = 0, q(from = to) = q_from).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize

from calibrate_cli import api
from calibrate_cli.engine.average import Averager
from calibrate_cli.errors import NoSolutionError, UsageError
from calibrate_cli.engine.logits import Gaussian, from_array
from calibrate_cli.losses import get_loss, list_losses, resolve_params
from calibrate_cli.engine.solve import solve_epsilon, solve_q, solve_transfer

SIGMA_ONLY = [s for s in list_losses() if s.sigma_only]
MC_LOSSES = [s for s in list_losses() if not s.sigma_only]


def brute_force(spec, params, K, z, std, n, seed=12345):
    """Mean and standard error of δ_k over n whole logit vectors (correct class in column 0)."""
    rng = np.random.default_rng(seed)
    vals = []
    rows = max(1, 2_000_000 // K)
    for start in range(0, n, rows):
        m = min(rows, n - start)
        logits = np.empty((m, K))
        logits[:, 0] = z
        logits[:, 1:] = rng.standard_normal((m, K - 1)) * std
        vals.append(spec.delta(logits, params))
    v = np.concatenate(vals)
    return v.mean(), v.std(ddof=1) / math.sqrt(v.size)


# ------------------------------------------------------------ exact vs MC
@pytest.mark.parametrize("std", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("K", [2, 10, 100, 1000, 10_000])
@pytest.mark.parametrize("loss", ["mae", "gce", "agce"])
def test_exact_matches_monte_carlo(loss, K, std):
    spec = get_loss(loss)
    params = spec.defaults()
    av = Averager(Gaussian(0.0, std))
    n = 4000 if K <= 1000 else 1500
    # the logit mean, the bulk of the bump and beyond its peak
    zc = math.log((K - 1) * math.exp(std * std / 2))
    for z in (0.0, zc - 1.0, zc + 2.0):
        exact = av.mean_delta(spec, params, K, z)
        assert exact.method == "exact"
        mc, se = brute_force(spec, params, K, z, std, n)
        assert abs(exact.value[0] - mc) <= 4 * se + 1e-12, (loss, K, std, z, exact.value[0], mc, se)
        assert exact.error[0] < 1e-8


@pytest.mark.parametrize("spec", SIGMA_ONLY, ids=lambda s: s.name)
@pytest.mark.parametrize("std", [0.1, 0.5, 2.0])
def test_exact_matches_quadrature_at_two_classes(spec, std):
    """K = 2: <δ_k>(z) = ∫ δ(σ(z - y)) N(y; 0, std) dy, done by adaptive quadrature."""
    params = spec.defaults()
    av = Averager(Gaussian(0.0, std))
    for z in (-3.0, 0.0, 1.5, 6.0):
        def integrand(y):
            p = 1.0 / (1.0 + math.exp(-(z - y)))
            return spec.delta_of_p(p, params) * math.exp(-0.5 * (y / std) ** 2)

        ref = integrate.quad(integrand, -12 * std, 12 * std, epsabs=1e-14, epsrel=1e-12,
                             limit=200)[0] / (std * math.sqrt(2 * math.pi))
        got = av.mean_delta(spec, params, 2, z).value[0]
        assert got == pytest.approx(ref, rel=1e-7, abs=1e-13), (spec.name, std, z)


def test_ce_mean_delta_is_mean_softmax_minus_one():
    """CE: δ_k = σ_k - 1, so <δ_CE> + 1 = <σ_k>; <σ_k> from brute-force softmax averages."""
    spec = get_loss("ce")
    av = Averager(Gaussian(0.0, 0.5))
    rng = np.random.default_rng(7)
    for K, z in [(10, 0.0), (100, 3.0), (1000, 7.0)]:
        logits = rng.standard_normal((4000, K)) * 0.5
        logits[:, 0] = z
        sm = np.exp(logits[:, 0] - np.logaddexp.reduce(logits, axis=1))
        got = av.mean_delta(spec, {}, K, z).value[0] + 1.0
        assert abs(got - sm.mean()) < 4 * sm.std(ddof=1) / math.sqrt(sm.size)


def test_slope_matches_finite_difference():
    for name in ("mae", "gce", "nce-agce"):
        spec = get_loss(name)
        params = spec.defaults()
        av = Averager(Gaussian(0.0, 0.5), samples=2048)
        for K in (10, 1000):
            for z in (0.0, 5.0):
                h = 1e-4
                fd = (av.mean_delta(spec, params, K, z + h).value[0]
                      - av.mean_delta(spec, params, K, z - h).value[0]) / (2 * h)
                got = av.slope(spec, params, K, z).value[0]
                assert got == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, K, z)


# ------------------------------------------------------ Monte Carlo losses
@pytest.mark.parametrize("spec", MC_LOSSES, ids=lambda s: s.name)
def test_monte_carlo_losses_match_brute_force(spec):
    """The engine's Monte Carlo (exact reductions, control variates) vs naive sampling."""
    params = spec.defaults()
    av = Averager(Gaussian(0.0, 0.5), samples=4096, seed=3)
    for K in (10, 200):
        for z in (0.0, math.log(K)):
            got = av.mean_delta(spec, params, K, z)
            assert got.method != "exact"
            mc, se = brute_force(spec, params, K, z, 0.5, 4096, seed=99)
            tol = 4 * math.hypot(se, got.error[0]) + 1e-12
            assert abs(got.value[0] - mc) <= tol, (spec.name, K, z, got.value[0], mc, se)


def test_monte_carlo_is_smooth_in_z_and_reproducible():
    """Common random numbers: the same draws at every z, so the curve is smooth."""
    spec = get_loss("nce")
    av = Averager(Gaussian(0.0, 0.5), samples=1024, seed=0)
    z = np.linspace(0, 8, 81)
    v = av.mean_delta(spec, {}, 100, z).value
    second = np.abs(np.diff(v, 2)).max()
    assert second < 1e-3  # a noisy curve would jump by ~SE ≈ 1e-3 between neighbours
    again = Averager(Gaussian(0.0, 0.5), samples=1024, seed=0).mean_delta(spec, {}, 100, z).value
    assert np.array_equal(v, again)


# ---------------------------------------------------------- mean field, §6
MF_TABLE = [  # K, z, δ_MAE, δ_CE, δ_GCE(0.7)   (../shared/paper/method.md §6, s = 0.5)
    (100, 0.0, -0.01751, -0.99116, -0.03618),
    (1000, 0.0, -0.00176, -0.99912, -0.00727),
    (1000, 4.0, -0.08779, -0.95399, -0.11055),
]


@pytest.mark.parametrize("K,z,mae,ce,gce", MF_TABLE)
def test_method_md_mean_field_table(K, z, mae, ce, gce):
    av = Averager(Gaussian(0.0, 0.5))
    for name, ref in (("mae", mae), ("ce", ce), ("gce", gce)):
        spec = get_loss(name)
        got = av.mean_delta(spec, spec.defaults(), K, z).value[0]
        assert got == pytest.approx(ref, rel=0.012), (name, K, z, got)


@pytest.mark.parametrize("K", [10**5, 10**6, 10**7])
def test_mean_field_limit_at_large_k(K):
    """As K grows Σ_j e^{z_j} concentrates on (K-1)m: <δ>(z) → δ(σ_mf(z))."""
    std = 0.5
    m = math.exp(std * std / 2)
    av = Averager(Gaussian(0.0, std))
    for name in ("mae", "gce", "ce", "agce", "sce"):
        spec = get_loss(name)
        params = spec.defaults()
        for shift in (-2.0, 0.0, 2.0):
            z = math.log((K - 1) * m) + shift
            p = 1.0 / (1.0 + (K - 1) * m * math.exp(-z))
            mf = spec.delta_of_p(p, params)
            got = av.mean_delta(spec, params, K, z).value[0]
            # fluctuations of S/((K-1)m) are O(K^-1/2); their effect on <δ> is O(1/K)
            assert got == pytest.approx(mf, rel=50.0 / K * 10, abs=1e-12), (name, K, shift)


def test_epsilon_approaches_mean_field_values():
    r = solve_epsilon(get_loss("mae"), {"scale": 2.0}, 10**7, Gaussian(0.0, 0.5), criterion="peak")
    assert r.epsilon == pytest.approx(math.log(10**7 - 1) + 0.125, abs=1e-4)
    r = solve_epsilon(get_loss("mae"), {"scale": 2.0}, 10**7, Gaussian(0.0, 0.5))
    ref = solve_epsilon(get_loss("mae"), {"scale": 2.0}, 10**6, Gaussian(0.0, 0.5))
    # match: ε(K) - ε(K') → ln((K-1)/(K'-1)) once both are in the mean-field regime
    assert r.epsilon - ref.epsilon == pytest.approx(math.log((10**7 - 1) / (10**6 - 1)), abs=1e-4)


# -------------------------------------------------------------- solvers
@pytest.mark.parametrize("spec", [s for s in list_losses() if s.bounded and s.sigma_only],
                         ids=lambda s: s.name)
def test_epsilon_match_solves_its_equation(spec):
    params = spec.defaults()
    dist = Gaussian(0.0, 0.5)
    av = Averager(dist)
    for K in (10, 1000):
        r = solve_epsilon(spec, params, K, dist, averager=av)
        if K == 10:
            assert abs(r.epsilon) < 1e-9  # ε(K_ref) = 0
        lhs = av.mean_delta(spec, params, K, r.epsilon).value[0]
        rhs = av.mean_delta(spec, params, 10, 0.0).value[0]
        assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-14)
        if r.peak_z is not None:
            assert r.epsilon <= r.peak_z + 1e-9  # the root below the peak


def test_epsilon_at_two_classes_against_quadrature_root():
    spec = get_loss("mae")
    std = 0.5

    def avg(z, K=2):
        f = lambda y: -2 * (p := 1 / (1 + math.exp(-(z - y)))) * (1 - p) * math.exp(-0.5 * (y / std) ** 2)
        return integrate.quad(f, -8, 8, epsabs=1e-14, epsrel=1e-12)[0] / (std * math.sqrt(2 * math.pi))

    target = Averager(Gaussian(0, std)).mean_delta(spec, {"scale": 2.0}, 10, 0.0).value[0]
    peak = optimize.minimize_scalar(avg, bounds=(-5, 5), method="bounded",
                                    options={"xatol": 1e-10}).x
    ref = optimize.brentq(lambda z: avg(z) - target, -10, peak, xtol=1e-12)
    got = solve_epsilon(spec, {"scale": 2.0}, 2, Gaussian(0, std))
    assert got.epsilon == pytest.approx(ref, abs=1e-7)
    peak_eps = solve_epsilon(spec, {"scale": 2.0}, 2, Gaussian(0, std), criterion="peak").epsilon
    assert peak_eps == pytest.approx(peak, abs=1e-5)


def test_peak_is_a_stationary_point():
    spec = get_loss("gce")
    dist = Gaussian(0.0, 0.5)
    av = Averager(dist)
    r = solve_epsilon(spec, {"q": 0.7}, 1000, dist, criterion="peak", averager=av)
    assert abs(av.slope(spec, {"q": 0.7}, 1000, r.epsilon).value[0]) < 1e-9
    for dz in (-0.05, 0.05):  # and an extremum of |<δ>|
        assert abs(av.mean_delta(spec, {"q": 0.7}, 1000, r.epsilon + dz).value[0]) < abs(r.peak_delta)


def test_shift_invariance():
    """Moving the whole logit distribution by μ moves z* by μ and leaves ε unchanged."""
    spec = get_loss("mae")
    for crit in ("match", "peak"):
        e0 = solve_epsilon(spec, {"scale": 2.0}, 500, Gaussian(0.0, 0.7), criterion=crit)
        e3 = solve_epsilon(spec, {"scale": 2.0}, 500, Gaussian(3.0, 0.7), criterion=crit)
        assert e3.epsilon == pytest.approx(e0.epsilon, abs=1e-9)
    a0 = Averager(Gaussian(0.0, 0.7)).mean_delta(spec, {"scale": 2.0}, 500, [1.0, 4.0]).value
    a3 = Averager(Gaussian(3.0, 0.7)).mean_delta(spec, {"scale": 2.0}, 500, [4.0, 7.0]).value
    np.testing.assert_allclose(a3, a0, rtol=1e-12)
    # the logit bias is a pure shift of the curve
    r = solve_epsilon(spec, {"scale": 2.0}, 500, Gaussian(0.0, 0.7))
    assert Averager(Gaussian(0.0, 0.7)).mean_delta(spec, {"scale": 2.0}, 500, r.epsilon).value[0] \
        == pytest.approx(r.delta_after, rel=1e-12)


def test_epsilon_grows_with_k_and_branch_above_is_the_other_root():
    spec = get_loss("mae")
    dist = Gaussian(0.0, 0.5)
    eps = [solve_epsilon(spec, {"scale": 2.0}, K, dist).epsilon for K in (10, 100, 1000, 10**4)]
    assert all(b > a for a, b in zip(eps, eps[1:]))
    below = solve_epsilon(spec, {"scale": 2.0}, 1000, dist)
    above = solve_epsilon(spec, {"scale": 2.0}, 1000, dist, branch="above")
    assert above.epsilon == pytest.approx(below.other_root, abs=1e-9)
    assert above.epsilon > below.peak_z > below.epsilon


def test_q_unchanged_when_from_equals_to_and_known_value():
    dist = Gaussian(0.0, 0.5)
    assert solve_q(100, 100, dist, q_from=0.7).value == pytest.approx(0.7, abs=1e-9)
    r = solve_q(100, 1000, dist, q_from=0.7)
    assert 0.46 < r.value < 0.49  # method.md §4: 0.47-0.48 for std 0.1-1.0
    assert r.delta_after == pytest.approx(r.target, rel=1e-9)


def test_transfer_round_trip():
    spec = get_loss("agce")
    dist = Gaussian(0.0, 0.5)
    params = resolve_params(spec, "cifar100")
    there = solve_transfer(spec, params, "a", 100, 1000, dist)
    back = solve_transfer(spec, {**params, "a": there.value}, "a", 1000, 100, dist)
    assert back.value == pytest.approx(params["a"], rel=1e-7)


def test_no_solution_is_reported():
    spec = get_loss("nce-agce")
    params = resolve_params(spec, "cifar100")
    with pytest.raises(NoSolutionError, match="beyond the extremum"):
        solve_epsilon(spec, params, 1000, Gaussian(0.0, 0.5), averager=Averager(Gaussian(0, 0.5), samples=512))
    with pytest.raises(NoSolutionError, match="no logit bias"):
        solve_epsilon(get_loss("mae"), {"scale": 2.0}, 100, Gaussian(0, 0.5), criterion="target",
                      target=-0.9)


def test_empirical_distribution_matches_its_gaussian_source():
    """Measured logits drawn from N(0, 0.5²): ε and <δ> agree with the Gaussian's."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((400, 1000)) * 0.5
    emp = from_array(logits)
    g = Gaussian(0.0, float(emp.std))
    spec = get_loss("mae")
    e_emp = solve_epsilon(spec, {"scale": 2.0}, 1000, emp).epsilon
    e_g = solve_epsilon(spec, {"scale": 2.0}, 1000, g).epsilon
    assert e_emp == pytest.approx(e_g, abs=5e-3)
    # exact path on the empirical atoms vs Monte Carlo drawing from the values themselves
    av = Averager(emp, samples=3000, seed=1)
    ex = av.mean_delta(spec, {"scale": 2.0}, 300, 5.0).value[0]
    draws = emp.sample(np.random.default_rng(5), (3000, 299))
    full = np.concatenate([np.full((3000, 1), 5.0 - emp.mean), draws], axis=1)
    d = spec.delta(full, {"scale": 2.0})
    assert abs(ex - d.mean()) < 4 * d.std(ddof=1) / math.sqrt(d.size)


def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError, match="integer"):
        api.epsilon(1)
    with pytest.raises(UsageError, match="logit_std"):  # in Python: the argument's name
        Gaussian(0.0, 0.0)
    with pytest.raises(UsageError, match="logit_std"):
        Gaussian(0.0, float("nan"))
    with pytest.raises(UsageError, match="did you mean"):
        get_loss("maee")
    with pytest.raises(UsageError, match="no parameter"):
        api.epsilon(100, "mae", params={"q": 0.5})
    with pytest.raises(UsageError, match="outside"):
        api.q(100, 1000, q_from=-1.0)


def test_api_doc_examples():
    assert round(api.epsilon(1000).epsilon, 4) == 4.7342
    assert round(api.q(100, 1000).value, 4) == 0.4716


def test_reducible_losses_and_one_pass_over_the_draws(monkeypatch):
    """NCE and its combinations reduce each draw to (ln Σ e^z, Σ z): the draws are made once per
    K, for the control variates and NCE together (NFL and biTemp reduce too: tests/test_reduce.py)."""
    from calibrate_cli.engine.average import Averager
    from calibrate_cli.losses import get_loss, resolve_params

    assert all(get_loss(n).reducible for n in ("ce", "mae", "nce", "nce-agce", "nce-mae", "nce-rce"))
    assert all(get_loss(n).reducible for n in ("nfl", "nf-mae", "nf-rce", "bitemp"))
    av = Averager(Gaussian(0.0, 0.5), samples=256, seed=1)
    calls = []
    chunks = av._chunks
    monkeypatch.setattr(av, "_chunks", lambda k: (calls.append(k), chunks(k))[1])
    spec = get_loss("nce-agce")
    params = resolve_params(spec, "cifar100")
    a = av.mean_delta(spec, params, 5000, [0.0, 3.0]).value
    b = av.mean_delta(spec, params, 5000, [1.0]).value
    assert calls == [5000]
    # the cached statistics give what a fresh averager (separate passes) gives
    fresh = Averager(Gaussian(0.0, 0.5), samples=256, seed=1)
    np.testing.assert_allclose(fresh.mean_delta(spec, params, 5000, [0.0, 3.0, 1.0]).value,
                               np.r_[a, b], rtol=1e-12)


def test_monte_carlo_error_estimates_are_honest():
    """The reported error of a Monte Carlo ε or transfer is the spread over independent seeds
    (ratio within [0.6, 1.6] over 24 seeds), and it vanishes where the draws cancel (K = K_ref)."""
    from calibrate_cli.engine.solve import solve_epsilon, solve_transfer

    dist = Gaussian(0.0, 0.5)
    spec = get_loss("nce-mae")
    params = resolve_params(spec)
    eps, errs, vals, verrs = [], [], [], []
    for seed in range(24):
        av = Averager(dist, samples=256, seed=seed)
        r = solve_epsilon(spec, params, 100, dist, averager=av)
        eps.append(r.epsilon)
        errs.append(r.error)
        t = solve_transfer(spec, params, "alpha", 100, 300, dist, averager=av)
        vals.append(t.value)
        verrs.append(t.error)
    assert 0.6 < np.std(eps, ddof=1) / np.mean(errs) < 1.6
    assert 0.6 < np.std(vals, ddof=1) / np.mean(verrs) < 1.6
    same = solve_epsilon(spec, params, 10, dist, averager=Averager(dist, samples=256, seed=0))
    assert abs(same.epsilon) < 1e-9 and same.error < 1e-9


def test_psi_kept_per_z_on_the_u_lattice_is_psi():
    """The exact path keeps ψ per z over the lattice of u (every kernel's u grid lies on it):
    what it returns equals ψ computed afresh, and an average does not depend on what the same
    Averager evaluated before (another kernel, another K, a wider lattice range)."""
    from calibrate_cli.engine.laplace import V_STEP

    spec = get_loss("gce")
    fresh = Averager(Gaussian(0.0, 0.5)).mean_delta(spec, {"q": 0.3}, 1000, 0.0)
    av = Averager(Gaussian(0.0, 0.5))
    for q, K in ((0.7, 100_000), (0.5, 10), (0.3, 2)):  # other kernels and K first, same z
        av.mean_delta(spec, {"q": q}, K, 0.0)
        av.slope(spec, {"q": q}, K, 0.0)
    again = av.mean_delta(spec, {"q": 0.3}, 1000, 0.0)
    assert again.value[0] == pytest.approx(fresh.value[0], rel=1e-14, abs=1e-300)
    for slope in (False, True):
        psi, ty = av._lt.psi_on_lattice(0.0, -40 * V_STEP, 200, slope)
        ref_psi, ref_ty = av._lt.psi(V_STEP * np.arange(-40, 160) - 0.0, slope)
        np.testing.assert_allclose(psi, ref_psi, rtol=1e-14, atol=0)
        if slope:
            np.testing.assert_allclose(ty, ref_ty, rtol=1e-14, atol=0)
