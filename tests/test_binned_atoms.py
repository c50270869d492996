"""ψ(t) = E[1 - e^{-tY}] and E[tY e^{-tY}] from binned atoms (engine/binned.py, what
``--atoms 0`` uses on many values) against the sums over every atom done exactly (math.fsum),
for narrow and wide logit distributions and t from where the series takes over to far beyond
the largest atom."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibrate_cli.engine.binned import BinnedAtoms, _q_polynomials


@pytest.mark.parametrize("std", [0.05, 0.6, 3.0, 10.0])
def test_binned_psi_is_the_exact_sum_over_every_atom(std):
    rng = np.random.default_rng(int(std * 100))
    x = np.sort(rng.normal(0.0, std, 40_000))
    x -= x.mean()
    w = np.full(x.size, 1.0 / x.size)
    binned = BinnedAtoms(x, w)
    log_t = np.linspace(math.log(1e-3) - x[-1], 45.0, 37)  # from the series' end upwards
    psi, slope = binned.psi(log_t, True)
    for lt, p, s in zip(log_t, psi, slope):
        ty = np.exp(lt + x)
        ref = math.fsum(-np.expm1(-ty)) / x.size
        ref_slope = math.fsum(ty * np.exp(-ty)) / x.size
        assert abs(p - ref) <= 4e-16 + 1e-14 * ref, (lt, p, ref)
        assert abs(s - ref_slope) <= 1e-16 + 1e-13 * ref_slope, (lt, s, ref_slope)


def test_the_derivative_polynomials_are_the_gumbel_derivatives():
    """G(s) = 1 - exp(-e^s): G^(m) = Q_m(e^s) e^{-e^s}, against central differences of G^(m-1)."""
    q = _q_polynomials(8)
    s = np.linspace(-4.0, 3.0, 15)
    y = np.exp(s)

    def g(m, s):
        yy = np.exp(s)
        return -np.expm1(-yy) if m == 0 else np.polyval(q[m][::-1], yy) * np.exp(-yy)

    h = 1e-5
    for m in range(1, 8):
        numeric = (g(m - 1, s + h) - g(m - 1, s - h)) / (2 * h)
        np.testing.assert_allclose(g(m, s), numeric, rtol=1e-6, atol=1e-8 * 3.0 ** m)
    assert np.allclose(np.polyval(q[1][::-1], y), y)
