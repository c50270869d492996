"""Speed and memory of the calibration commands (issue: engine and CLI).

Prints, each measured in this run on this machine:

1. cold start: ``calibrate epsilon --classes 1000`` against the baseline
   ``python -c "import numpy, scipy.optimize, typer, rich"`` (median of N runs, interleaved);
   target ratio <= 1.15;
2. the same command at K = 10^7 against K = 10 (target ratio <= 1.2) and the peak
   resident memory of the K = 10^7 process (target < 200 MB);
3. ``calibrate transfer --loss nce-agce --param alpha --from 100 --to 1000 --preset cifar100``
   (Monte Carlo): wall time (target < 5 s) and the reported error (target <= 1e-3);
4. in-process solve times of ε for K = 10 ... 10^7 (no start-up).

Usage: python benchmarks/bench_cli.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys
import sysconfig
import time

PY = sys.executable
BASELINE = [PY, "-c", "import numpy, scipy.optimize, typer, rich"]
RSS = ("import atexit, resource, runpy, sys\n"
       "atexit.register(lambda: sys.stderr.write("
       "f'maxrss_kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n'))\n"
       "sys.argv = ['calibrate'] + sys.argv[1:]\n"
       "runpy.run_module('calibrate_cli', run_name='__main__')\n")


def _console_script() -> list[str]:
    """What a user types: the ``calibrate`` script pip put beside this interpreter (not a
    version-manager shim on PATH, whose own start-up would be measured too); ``-m`` otherwise."""
    script = os.path.join(sysconfig.get_path("scripts"), "calibrate")
    return [script] if os.access(script, os.X_OK) else [PY, "-m", "calibrate_cli"]


CLI = _console_script()


def cli(*args: str) -> list[str]:
    return [*CLI, *args]


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def medians(cmds: dict[str, list[str]], repeats: int) -> dict[str, float]:
    for cmd in cmds.values():  # warm the file cache
        wall(cmd)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeats):
        for k, cmd in cmds.items():
            times[k].append(wall(cmd))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()

    m = medians({
        "baseline": BASELINE,
        "K=1000": cli("epsilon", "--classes", "1000"),
        "K=10": cli("epsilon", "--classes", "10"),
        "K=1e7": cli("epsilon", "--classes", "10000000"),
    }, args.repeats)
    print(f"cold start (median of {args.repeats}, seconds; command: {' '.join(CLI)})")
    print(f"  baseline  import numpy, scipy.optimize, typer, rich   {m['baseline']:.3f}")
    print(f"  calibrate epsilon --classes 1000                       {m['K=1000']:.3f}"
          f"   ratio {m['K=1000'] / m['baseline']:.3f}  (target <= 1.15)")
    print(f"  calibrate epsilon --classes 10                         {m['K=10']:.3f}")
    print(f"  calibrate epsilon --classes 10000000                   {m['K=1e7']:.3f}"
          f"   ratio to K=10 {m['K=1e7'] / m['K=10']:.3f}  (target <= 1.2)")

    r = subprocess.run([PY, "-c", RSS, "epsilon", "--classes", "10000000"], capture_output=True,
                       text=True, check=True)
    kb = int(r.stderr.split("maxrss_kb")[-1].split()[0])
    print(f"  peak resident memory at K = 10^7: {kb / 1024:.1f} MiB  (target < 200 MB)")

    cmd = cli("transfer", "--loss", "nce-agce", "--param", "alpha", "--from", "100", "--to",
              "1000", "--preset", "cifar100", "--json")
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    dt = time.perf_counter() - t
    d = json.loads(out)
    print(f"nce-agce alpha 100 -> 1000 (Monte Carlo, {d['monte_carlo']['samples']} samples): "
          f"alpha = {d['value']:.4f} ± {d['error']:.1e} in {dt:.2f} s  (target < 5 s, ± 1e-3)")

    sys.path.insert(0, ".")
    from calibrate_cli.engine.logits import Gaussian
    from calibrate_cli.losses import get_loss
    from calibrate_cli.engine.solve import solve_epsilon

    print("in-process solve of ε (mae, match), ms:")
    for K in (10, 100, 1000, 10**4, 10**5, 10**6, 10**7):
        best = min(_timed(lambda: solve_epsilon(get_loss("mae"), {"scale": 2.0}, K,
                                                Gaussian(0.0, 0.5))) for _ in range(5))
        print(f"  K = {K:>8}: {best * 1e3:6.1f}")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
