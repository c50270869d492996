"""NFL and biTemp Monte Carlo from reduced draws (losses/nfl_series.py, losses/bitemp_series.py),
against whole logit vectors: per draw on the same draws (truncation below 1e-9, the rigorous
bound below 1e-9), ε on independent draws (within 4 combined standard errors), the automatic
fallback to whole vectors, the torch path (torch on the CPU device), the draw budget."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from calibrate_cli.engine.average import DRAW_BUDGET, MIN_SAMPLES, Averager
from calibrate_cli.engine.logits import Gaussian
from calibrate_cli.losses import get_loss, resolve_params
from calibrate_cli.losses.bitemp_series import bitemp_reduce, bitemp_series_delta
from calibrate_cli.losses.nfl_series import nfl_reduce, nfl_series_delta
from calibrate_cli.losses.registry import lse_and_sum
from calibrate_cli.engine.solve import solve_epsilon

NFL_PARAMS = [(0.5, 0), (0.5, 1), (0.0, 0), (1.3, 0), (2.0, 0), (2.7, 1)]
BITEMP_PARAMS = [(0.8, 1.2), (0.5, 1.5), (1.0, 3.0), (0.2, 5.0), (0.8, 1.05), (0.0, 1.1)]
STDS = (0.1, 0.5, 2.0)


def _draws(K, std, n=None, seed=5):
    n = n or (24 if K < 10_000 else 8)
    return np.random.default_rng([seed, K]).standard_normal((n, K - 1)) * std


def _window(K, std):
    """From below the logit mean to well above the peak of <δ_k>(z)."""
    zc = math.log(K - 1) + std * std / 2
    return np.linspace(-4.0, zc + 8.0, 9 if K < 10_000 else 5)


def _whole(spec, params, zk, z):
    logits = np.empty((z.shape[0], z.shape[1] + 1))
    logits[:, 0] = zk
    logits[:, 1:] = z
    return spec.full(logits, params)


def _compare(series, spec, params, K, std):
    """max |series - whole| / max |whole| over the window, and max bound/|δ| (None: fallback)."""
    z = _draws(K, std)
    worst = worst_bound = 0.0
    values, fulls = [], []
    for zk in _window(K, std):
        out = series(zk, z)
        if out is None:
            return None
        delta, bound = out
        values.append(delta)
        fulls.append(_whole(spec, params, zk, z))
        worst_bound = max(worst_bound, float(np.max(bound / np.abs(delta))))
    values, fulls = np.array(values), np.array(fulls)
    worst = float(np.max(np.abs(values - fulls)) / np.max(np.abs(fulls)))
    return worst, worst_bound


# ----------------------------------------------------------- same draws
@pytest.mark.parametrize("K", [2, 10, 100, 1000, 10_000])
def test_nfl_series_is_the_whole_vector_delta(K):
    """The series (with explicit classes) gives δ_k of whole vectors to 1e-9 of its scale, on the
    same draws, for both detach conventions and γ from 0 (NCE) to 2.7; its rigorous truncation
    bound is below 1e-9 of |δ_k| everywhere."""
    spec = get_loss("nfl")
    for std in STDS:
        z = _draws(K, std)
        stats = nfl_reduce(z)
        for gamma, detach in NFL_PARAMS:
            res = _compare(lambda zk, _: nfl_series_delta(zk, stats, gamma, detach), spec,
                           {"gamma": gamma, "detach": detach}, K, std)
            assert res is not None, (K, std, gamma, detach)
            err, bound = res
            assert err < 1e-9 and bound < 1e-9, (K, std, gamma, detach, err, bound)


@pytest.mark.parametrize("K", [2, 10, 100, 1000, 10_000])
def test_bitemp_series_is_the_whole_vector_delta(K):
    """The same for biTemp (t2 from 1.05 to 5; the moments stored for each parameter's level)
    through the series for the tempered normaliser. t2 ≤ 1.1 with std 2 falls back to whole
    vectors at K ≥ 100 (too many moments), which the fallback test covers."""
    spec = get_loss("bitemp")
    for std in STDS:
        z = _draws(K, std)
        for t1, t2 in BITEMP_PARAMS:
            if t2 < 1.2 and std > 1 and K >= 100:
                continue
            stats = bitemp_reduce.for_params({"t1": t1, "t2": t2})(z)
            res = _compare(lambda zk, _: bitemp_series_delta(zk, stats, t1, t2), spec,
                           {"t1": t1, "t2": t2}, K, std)
            assert res is not None, (K, std, t1, t2)
            err, bound = res
            assert err < 1e-9 and bound < 1e-9, (K, std, t1, t2, err, bound)


def test_truncation_bounds_are_not_vacuous():
    """Where the series is truncated (many classes, few powers) the bound is positive and the
    measured error stays below it (up to rounding): the bound bounds something real."""
    K, std = 1000, 0.5
    z = _draws(K, std)
    stats = nfl_reduce(z)
    assert stats.explicit.shape[1] == 0 and stats.a.shape[1] < 10
    spec = get_loss("nfl")
    for zk in (0.0, 7.0):
        delta, bound = nfl_series_delta(zk, stats, 0.5, False)
        full = _whole(spec, {"gamma": 0.5, "detach": 0}, zk, z)
        assert np.all(bound > 0)
        assert np.all(np.abs(delta - full) <= bound + 1e-13 * np.abs(full))


# -------------------------------------------------------------- fallback
@pytest.mark.parametrize("loss,params,std", [
    ("nfl", {"gamma": 60.5, "detach": 0.0}, 0.5),  # binomial coefficients too large for the bound
    ("bitemp", {"t1": 0.8, "t2": 1.0}, 0.5),  # t2 = 1: no tempered series
    ("bitemp", {"t1": 0.8, "t2": 1.2}, 10.0),  # logits too wide for the stored moments
    ("bitemp", {"t1": 0.0, "t2": 1.1}, 2.0),  # t2 near 1 and wide logits: too many moments
])
def test_whole_vectors_where_the_bound_fails(loss, params, std):
    """The reduction declines (mc_delta returns None) and the engine evaluates whole vectors:
    the averages equal those of the whole-vector path on the same draws."""
    spec = get_loss(loss)
    K = 100
    dist = Gaussian(0.0, std)
    av = Averager(dist, samples=64, seed=2)
    from calibrate_cli.engine.average import reducer_of

    (term,) = spec.terms(params)
    stats = av._reduced(K, reducer_of(term))
    assert spec.mc_delta(3.0, stats, K, params) is None
    z = [0.0, 3.0, 6.0]
    got = av.mean_delta(spec, params, K, z)
    ref = Averager(dist, samples=64, seed=2, reduce=False).mean_delta(spec, params, K, z)
    np.testing.assert_array_equal(got.value, ref.value)


def test_bitemp_parameters_below_the_default_level_get_their_own_moments():
    """t2 = 1.05 needs more moments than the default level stores: the engine reduces the same
    draws once more for that level and still equals whole vectors on those draws."""
    from calibrate_cli.engine.average import reducer_of

    spec = get_loss("bitemp")
    dist = Gaussian(0.0, 0.5)
    av = Averager(dist, samples=128, seed=6)
    z = [0.0, 4.0, 8.0]
    for params in ({"t1": 0.8, "t2": 1.2}, {"t1": 0.8, "t2": 1.05}):
        got = av.mean_delta(spec, params, 1000, z)
        ref = Averager(dist, samples=128, seed=6, reduce=False).mean_delta(spec, params, 1000, z)
        np.testing.assert_allclose(got.value, ref.value, rtol=1e-9)
    levels = {reducer_of(t) for p in ({"t1": 0.8, "t2": 1.2}, {"t1": 0.8, "t2": 1.05})
              for t in spec.terms(p)}
    assert len(levels) == 2 and all((r, 1000) in av._stats_cache for r in levels)


# ------------------------------------------- ε against the whole vectors
def _eps(spec, params, K, std, *, reduce, seed, samples, criterion):
    dist = Gaussian(0.0, std)
    av = Averager(dist, samples=samples, seed=seed, reduce=reduce)
    return solve_epsilon(spec, params, K, dist, criterion=criterion, averager=av)


@pytest.mark.parametrize("K,samples_full", [(10, 1024), (100, 512), (1000, 256), (10_000, 24)])
def test_nf_mae_epsilon_matches_whole_vector_monte_carlo(K, samples_full):
    """ε of NF-MAE (peak; match too where K ≠ K_ref) from reduced draws against the whole-vector
    Monte Carlo on independent draws: within 4 combined standard errors. On the same draws the
    two agree to 1e-7 (they are the same average, the series truncated below 1e-9)."""
    spec = get_loss("nf-mae")
    params = resolve_params(spec)
    crits = ("peak",) if K == 10 else ("match",) if K == 10_000 else ("peak", "match")
    for crit in crits:
        new = _eps(spec, params, K, 0.5, reduce=True, seed=1, samples=4096, criterion=crit)
        old = _eps(spec, params, K, 0.5, reduce=False, seed=2, samples=samples_full,
                   criterion=crit)
        assert abs(new.epsilon - old.epsilon) <= 4 * math.hypot(new.error, old.error), (
            crit, new.epsilon, new.error, old.epsilon, old.error)
    if K <= 1000:
        same = _eps(spec, params, K, 0.5, reduce=True, seed=2, samples=samples_full,
                    criterion="peak")
        old = _eps(spec, params, K, 0.5, reduce=False, seed=2, samples=samples_full,
                   criterion="peak")
        assert abs(same.epsilon - old.epsilon) < 1e-7


@pytest.mark.parametrize("loss", ["nfl", "nf-rce", "bitemp"])
@pytest.mark.parametrize("K", [10, 1000])
def test_other_losses_epsilon_match_whole_vectors(loss, K):
    spec = get_loss(loss)
    params = resolve_params(spec)
    new = _eps(spec, params, K, 0.5, reduce=True, seed=1, samples=2048, criterion="peak")
    old = _eps(spec, params, K, 0.5, reduce=False, seed=2, samples=256 if K == 10 else 64,
               criterion="peak")
    assert abs(new.epsilon - old.epsilon) <= 4 * math.hypot(new.error, old.error), (
        new.epsilon, new.error, old.epsilon, old.error)


def test_one_pass_serves_nfl_nce_and_the_control_variates(monkeypatch):
    """NFL's pass also yields (ln Σ e^z, Σ z): NCE and the control variates reuse it, so a mixed
    loss set draws once per K; the statistics equal lse_and_sum's own."""
    av = Averager(Gaussian(0.0, 0.5), samples=300, seed=4)
    calls = []
    chunks = av._chunks
    monkeypatch.setattr(av, "_chunks", lambda k: (calls.append(k), chunks(k))[1])
    av.mean_delta(get_loss("nf-mae"), resolve_params(get_loss("nf-mae")), 500, [1.0])
    av.mean_delta(get_loss("nce-mae"), resolve_params(get_loss("nce-mae")), 500, [1.0])
    assert calls == [500]
    direct = np.concatenate([lse_and_sum(c) for c in chunks(500)])
    np.testing.assert_allclose(av._stats_cache[(lse_and_sum, 500)], direct, rtol=1e-13)


def test_tables_share_one_set_of_draws_across_stds_bit_for_bit():
    """calibrate tables reduces std × the same standard normals for every std at once: the
    statistics equal those of each Averager's own pass exactly."""
    from calibrate_cli.tables.run import share_draws

    avs = [Averager(Gaussian(0.0, s), samples=100, seed=3) for s in (0.1, 2.0)]
    share_draws(avs, 300, [lse_and_sum, nfl_reduce])
    for a in avs:
        fresh = Averager(a.dist, samples=100, seed=3)
        for f in (nfl_reduce, lse_and_sum):
            got, ref = a._reduced(300, f), fresh._reduced(300, f)
            for x, y in ((got.a, ref.a), (got.b, ref.b), (got.lse, ref.lse)) if f is nfl_reduce \
                    else ((got, ref),):
                np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- budget
def test_draw_budget_keeps_large_k_affordable_and_small_k_unchanged():
    av = Averager(Gaussian(0.0, 0.5), samples=4096, draw_budget=DRAW_BUDGET)
    assert av.samples_at(10) == av.samples_at(10_000) == 4096
    assert av.samples_at(10**6) == MIN_SAMPLES
    assert 4096 > av.samples_at(10**5) == DRAW_BUDGET // (10**5 - 1) > MIN_SAMPLES
    assert Averager(Gaussian(0.0, 0.5), samples=4096).samples_at(10**6) == 4096
    from calibrate_cli import api  # the Python API's default follows the same budget

    assert api._setup("nf-mae", None, None, None, 0.5, None, 0)[3].samples_at(10**6) == MIN_SAMPLES
    assert api._setup("nf-mae", None, None, None, 0.5, 512, 0)[3].samples_at(10**6) == 512


def test_reduced_standard_error_is_honest():
    """The reported error of ε from reduced draws is the spread over independent seeds."""
    spec = get_loss("nf-mae")
    params = resolve_params(spec)
    eps, errs = [], []
    for seed in range(16):
        r = _eps(spec, params, 300, 0.5, reduce=True, seed=seed, samples=256, criterion="match")
        eps.append(r.epsilon)
        errs.append(r.error)
    assert 0.55 < np.std(eps, ddof=1) / np.mean(errs) < 1.7


# ----------------------------------------------------------------- torch
def test_torch_reductions_equal_numpy_on_the_same_draws():
    torch = pytest.importorskip("torch")
    from calibrate_cli.engine.mc_device import bitemp_reduce_torch, lse_and_sum_torch, nfl_reduce_torch

    for K, std in ((10, 0.5), (100, 2.0), (3000, 0.5)):
        z = _draws(K, std, n=40)
        t = torch.tensor(z)
        np.testing.assert_allclose(lse_and_sum_torch(t), lse_and_sum(z), rtol=1e-13)
        for zk in (0.0, math.log(K) + 1):
            a = nfl_series_delta(zk, nfl_reduce(z), 0.5, False)[0]
            b = nfl_series_delta(zk, nfl_reduce_torch(t), 0.5, False)[0]
            np.testing.assert_allclose(b, a, rtol=1e-12)
            a = bitemp_series_delta(zk, bitemp_reduce(z), 0.8, 1.2)[0]
            b = bitemp_series_delta(zk, bitemp_reduce_torch(t, 1.2, 0.8), 0.8, 1.2)[0]
            np.testing.assert_allclose(b, a, rtol=1e-12)


@pytest.mark.parametrize("loss", ["nf-mae", "bitemp", "nce-mae"])
def test_torch_device_epsilon_within_errors(loss):
    """--device torch-cpu: torch draws (another generator) give ε within 4 combined standard
    errors of NumPy's; whole vectors by autograd on the device where the reduction declines."""
    pytest.importorskip("torch")
    spec = get_loss(loss)
    params = resolve_params(spec)
    dist = Gaussian(0.0, 0.5)
    rs = [solve_epsilon(spec, params, 300, dist, criterion="peak",
                        averager=Averager(dist, samples=1024, device=d)) for d in (None, "cpu")]
    assert abs(rs[0].epsilon - rs[1].epsilon) <= 4 * math.hypot(rs[0].error, rs[1].error)
    # the whole-vector path on the device (autograd) against NumPy's kernels, on its draws
    av = Averager(dist, samples=64, seed=3, device="cpu", reduce=False)
    draws = np.concatenate([c.numpy() for c in av._chunks(50)])
    logits = np.empty((64, 50))
    logits[:, 0] = 2.0
    logits[:, 1:] = draws
    for term in spec.terms(params):
        if term.loss.sigma is None:
            np.testing.assert_allclose(av._per_sample(term, 50, [2.0], False)[0],
                                       term.loss.full(logits, term.params), rtol=1e-10)


def test_cli_device_option():
    from typer.testing import CliRunner

    from calibrate_cli.cli.app import build_app

    app = build_app()
    r = CliRunner().invoke(app, ["epsilon", "--classes", "100", "--loss", "nf-mae", "--device",
                                 "gpu"])
    assert r.exit_code == 2 and r.stderr.startswith("error: --device") and "\n" not in r.stderr.strip()
    pytest.importorskip("torch")
    r = CliRunner().invoke(app, ["epsilon", "--classes", "100", "--loss", "nf-mae", "--device",
                                 "torch-cpu", "--samples", "256", "--json"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    ref = solve_epsilon(get_loss("nf-mae"), resolve_params(get_loss("nf-mae")), 100,
                        Gaussian(0.0, 0.5), averager=Averager(Gaussian(0.0, 0.5), samples=256))
    assert abs(d["epsilon"] - ref.epsilon) <= 4 * math.hypot(d["error"], ref.error)


def test_nfl_epsilon_imports_no_torch():
    code = ("import sys; from calibrate_cli.cli.app import main; "
            "sys.argv = ['calibrate', 'epsilon', '--loss', 'nf-mae', '--classes', '300', "
            "'--samples', '256', '--json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["method"] == "exact+monte-carlo"


def test_nce_slope_per_draw_is_the_derivative_at_50_digits():
    """NCE's dδ_k/dz_k per draw (``mc_slope``) against mpmath's derivative of the defining
    formula at 50 digits, from far below the peak to p ≈ 1 (where ln p = z - lse would cancel)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    spec = get_loss("nce")

    def delta(zk, L, S, K):
        lse = mp.log(mp.e ** zk + mp.e ** L)
        logp = zk - lse
        p = mp.e ** logp
        B = K * lse - (zk + S)
        return ((p - 1) * B + logp * (K * p - 1)) / (B * B)

    rng = np.random.default_rng(1)
    worst = 0.0
    for K in (2, 3, 10, 100, 1000, 10**4, 10**6, 10**7):
        for L in [math.log(K - 1) + d for d in (-0.01, 0.02, 3.0)]:
            S = float(rng.normal(0, 1))
            for zk in (-20.0, -5.0, 0.0, L - 2, L, L + 2, L + 10, 30.0, 60.0):
                got = spec.mc_slope(np.array([[zk]]), np.array([[L, S]]), K, {})[0, 0]
                ref = mp.diff(lambda x: delta(x, mp.mpf(L), mp.mpf(S), K), mp.mpf(zk))
                worst = max(worst, float(abs(got - ref) / abs(ref)))
    assert worst < 1e-11, worst
