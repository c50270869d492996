"""The engine and the calibration commands at the edges of their accepted input.

Independent references:
* Monte Carlo of the correct-class probability p = 1/(1 + e^{-z} S) from sampled sums
  S = Σ_{j≠k} e^{z_j} (this file's own RNG), through the loss's δ_k(p), compared within
  4 standard errors (the engine's reported error added in quadrature);
* brute-force Monte Carlo over whole logit vectors (``spec.delta``) for the Monte Carlo losses;
* the documented behaviour of every option (honoured, or a one-line usage error).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from calibrate_cli import api
from calibrate_cli.engine.average import EXACT_TOL, Averager
from calibrate_cli.errors import UsageError
from calibrate_cli.engine.logits import MAX_STD, Gaussian, from_array
from calibrate_cli.losses import get_loss, list_losses
from helpers import fails, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ references
_DRAWS: dict = {}


def log_sums(K, std, n=20_000, seed=2024):
    """ln Σ_{j≠k} e^{z_j} for n independent draws of the other K - 1 logits ~ N(0, std²)."""
    key = (K, std, n)
    if key not in _DRAWS:
        rng = np.random.default_rng([seed, K])
        out = []
        rows = max(1, 1_000_000 // K)
        for a in range(0, n, rows):
            z = rng.standard_normal((min(rows, n - a), K - 1)) * std
            top = z.max(axis=1)
            out.append(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))
        _DRAWS[key] = np.concatenate(out)
    return _DRAWS[key]


def mc_of_p(spec, params, lnS, z):
    """Mean and standard error of δ_k(p), p = 1/(1 + e^{ln S - z})."""
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(lnS - z))
    d = np.asarray(spec.delta_of_p(p, params), dtype=float)
    return d.mean(), d.std(ddof=1) / math.sqrt(d.size)


def kernel_scale(spec, params):
    """max |δ_k(p)| over p in [0, 1], on a fine grid (the scale of EXACT_TOL)."""
    p = np.concatenate([np.linspace(0, 1, 20001), np.geomspace(1e-300, 1e-3, 2000)])
    with np.errstate(all="ignore"):
        return float(np.nanmax(np.abs(spec.delta_of_p(p, params))))


def check_against_mc(spec, params, K, std, zs=None):
    """The engine (exact or its Monte Carlo fallback) against Monte Carlo of p, and its claims."""
    lnS = log_sums(K, std)
    if zs is None:  # the logit mean, and both flanks of the bump of <δ_k>(z)
        med = float(np.median(lnS))
        zs = [0.0, med - 2.0, med + 2.0]
    av = _averager(std)
    got = av.mean_delta(spec, params, K, np.array(zs))
    for i, z in enumerate(zs):
        m, se = mc_of_p(spec, params, lnS, z)
        tol = 4 * math.hypot(se, got.error[i]) + 1e-13 * max(1.0, abs(m))
        assert abs(got.value[i] - m) <= tol, (spec.name, params, K, std, z, got.value[i],
                                              got.error[i], m, se, got.method)
    if got.method == "exact":  # "exact" means its error bound meets the promised accuracy
        assert got.note == ""
        assert np.all(got.error <= 1.01 * EXACT_TOL * kernel_scale(spec, params) + 1e-15), \
            (spec.name, params, got.error)
    else:  # and where it cannot, the result says so
        assert "Monte Carlo" in got.note and spec.name in got.note
    return got


_AVS: dict = {}


def _averager(std):
    if std not in _AVS:
        _AVS[std] = Averager(Gaussian(0.0, std), samples=4096, seed=5)
    return _AVS[std]


# Every exact loss over its whole valid range: both ends (or far out where a range is
# unbounded) and interior points, log-spaced where a range spans decades.
SWEEP = {
    "ce": [{}],
    "mae": [{"scale": 1e-3}, {"scale": 1e3}],
    "gce": [{"q": q} for q in (1e-8, 1e-4, 1e-2, 0.05, 0.7, 4.0)],
    "agce": [{"a": a, "q": q} for a, q in ((1e-6, 1e-3), (1e-6, 0.5), (1e-6, 30.0), (0.6, 0.6),
                                           (0.6, 30.0), (1e3, 1e-3), (1e3, 3.0))],
    "aul": [{"a": a, "q": q} for a, q in ((1 + 1e-6, 1e-3), (1 + 1e-6, 3.0), (1.01, 30.0),
                                          (5.5, 3.0), (1e3, 1e-3), (1e3, 30.0))],
    "ael": [{"a": a} for a in (1e-4, 1e-2, 0.05, 2.5, 1e4)],
    "rce": [{"clamp": c} for c in (1e-300, 1e-4, 0.999)],
    "sce": [{"alpha": 1e-3, "beta": 10.0, "clamp": 1e-4}, {"alpha": 10.0, "beta": 1e-3, "clamp": 0.5}],
}


def test_sweep_covers_every_exact_loss():
    exact = {s.name for s in list_losses() if s.sigma_only}
    assert exact == set(SWEEP)


@pytest.mark.parametrize("K", [2, 10, 1000])
@pytest.mark.parametrize("name", sorted(SWEEP))
def test_exact_losses_over_their_parameter_range(name, K):
    spec = get_loss(name)
    for values in SWEEP[name]:
        params = spec.defaults()
        params.update(values)
        check_against_mc(spec, params, K, 0.5)


@pytest.mark.parametrize("std", [1e-3, 0.1, 2.0, MAX_STD])
@pytest.mark.parametrize("K", [2, 10, 1000])
def test_exact_losses_over_the_logit_std_range(std, K):
    """Defaults and the small-parameter ends (GCE q, AEL a) across the logit std range."""
    for name, values in [("mae", {}), ("ce", {}), ("gce", {}), ("gce", {"q": 1e-3}),
                         ("agce", {}), ("aul", {}), ("ael", {}), ("ael", {"a": 0.01}),
                         ("rce", {}), ("sce", {})]:
        spec = get_loss(name)
        params = spec.defaults()
        params.update(values)
        check_against_mc(spec, params, K, std)


def test_defaults_and_presets_stay_exact():
    """The fallback is for the far corners: every default and literature preset is exact."""
    av = _averager(0.5)
    for spec in list_losses():
        if not spec.sigma_only:
            continue
        for params in [spec.defaults()] + [{**spec.defaults(), **p.values}
                                           for p in spec.presets.values()]:
            if any(t.loss.sigma is None for t in spec.terms(params)):
                continue  # RCE's published softmax clamp (pmin > 0) is a Monte Carlo term
            for K in (10, 1000, 10**6):
                got = av.mean_delta(spec, params, K, [0.0, math.log(K)])
                assert got.method == "exact" and not got.note, (spec.name, params, K)


# ------------------------------------------------- the examples
def test_wide_logits_give_the_root_below_the_peak():
    """std 10: the scan window follows ln S (far from ln((K-1)E[e^z]) = 56.9 at K = 1000)."""
    r = api.epsilon(10, logit_std=10.0)
    assert abs(r.epsilon) <= 1e-6  # K = K_ref
    r = api.epsilon(1000, logit_std=10.0)
    assert r.method == "exact" and 20 < r.epsilon < r.peak_z < 40
    spec = get_loss("mae")
    params = spec.defaults()
    m_ref, se_ref = mc_of_p(spec, params, log_sums(10, 10.0), 0.0)
    m, se = mc_of_p(spec, params, log_sums(1000, 10.0), r.epsilon)
    assert abs(m - m_ref) <= 4 * math.hypot(se, se_ref)  # the root solves its equation
    for z in (r.peak_z - 3, r.peak_z + 3):  # and it is below a maximum of |<δ_k>|
        assert abs(mc_of_p(spec, params, log_sums(1000, 10.0), z)[0]) < abs(r.peak_delta)
    d = api.mean_delta(np.linspace(0, 200, 9), 1000, logit_std=10.0)
    assert np.all(np.isfinite(d.value))


def test_logit_std_seven_has_a_solution():
    r = api.epsilon(10, logit_std=7.0)
    assert abs(r.epsilon) <= 1e-6 and r.peak_z is not None


def test_gce_small_q():
    spec = get_loss("gce")
    got = check_against_mc(spec, {"q": 1e-3}, 10, 0.5, zs=[-3.0, 0.0, 3.0])
    assert got.method == "exact" and got.value[0] == pytest.approx(-0.9897, abs=2e-4)
    for q in (1e-4, 1e-6):
        assert np.all(api.mean_delta([-3.0, 0.0, 3.0], 10, "gce", params={"q": q}).value < 0)
    r = api.q(100, 1000, q_from=0.01)
    assert r.method == "exact" and r.value == pytest.approx(0.00786, abs=5e-5)
    # the transferred q reproduces the target <δ_k>, by Monte Carlo of p
    m0, se0 = mc_of_p(spec, {"q": 0.01}, log_sums(100, 0.5), 0.0)
    m1, se1 = mc_of_p(spec, {"q": r.value}, log_sums(1000, 0.5), 0.0)
    assert abs(m1 - m0) <= 4 * math.hypot(se0, se1)


def test_ael_small_a_falls_back_and_says_so():
    r = api.epsilon(1000, "ael", params={"a": 0.01})
    assert r.method == "monte-carlo" and "Monte Carlo" in r.note
    assert r.error < 0.05 and abs(r.delta_after - r.target) < 1e-3
    d = api.mean_delta([-3.0, 0.0, 3.0], 10, "ael", params={"a": 0.001})
    assert np.all(np.isfinite(d.value)) and d.method == "monte-carlo"


def test_overflowing_parameters_are_refused():
    with pytest.raises(UsageError, match="not finite"):
        api.epsilon(100, "agce", params={"a": 1000.0, "q": 200.0})
    fails(2, "not finite", "epsilon", "--classes", 100, "--loss", "agce", "--set", "a=1000",
          "--set", "q=200")
    fails(2, "within ±500 of the logit mean", "curve", "--z-min", -1e6, "--z-max", 0)


def test_measured_logits_wider_than_supported_are_refused(tmp_path):
    wide = np.random.default_rng(0).normal(0, 20, size=(50, 10))
    np.save(tmp_path / "wide.npy", wide)
    fails(2, "std", "epsilon", "--classes", 10, "--logits", tmp_path / "wide.npy")
    ok = np.random.default_rng(0).normal(0, 8, size=(200, 10))
    np.save(tmp_path / "ok.npy", ok)
    r = run("epsilon", "--classes", 10, "--logits", tmp_path / "ok.npy", "--json")
    assert r.exit_code == 0 and abs(json.loads(r.stdout)["epsilon"]) < 1e-6


def test_monte_carlo_losses_at_the_widest_logits():
    """Control variates whose mean the draws cannot represent (e^z at std 10) are dropped."""
    spec = get_loss("nce")
    av = Averager(Gaussian(0.0, MAX_STD), samples=4096, seed=1)
    rng = np.random.default_rng(9)
    for K in (2, 10, 100):
        logits = rng.standard_normal((20_000, K)) * MAX_STD
        for z in (0.0, 20.0):
            logits[:, 0] = z
            d = spec.delta(logits, {})
            m, se = d.mean(), d.std(ddof=1) / math.sqrt(d.size)
            got = av.mean_delta(spec, {}, K, z)
            assert abs(got.value[0] - m) <= 4 * math.hypot(se, got.error[0]), (K, z, got, m, se)


# ---------------------------------------------------- options (item by item)
def ok_json(*args):
    r = run(*args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_q_honours_set_q():
    d = ok_json("q", "--from", 100, "--to", 1000, "--set", "q=0.3")
    assert d["value_from"] == 0.3 and d["q"] == pytest.approx(api.q(100, 1000, 0.3).value, rel=1e-9)
    fails(2, "not both", "q", "--from", 100, "--to", 1000, "--set", "q=0.3", "--q-from", 0.5)
    d = ok_json("q", "--from", 100, "--to", 1000, "--loss", "aul", "--preset", "cifar10")
    assert d["value_from"] == 3.0  # the preset's q, not GCE's 0.7


@pytest.mark.parametrize("args,pattern", [
    (["epsilon", "--classes", 10, "--logits", "L", "--logit-std", 0.3], "--logit-std"),
    (["epsilon", "--classes", 10, "--logits", "L", "--logit-mean", 1], "--logit-mean"),
    (["epsilon", "--classes", 10, "--atoms", 16], "--atoms"),
    (["epsilon", "--classes", 10, "--input-shape", "3,8,8"], "--input-shape"),
    (["epsilon", "--classes", 10, "--criterion", "peak", "--reference-classes", 5],
     "--reference-classes"),
    (["epsilon", "--classes", 10, "--criterion", "peak", "--branch", "above"], "--branch"),
    (["epsilon", "--classes", 10, "--criterion", "target", "--target", -0.1,
      "--reference-classes", 5], "--reference-classes"),
    (["curve", "--classes", "2.5"], "integers"),
    (["curve", "--classes", "many"], "integers"),
    (["curve", "--criterion", "peak"], "--epsilon auto"),
    (["curve", "--reference-classes", 5], "--epsilon auto"),
    (["curve", "--epsilon", "auto", "--criterion", "peak", "--reference-classes", 5],
     "--reference-classes"),
    (["q", "--from", 100, "--to", 1000, "--logits", "L", "--logit-std", 0.3], "--logit-std"),
    (["transfer", "--loss", "gce", "--param", "q", "--from", 10, "--to", 100, "--atoms", 0],
     "--atoms"),
])
def test_options_that_do_not_apply_are_usage_errors(tmp_path, args, pattern):
    np.save(tmp_path / "l.npy", np.random.default_rng(0).normal(0, 0.5, size=(20, 10)))
    args = [tmp_path / "l.npy" if a == "L" else a for a in args]
    fails(2, pattern, *args)


def test_npz_needs_the_logits_key_and_complex_logits_are_refused(tmp_path):
    arr = np.random.default_rng(0).normal(0, 0.5, size=(20, 10))
    np.savez(tmp_path / "other.npz", arr)
    fails(2, "no array named 'logits'", "epsilon", "--classes", 10, "--logits",
          tmp_path / "other.npz")
    np.save(tmp_path / "c.npy", arr + 1j * arr)
    fails(2, "complex", "epsilon", "--classes", 10, "--logits", tmp_path / "c.npy")
    np.savez(tmp_path / "c.npz", logits=arr + 0j)
    fails(2, "complex", "epsilon", "--classes", 10, "--logits", tmp_path / "c.npz")
    with pytest.raises(UsageError, match="complex"):
        from_array(arr + 0.5j)


# ------------------------------------------------------------ user losses
USER = textwrap.dedent("""
    import sys
    import torch
    F = torch.nn.functional

    def nan_outside_probe(logits, target):
        loss = F.cross_entropy(logits, target, reduction='none')
        if logits.shape[0] > 4:  # the probe uses 4 samples, then 1
            return torch.where(logits[:, 0] > 0, torch.full_like(loss, float('nan')), loss)
        return loss

    def exits_outside_probe(logits, target):
        if logits.shape[0] > 4:
            sys.exit(0)
        return F.cross_entropy(logits, target, reduction='none')

    def exits_at_once(logits, target):
        raise SystemExit(0)
