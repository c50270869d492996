"""The torch side of the loss registry (your own losses: test_user_losses.py).

For every registered loss, autograd of ``spec.torch_loss(params)`` with respect
to the correct-class logit must equal the independent NumPy kernel
``spec.delta`` (closed-form δ_k), at defaults, presets, random valid
parameters and parameter-range ends. Plus numerical stability and precision
modes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibrate_cli.losses import get_loss, list_losses, resolve_params
from calibrate_cli.losses import torch_impl

LOSSES = list_losses()
LOSS_NAMES = [s.name for s in LOSSES]
N = 64


def autograd_delta(spec, params, logits_np, dtype=torch.float64):
    """∂L/∂z_0 per sample by autograd, target all zeros (correct class in column 0)."""
    z = torch.tensor(logits_np, dtype=dtype, requires_grad=True)
    target = torch.zeros(z.shape[0], dtype=torch.long)
    loss = spec.torch_loss(params)(z, target)
    assert loss.shape == (z.shape[0],)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return grad[:, 0].to(torch.float64).numpy()


def random_params(spec, rng, count=3):
    """A few random valid parameter sets; flags set at random."""
    out = []
    for _ in range(count):
        values = {}
        for p in spec.params:
            if p.flag:
                v = float(rng.integers(0, 2))
            elif math.isfinite(p.low) and math.isfinite(p.high):
                v = rng.uniform(p.low, p.high)
                v = min(max(v, p.low + 1e-3), p.high - 1e-3)
            elif math.isfinite(p.low):
                v = p.low + math.exp(rng.uniform(math.log(0.05), math.log(10.0)))
            else:
                v = rng.normal(scale=3.0)
            values[p.name] = float(v)
        if "clamp" in values:  # spread the clamp over decades (A = -ln c)
            values["clamp"] = float(10.0 ** rng.uniform(-8, -0.5))
        out.append(resolve_params(spec, overrides=values))
    return out


def edge_params(spec):
    """Closed range ends and both values of every flag, one parameter at a time."""
    out = []
    for p in spec.params:
        ends = []
        if p.flag:
            ends = [0.0, 1.0]
        else:
            if math.isfinite(p.low) and not p.low_open:
                ends.append(p.low)
            if math.isfinite(p.high) and not p.high_open:
                ends.append(p.high)
        for v in ends:
            out.append(resolve_params(spec, overrides={p.name: v}))
    return out


def param_sets(spec, seed):
    rng = np.random.default_rng(seed)
    sets = [resolve_params(spec)]
    sets += [resolve_params(spec, preset=name) for name in spec.presets]
    sets += edge_params(spec)
    sets += random_params(spec, rng)
    return sets


def test_every_torch_name_exists_with_the_param_names():
    """Each spec's torch function exists and takes exactly the spec's parameter names."""
    import inspect

    for spec in LOSSES:
        for term in spec.terms(spec.defaults()):
            fn = getattr(torch_impl, term.loss.torch_name)
            names = list(inspect.signature(fn).parameters)
            assert names[:2] == ["logits", "target"], spec.name
            assert set(names[2:]) == set(term.loss.param_names), (spec.name, names)


@pytest.mark.parametrize("K", [2, 10, 100])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_autograd_matches_numpy_delta(name, K):
    spec = get_loss(name)
    rng = np.random.default_rng(1000 * K + LOSS_NAMES.index(name))
    for params in param_sets(spec, seed=K):
        for scale in (0.5, 3.0):
            logits = scale * rng.normal(size=(N, K))
            logits[:8, 0] += 4.0  # some confident correct predictions too
            expected = spec.delta(logits, params)
            got = autograd_delta(spec, params, logits)
            assert np.all(np.isfinite(expected)), (name, params)
            np.testing.assert_allclose(
                got, expected, rtol=1e-6, atol=1e-10 * max(1.0, np.abs(expected).max()),
                err_msg=f"{name} K={K} scale={scale} params={params}",
            )


@pytest.mark.parametrize("detach", [0.0, 1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_nfl_both_detach_conventions(gamma, detach):
    spec = get_loss("nfl")
    params = resolve_params(spec, overrides={"gamma": gamma, "detach": detach})
    logits = np.random.default_rng(7).normal(scale=2.0, size=(N, 10))
    np.testing.assert_allclose(
        autograd_delta(spec, params, logits), spec.delta(logits, params), rtol=1e-6, atol=1e-12
    )


def test_nfl_detach_changes_the_gradient_but_not_the_value():
    fn = get_loss("nfl").torch_loss
    z = torch.tensor(np.random.default_rng(3).normal(size=(N, 10)), requires_grad=True)
    t = torch.zeros(N, dtype=torch.long)
    full, det = fn({"gamma": 2.0, "detach": 0.0})(z, t), fn({"gamma": 2.0, "detach": 1.0})(z, t)
    torch.testing.assert_close(full, det)
    g_full = torch.autograd.grad(full.sum(), z)[0]
    g_det = torch.autograd.grad(det.sum(), z)[0]
    assert (g_full - g_det).abs().max() > 1e-3


@pytest.mark.parametrize("t1,t2", [(1.0, 1.0), (0.0, 5.0), (0.8, 2.0), (0.2, 1.0), (1.0, 3.0)])
def test_bitemp_extremes(t1, t2):
    spec = get_loss("bitemp")
    params = resolve_params(spec, overrides={"t1": t1, "t2": t2})
    logits = np.random.default_rng(11).normal(scale=3.0, size=(N, 100))
    np.testing.assert_allclose(
        autograd_delta(spec, params, logits), spec.delta(logits, params), rtol=1e-6, atol=1e-12
    )


def test_tempered_softmax_normalised_and_matches_numpy():
    from calibrate_cli.losses.specs import tempered_softmax

    a = np.random.default_rng(5).normal(scale=4.0, size=(32, 50))
    for t in (1.0, 1.2, 2.0, 5.0):
        p = torch.exp(torch_impl.tempered_log_softmax(torch.tensor(a), t)).numpy()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(p, tempered_softmax(a, t), rtol=1e-10, atol=1e-15)


def test_bitemp_at_t1_t2_one_is_cross_entropy():
    z = torch.tensor(np.random.default_rng(2).normal(size=(N, 10)))
    t = torch.arange(N) % 10
    torch.testing.assert_close(torch_impl.bitemp(z, t, t1=1.0, t2=1.0), torch_impl.ce(z, t))


def test_closed_forms_of_values():
    """Loss values against the formulas written with plain softmax (moderate logits)."""
    z = torch.tensor(np.random.default_rng(4).normal(size=(N, 10)))
    t = torch.arange(N) % 10
    p = torch.softmax(z, 1)[torch.arange(N), t]
    close = torch.testing.assert_close
    close(torch_impl.mae(z, t, scale=2.0), (torch.softmax(z, 1) - torch.nn.functional.one_hot(t, 10)).abs().sum(1))
    close(torch_impl.gce(z, t, q=0.7), (1 - p ** 0.7) / 0.7)
    close(torch_impl.agce(z, t, a=0.6, q=0.6), ((1.6) ** 0.6 - (0.6 + p) ** 0.6) / 0.6)
    close(torch_impl.aul(z, t, a=5.5, q=3.0), ((5.5 - p) ** 3 - 4.5 ** 3) / 3)
    close(torch_impl.ael(z, t, a=2.5), torch.exp(-p / 2.5))
    close(torch_impl.rce(z, t, clamp=1e-4), -math.log(1e-4) * (1 - p))
    logs = torch.log_softmax(z, 1)
    close(torch_impl.nce(z, t), logs[torch.arange(N), t] / logs.sum(1))
    fl = -(1 - logs.exp()) ** 0.5 * logs
    close(torch_impl.nfl(z, t, gamma=0.5), fl[torch.arange(N), t] / fl.sum(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_stable_at_extreme_logits(name, dtype):
    """Logits ±50: finite values and gradients; float64 still matches the kernel."""
    spec = get_loss(name)
    params = resolve_params(spec)
    rng = np.random.default_rng(9)
    for K in (2, 10):
        logits = 50.0 * np.sign(rng.normal(size=(32, K)))
        logits[0] = -50.0
        logits[0, 0] = 50.0  # p = 1 to rounding
        logits[1] = 50.0
        logits[1, 0] = -50.0  # p ~ e^-100
        got = autograd_delta(spec, params, logits, dtype=dtype)
        assert np.all(np.isfinite(got)), name
        if dtype == torch.float64:
            expected = spec.delta(logits, params)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_float32_and_bf16_autocast_agree_with_float64(name):
    spec = get_loss(name)
    params = resolve_params(spec)
    fn = spec.torch_loss(params)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 16, generator=gen)
    layer = torch.nn.Linear(16, 10)
    t = torch.randint(0, 10, (N,), generator=gen)
    with torch.no_grad():
        ref = fn(layer(x).double(), t)
        v32 = fn(layer(x), t)
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), ref, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        v = fn(logits, t)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    # bf16 logits carry about 3 digits; the loss follows the rounded logits.
    torch.testing.assert_close(v, fn(logits.float(), t), rtol=1e-5, atol=1e-6)
    v.mean().backward()
    assert torch.isfinite(layer.weight.grad).all()


# ------------------------------------------------------------- precision at large K
#: The σ_k-only losses and their δ_k = L'(p)·p·(1 - p), written here with p and 1 - p
#: passed separately, so that the reference itself has no cancellation at p -> 0 or p -> 1.
SIGMA_K_DELTAS = {
    "ce": lambda p, q, P: -q,
    "mae": lambda p, q, P: -P["scale"] * p * q,
    "gce": lambda p, q, P: -(p ** P["q"]) * q,
    "agce": lambda p, q, P: -((P["a"] + p) ** (P["q"] - 1)) * p * q,
    "aul": lambda p, q, P: -((P["a"] - p) ** (P["q"] - 1)) * p * q,
    "ael": lambda p, q, P: -np.exp(-p / P["a"]) / P["a"] * p * q,
    "rce": lambda p, q, P: math.log(P["clamp"]) * p * q,
    "sce": lambda p, q, P: -P["alpha"] * q + P["beta"] * math.log(P["clamp"]) * p * q,
}


@pytest.mark.parametrize("name", sorted(SIGMA_K_DELTAS))
def test_float64_gradient_exact_at_extreme_logits(name):
    """Two classes, z_k - z_other = ±38 and ±40: δ_k to 1e-12 relative, both tails.

    (Through expm1(ln p), autograd returned exactly 0 for MAE at logits [-38, 0].)"""
    from scipy.special import expit

    spec = get_loss(name)
    params = resolve_params(spec)
    gaps = np.array([-40.0, -38.0, -5.0, 0.0, 5.0, 38.0, 40.0])
    logits = np.stack([gaps, np.zeros_like(gaps)], axis=1)
    p, q = expit(gaps), expit(-gaps)
    expected = SIGMA_K_DELTAS[name](p, q, params)
    got = autograd_delta(spec, params, logits)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0, err_msg=name)


@pytest.fixture(scope="module")
def wide_logits():
    """Rows of N(0, 0.5²) logits at K = 10^5, 10^6, 10^7, correct class in column 0 moved to
    -2, 0, 2, ln K (p ≈ 1/2) and ln K + 8 (p close to 1)."""
    rng = np.random.default_rng(77)
    out = {}
    for K in (10**5, 10**6, 10**7):
        z = (0.5 * rng.standard_normal((5, K))).astype(np.float32)
        z[:, 0] = [-2.0, 0.0, 2.0, math.log(K), math.log(K) + 8.0]
        out[K] = z
    return out


@pytest.mark.parametrize("name", ["mae", "gce", "agce", "aul", "ael", "rce", "sce"])
def test_float32_gradient_matches_float64_kernel_up_to_1e7_classes(name, wide_logits):
    """float32 autograd (the trainer's precision) within 1e-5 relative of the float64 kernel.

    Through expm1(ln p) the error of MAE's δ_k was 5e-3 at K = 10^5 and 1.0 at 10^7."""
    spec = get_loss(name)
    presets = [resolve_params(spec)] + [resolve_params(spec, preset=p) for p in spec.presets]
    for K, z in wide_logits.items():
        z64 = z.astype(np.float64)
        for params in presets:
            if params.get("pmin", 0.0) > 0:
                continue  # the clamp term is checked on its own below
            expected = spec.delta(z64, params)
            got = autograd_delta(spec, params, z, dtype=torch.float32)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0,
                                       err_msg=f"{name} K={K} {params}")


