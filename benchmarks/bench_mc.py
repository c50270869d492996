"""Monte Carlo losses (NFL, NF-MAE, biTemp): reduced draws against whole logit vectors.

Prints, each measured in this run on this machine:

1. ``calibrate epsilon --loss nf-mae --classes 10000`` and ``--classes 1000000``, cold
   processes (median of --repeats runs): wall time, ε and its error (targets: < 2 s and < 10 s);
2. in-process solves of ε (match) for nf-mae at K = 1000 and 10^4, biTemp (peak) at K = 1000,
   and SCE with its cifar100 preset (RCE's softmax clamp pmin = 1e-7; match) at K = 1000 and
   10^4: the reduced draws (the default) against whole vectors at every evaluation (the
   engine before the reduction, ``Averager(reduce=False)``), same samples and seed, so ε, its
   error and the time compare directly;
3. with ``--tables``: ``calibrate tables --jobs 2`` into a temporary folder, wall and CPU time
   (target < 60 s);
4. with ``--device cuda`` (or torch-cpu): the cold commands of 1. with ``--device``.

Wall and CPU time are both printed: on a machine shared with other work the wall time grows
with the load.

Usage: python benchmarks/bench_mc.py [--repeats N] [--quick] [--tables] [--device cuda]
[--only LOSS] (--quick: whole vectors with 1024 samples at K = 10^4 instead of 4096, a minute
instead of several; --only sce: the in-process cases of that loss alone, no cold commands.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli() -> list[str]:
    """The ``calibrate`` script pip installed, if it runs this checkout; else ``python -m``
    (about 25 ms slower) with this checkout first on the path."""
    script = os.path.join(sysconfig.get_path("scripts"), "calibrate")
    probe = subprocess.run([PY, "-c", "import calibrate_cli; print(calibrate_cli.__file__)"],
                           capture_output=True, text=True, cwd="/")
    installed = os.path.dirname(os.path.dirname(probe.stdout.strip() or "/x/y"))
    if os.access(script, os.X_OK) and os.path.samefile(installed, ROOT):
        return [script]
    return [PY, "-m", "calibrate_cli"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cold(args: list[str], repeats: int) -> tuple[float, float, dict]:
    """Median wall and CPU time of ``calibrate <args> --json`` in fresh processes, its output.

    On a machine shared with other work the wall time grows with the load, the CPU time (user +
    system of the process) much less: both are printed."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        c, t = _children_cpu(), time.perf_counter()
        r = subprocess.run(_cli() + args + ["--json"], capture_output=True, text=True, env=env,
                           check=True)
        walls.append(time.perf_counter() - t)
        cpus.append(_children_cpu() - c)
        out = json.loads(r.stdout)
    return statistics.median(walls), statistics.median(cpus), out


def solve(loss: str, K: int, criterion: str, samples: int, reduce: bool,
          preset: str | None = None):
    sys.path.insert(0, ROOT)
    from calibrate_cli.engine.average import Averager
    from calibrate_cli.engine.logits import Gaussian
    from calibrate_cli.losses import get_loss, resolve_params
    from calibrate_cli.engine.solve import solve_epsilon

    spec = get_loss(loss)
    dist = Gaussian(0.0, 0.5)
    av = Averager(dist, samples=samples, seed=0, reduce=reduce)
    c, t = time.process_time(), time.perf_counter()
    r = solve_epsilon(spec, resolve_params(spec, preset=preset), K, dist, criterion=criterion,
                      averager=av)
    return time.perf_counter() - t, time.process_time() - c, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tables", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--only", default=None, help="in-process cases of this loss alone")
    args = ap.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"cold commands (median of {args.repeats}; {' '.join(_cli())} epsilon ... --json), "
          "wall / CPU seconds:")
    device = ["--device", args.device] if args.device else []
    for K, target in ((10_000, 2.0), (1_000_000, 10.0)) if not args.only else ():
        t, c, d = cold(["epsilon", "--loss", "nf-mae", "--classes", str(K)] + device,
                       args.repeats)
        print(f"  nf-mae K = {K:>7}{' ' + args.device if args.device else ''}: {t:6.2f} / "
              f"{c:5.2f} s (target < {target:g} s)  ε = {d['epsilon']:.6f} ± {d['error']:.1e}, "
              f"{d['monte_carlo']['samples']} samples")

    print("in-process solve of ε, reduced draws against whole vectors (same draws), wall / CPU s:")
    cases = [("nf-mae", 1000, "match", 4096, None), ("nf-mae", 10_000, "match",
                                                      1024 if args.quick else 4096, None),
             ("bitemp", 1000, "peak", 1024, None),
             ("sce", 1000, "match", 4096, "cifar100"), ("sce", 10_000, "match", 4096, "cifar100")]
    for loss, K, crit, samples, preset in [c for c in cases if args.only in (None, c[0])]:
        t_new, c_new, new = solve(loss, K, crit, samples, True, preset)
        t_old, c_old, old = solve(loss, K, crit, samples, False, preset)
        name = loss + (f" ({preset})" if preset else "")
        print(f"  {name:16s} K = {K:>6} {crit:5s} {samples} samples: reduced {t_new:6.2f} / "
              f"{c_new:5.2f} s ε = {new.epsilon:.6f} ± {new.error:.1e} | whole vectors "
              f"{t_old:7.2f} / {c_old:6.2f} s ε = {old.epsilon:.6f} ± {old.error:.1e} | "
              f"CPU ratio {c_old / c_new:5.0f}, Δε = {new.epsilon - old.epsilon:.1e}")

    if args.tables:
        with tempfile.TemporaryDirectory() as tmp:
            c = _children_cpu()
            t = time.perf_counter()
            env = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
            r = subprocess.run(_cli() + ["tables", "--jobs", "2", "--out-dir", tmp],
                               capture_output=True, text=True, env=env, check=True)
            wall = time.perf_counter() - t
            cpu = _children_cpu() - c
            print(f"calibrate tables --jobs 2: {wall:.1f} s wall (target < 60 s), {cpu:.1f} s CPU "
                  f"in all processes; load average now {os.getloadavg()[0]:.1f}")
            for line in r.stderr.splitlines():
                if " rows " in line:
                    print("  " + line.split(" -> ")[0].strip())


if __name__ == "__main__":
    main()