""")


@pytest.fixture
def user_module(tmp_path):
    (tmp_path / "edgelosses.py").write_text(USER)
    return tmp_path


def _calibrate(cwd, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "calibrate_cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def test_nan_from_a_user_loss_is_an_error(user_module, monkeypatch):
    monkeypatch.chdir(user_module)
    monkeypatch.syspath_prepend(str(user_module))
    fails(2, "non-finite loss", "epsilon", "--classes", 10, "--loss",
          "edgelosses:nan_outside_probe", "--samples", 64)


@pytest.mark.parametrize("fn", ["exits_outside_probe", "exits_at_once"])
def test_sys_exit_in_a_user_loss_does_not_end_calibrate_silently(user_module, fn):
    r = _calibrate(user_module, "epsilon", "--classes", 10, "--loss", f"edgelosses:{fn}",
                   "--samples", 64, "--json")
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "sys.exit(0)" in r.stderr
    assert r.stderr.count("\n") == 1


# ----------------------------------------------------------------- memory
MEMORY_PROBE = textwrap.dedent("""
    import sys, tracemalloc
    import numpy as np
    from calibrate_cli.engine.average import Averager
    from calibrate_cli.engine.logits import from_array
    from calibrate_cli.losses import get_loss
    n = int(sys.argv[1])
    logits = np.random.default_rng(0).normal(0, 0.6, size=(n // 100, 100)).astype(np.float32)
    tracemalloc.start()
    av = Averager(from_array(logits, atoms=0))
    spec = get_loss("mae")
    av.mean_delta(spec, spec.defaults(), 1000, [0.0, 5.0])
    av.slope(spec, spec.defaults(), 1000, 5.0)
    av.log_sum_range(1000)
    print(tracemalloc.get_traced_memory()[1] / n)
""")


def test_atoms_zero_uses_bounded_memory():
    """--atoms 0 evaluates every value as an atom: memory must stay a small multiple of the
    input (the dense [u grid × values] evaluation took about 2.7 KB per value and 23 GB on
    4·10^6 values), not grow with the u grid."""
    n = 200_000
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(n)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    per_value = float(r.stdout)
    assert per_value < 400, f"peak {per_value:.0f} bytes per logit value"