def published_rce(z, t, clamp=1e-4, pmin=1e-7):
    """RCE as the SCE/APL/ALFs/ANL code writes it: both clamps, then the sum over classes."""
    pred = torch.clamp(torch.softmax(z, dim=1), min=pmin, max=1.0)
    label = torch.clamp(torch.nn.functional.one_hot(t, z.shape[1]).to(z.dtype), min=clamp, max=1.0)
    return -(pred * torch.log(label)).sum(dim=1)


@pytest.mark.parametrize("K,zk", [(10, 0.0), (1000, 16.0), (10**5, 0.0), (10**5, 16.0)])
def test_rce_softmax_clamp_equals_published_code(K, zk):
    """pmin = 1e-7 reproduces the published RCE, value and gradient; δ_k = -A p (1 - p - c_m)."""
    rng = np.random.default_rng(K)
    z = 0.5 * rng.standard_normal((4, K))
    z[:, 0] = zk
    t = torch.zeros(4, dtype=torch.long)
    spec = get_loss("rce")
    params = resolve_params(spec, overrides={"pmin": 1e-7})
    zt = torch.tensor(z, requires_grad=True)
    ours = spec.torch_loss(params)(zt, t)
    (g_ours,) = torch.autograd.grad(ours.sum(), zt)
    zt2 = torch.tensor(z, requires_grad=True)
    ref = published_rce(zt2, t)
    (g_ref,) = torch.autograd.grad(ref.sum(), zt2)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-15)
    # the NumPy kernel (exact part + clamp term) agrees, and the closed form
    sig = np.exp(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))
    p = sig[:, 0]
    c_m = np.where(sig[:, 1:] < 1e-7, sig[:, 1:], 0.0).sum(axis=1)
    closed = math.log(1e-4) * p * (1 - p - c_m)
    np.testing.assert_allclose(spec.delta(z, params), closed, rtol=1e-9)
    np.testing.assert_allclose(g_ref[:, 0].numpy(), closed, rtol=1e-9)
    if K == 10**5 and zk == 16.0:  # the clamp matters here: δ_k 30 % below the unclamped one
        ratio = (1 - p - c_m) / (1 - p)
        assert np.all((ratio > 0.6) & (ratio < 0.8)), ratio


