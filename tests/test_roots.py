"""The vectorised bracketing root finder (roots.py) and the incremental representation check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from calibrate_cli.engine.laplace import Representation, check_representation, laplace_inverse, u_grid
from calibrate_cli.engine.roots import bracketed_root

XTOL = 1e-12


class Counted:
    def __init__(self, f):
        self.f, self.calls, self.points = f, 0, 0

    def __call__(self, z):
        z = np.asarray(z, dtype=float)
        self.calls += 1
        self.points += z.size
        return self.f(z)


@pytest.mark.parametrize("c", [-3.7, 0.0, 0.123456789, 2.5, 41.0])
def test_smooth_root_to_xtol_in_few_calls(c):
    """A bump-like smooth function (as <δ_k>(z) minus a target): the root agrees with Brent's
    to 2·xtol, and takes at most 6 calls of 2 points (Brent: about 10 calls of 1)."""
    def f(z):
        return np.tanh(z - c) * (1.0 + 0.3 * (z - c + 0.4) ** 2) + 0.05 * (z - c) ** 3
    F = Counted(f)
    a, b = c - 1.3, c + 0.7
    r = bracketed_root(F, a, b, float(f(np.array(a))), float(f(np.array(b))), xtol=XTOL)
    ref = brentq(lambda z: float(f(np.array(z))), a, b, xtol=1e-15, rtol=1e-15)
    assert abs(r - ref) <= 2 * XTOL + 8 * np.finfo(float).eps * abs(ref)
    assert F.calls <= 6 and F.points <= 12, (F.calls, F.points)


def test_discontinuous_function_still_bracketed():
    """A jump (interpolation useless): the answer still lies within xtol of the sign change,
    through the fallback."""
    c = 0.3141592653589793
    F = Counted(lambda z: np.where(z > c, 1.0, -1.0))
    r = bracketed_root(F, -2.0, 3.0, -1.0, 1.0, xtol=XTOL)
    assert abs(r - c) <= 2 * XTOL


def test_known_points_and_exact_zeros():
    f = lambda z: z ** 3 - 2.0  # noqa: E731
    F = Counted(f)
    known = {0.0: -2.0, 3.0: 25.0}  # neighbours outside the bracket help the interpolation
    r = bracketed_root(F, 1.0, 2.0, -1.0, 6.0, xtol=XTOL, known=known)
    assert abs(r - 2 ** (1 / 3)) <= 2 * XTOL
    assert bracketed_root(F, 1.0, 2.0, 0.0, 6.0, xtol=XTOL) == 1.0
    assert bracketed_root(F, 1.0, 2.0, -1.0, 0.0, xtol=XTOL) == 2.0


def test_incremental_representation_check_equals_a_full_check():
    """Extending the checked range of ln x checks only the new lattice points; the bounds must
    be those of checking the whole range at once (GCE q = 0.7, as the q table's kernels)."""
    q = 0.7

    def H(x):
        p = 1.0 / (1.0 + x)
        return (1.0 - p ** q) / q

    u = u_grid(H, 1.0, -60.0)

    def rep():
        return Representation(u, laplace_inverse(H, u))

    step = rep()
    check_representation(step, H, 0.0, -10.3, 12.0)
    check_representation(step, H, 0.0, -30.7, 230.0)  # wider on both sides (and past 200)
    check_representation(step, H, 0.0, -33.2, 236.0)  # a little wider: the largest errors are inside
    full = rep()
    check_representation(full, H, 0.0, -33.2, 236.0)
    # (the kernel's scale is fixed by the first check, as before: not compared)
    assert (step.err_a, step.err_b, step.err_slope) == (full.err_a, full.err_b, full.err_slope)
    assert (step.log_x_lo, step.log_x_hi) == (full.log_x_lo, full.log_x_hi)
    assert math.isfinite(full.err_b)


@pytest.mark.parametrize("loss,crit", [("mae", "match"), ("gce", "match"), ("nce-mae", "match"),
                                       ("nf-mae", "peak")])
def test_tables_skip_only_the_other_root(loss, crit):
    """The tables solve ε with other_root=False: the same ε, error and δ as the command line's
    solve, only without the root on the other side of the peak."""
    from calibrate_cli.engine.average import Averager
    from calibrate_cli.engine.logits import Gaussian
    from calibrate_cli.losses import get_loss, resolve_params
    from calibrate_cli.engine.solve import solve_epsilon

    spec = get_loss(loss)
    dist = Gaussian(0.0, 0.5)
    out = []
    for other in (True, False):
        av = Averager(dist, samples=256, seed=0)
        out.append(solve_epsilon(spec, resolve_params(spec), 300, dist, criterion=crit,
                                 averager=av, other_root=other))
    full, short = out
    assert (short.epsilon, short.error, short.delta_after) == (full.epsilon, full.error,
                                                              full.delta_after)
    assert short.other_root is None
    assert crit == "peak" or full.other_root is not None


def test_a_peak_beyond_the_window_is_found_not_called_monotone():
    """biTemp's tempered softmax (t2 = 1.2) puts the peak of <δ_k> at K = 10^5 about 42 above
    the logit mean, just beyond the first scan (which ends at 41.6): the scan is widened while
    |<δ_k>| still grows at its end, instead of reporting a monotone curve (as it did)."""
    from calibrate_cli.engine.average import Averager, DRAW_BUDGET
    from calibrate_cli.engine.logits import Gaussian
    from calibrate_cli.losses import get_loss, resolve_params
    from calibrate_cli.engine.solve import solve_epsilon
    from calibrate_cli.engine.window import scan_window

    spec = get_loss("bitemp")
    params = resolve_params(spec)
    dist = Gaussian(0.0, 0.5)
    av = Averager(dist, samples=4096, draw_budget=DRAW_BUDGET)
    k = 100_000
    r = solve_epsilon(spec, params, k, dist, criterion="peak", averager=av)
    assert r.epsilon > scan_window(dist, av, k)[-1]  # beyond the end of the first scan
    around = av.mean_delta(spec, params, k, np.array([r.epsilon - 1, r.epsilon, r.epsilon + 1]))
    assert abs(around.value[1]) > abs(around.value[0]) and abs(around.value[1]) > abs(around.value[2])
    assert abs(av.slope(spec, params, k, r.epsilon).value[0]) < 1e-6


def test_a_curve_flat_at_its_end_stays_monotone():
    """CE's <δ_k> = <σ_k> - 1 tends to -1 below the window: no peak is invented there."""
    from calibrate_cli.engine.average import Averager
    from calibrate_cli.errors import NoSolutionError
    from calibrate_cli.engine.logits import Gaussian
    from calibrate_cli.losses import get_loss
    from calibrate_cli.engine.solve import solve_epsilon

    dist = Gaussian(0.0, 0.5)
    with pytest.raises(NoSolutionError, match="monotone"):
        solve_epsilon(get_loss("ce"), {}, 1000, dist, criterion="peak", averager=Averager(dist))


@pytest.mark.parametrize("loss,K", [("nce", 101144), ("nce", 1000000), ("nfl", 434671),
                                    ("bitemp", 1000000)])
def test_monte_carlo_peak_error_covers_where_another_root_search_lands(loss, K):
    """Flat Monte Carlo peaks (std 0.05 at large K: curvature 1e-12 and below; the table's
    draws): root searches of the slope from other brackets, to tolerances below the stated
    error, land within it. NCE's slope is exact per draw (``mc_slope``); NFL's and biTemp's are
    central differences, whose rounding floor the error includes."""
    from calibrate_cli.tables import build as T
    from calibrate_cli.losses import get_loss
    from calibrate_cli.tables.run import Averagers

    row = next(r for r in T.epsilon_rows() if r["loss"] == loss and r["criterion"] == "peak"
               and r["classes"] == K and r["logit_std"] == 0.05)
    avs = Averagers()
    out = T.compute_epsilon(row, avs)
    av = avs.get(row["logit_std"], row["samples"], row["seed"])
    spec = get_loss(loss)
    params = T._full_params(spec, T.parse_params(row["params"]))

    def slope(z):
        return av.slope(spec, params, row["classes"], z).value

    zs, err = out["epsilon"], out["error"]  # μ = 0: ε is the peak's z
    for half, xtol in ((1e-3, 1e-9), (3e-4, 1e-10), (2e-3, 1e-12), (1e-2, 1e-9), (5e-3, 1e-11)):
        a, b = zs - half, zs + 0.7 * half
        xtol = min(xtol, err / 10)
        other = bracketed_root(slope, a, b, float(slope(a)[0]), float(slope(b)[0]), xtol=xtol)
        assert abs(other - zs) <= err, (half, xtol, other - zs, err)
