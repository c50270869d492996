"""How good the up-front estimate of Monte Carlo work is (``calibrate_cli.engine.cost``).

For a few requests whose losses are averaged over whole logit vectors (NF-MAE, biTemp), each
of about half a minute, prints the estimate the command line would show (seconds, whole-vector
evaluations, logits drawn), the time the estimate itself took, and then the measured wall time
and logits drawn of the actual computation (in this process, after the estimate), with the
ratios measured / estimated. The estimate is meant to be right within a factor of about 2
(it times one chunk on the machine as loaded at that moment).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_mc_cost.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from calibrate_cli import cost  # noqa: E402
from calibrate_cli.engine.average import Averager  # noqa: E402
from calibrate_cli.engine.logits import Gaussian  # noqa: E402
from calibrate_cli.losses import get_loss, resolve_params  # noqa: E402
from calibrate_cli.engine.solve import solve_epsilon, solve_transfer  # noqa: E402

CASES = [
    ("epsilon --loss nf-mae -k 1000 --samples 1024", "epsilon", "nf-mae", 1000, 1024, None),
    ("epsilon --loss bitemp -k 3000 --samples 256 --criterion peak", "peak", "bitemp", 3000,
     256, None),
    ("transfer --loss bitemp --param t1 --from 100 --to 1000 --samples 1024", "transfer",
     "bitemp", 1000, 1024, ("t1", 100)),
    ("curve --loss nf-mae -k 10000 --points 21 --samples 256", "curve", "nf-mae", 10000, 256,
     None),
]


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'request':<72} {'est. s':>7} {'took':>5} {'evals':>5} {'real s':>7} "
          f"{'ratio':>5} {'draws ratio':>11}")
    for text, what, name, k, samples, extra in CASES:
        spec = get_loss(name)
        params = resolve_params(spec)
        av = Averager(Gaussian(0.0, 0.5), samples=samples)
        if what == "transfer":
            work = cost.transfer_evaluations(spec, params, extra[0], extra[1], k)
        elif what == "curve":
            work = {k: 21 + 2}
        else:
            work = cost.epsilon_evaluations(av, k, "peak" if what == "peak" else "match", 10)
        t0 = time.perf_counter()
        c = cost.monte_carlo_cost(av, [(spec, params, work)])
        t1 = time.perf_counter()
        drawn = [0]
        av.on_draws = lambda n: drawn.__setitem__(0, drawn[0] + n)
        with np.errstate(all="ignore"):
            if what == "transfer":
                solve_transfer(spec, params, extra[0], extra[1], k, av.dist, averager=av)
            elif what == "curve":
                av.mean_delta(spec, params, k, np.linspace(-3.0, 15.0, 21))
                av.mean_delta(spec, params, k, np.array([0.0, 0.0]))
            else:
                solve_epsilon(spec, params, k, av.dist,
                              criterion="peak" if what == "peak" else "match", averager=av)
        t2 = time.perf_counter()
        print(f"{text:<72} {c.seconds:7.1f} {t1 - t0:5.2f} {c.evaluations:5d} {t2 - t1:7.1f} "
              f"{(t2 - t1) / c.seconds:5.2f} {drawn[0] / c.draws:11.2f}")


if __name__ == "__main__":
    main()