@pytest.mark.parametrize("zk", [12.0, 16.0])
def test_rce_clamp_average_against_autograd_monte_carlo(zk):
    """<δ_k> of RCE with pmin = 1e-7 at K = 1000 (engine: exact part + clamp term) against the
    mean of autograd δ_k of the published code over independent draws, within 4 standard errors."""
    import calibrate_cli as cal

    K, n = 1000, 3000
    rng = np.random.default_rng(2024)
    z = 0.5 * rng.standard_normal((n, K))
    z[:, 0] = zk
    zt = torch.tensor(z, requires_grad=True)
    (g,) = torch.autograd.grad(published_rce(zt, torch.zeros(n, dtype=torch.long)).sum(), zt)
    d = g[:, 0].numpy()
    ref, se = d.mean(), d.std(ddof=1) / math.sqrt(n)
    got = cal.mean_delta(zk, K, "rce", params={"pmin": 1e-7}, samples=2048)
    unclamped = cal.mean_delta(zk, K, "rce").value[0]
    tol = 4 * math.hypot(se, got.error[0])
    assert abs(got.value[0] - ref) < tol, (got.value[0], ref, tol)
    if zk == 16.0:  # the clamp changes the average by far more than the tolerance
        assert abs(unclamped - ref) > 20 * tol, (unclamped, ref, tol)


def test_rce_presets_clamp_the_softmax_as_the_published_code():
    for name in ("sce", "nce-rce", "nf-rce"):
        spec = get_loss(name)
        assert resolve_params(spec)["pmin"] == 0.0
        for preset in spec.presets:
            assert resolve_params(spec, preset=preset)["pmin"] == 1e-7, (name, preset)
