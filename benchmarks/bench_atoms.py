"""Memory and time of ``--atoms 0`` (every measured value an atom) against the default atoms.

Writes a file of N measured logits (float32, [N/1000, 1000], N(0, 0.6²): a ResNet-like spread),
then runs ``calibrate epsilon --classes 1000 --logits FILE`` with ``--atoms 0`` and with the
default 2048 (and 16384) atoms, each in its own process, and prints for each: ε, the wall time and
the peak resident memory of the process (ru_maxrss). The exact engine evaluates the Laplace
transform of the logit distribution in blocks of bounded size, so memory grows like N (a few
copies of the values), not like N × the size of its u grid.

Usage: python benchmarks/bench_atoms.py [--values N]   (default 4,000,000: a 16 MB file; the
--atoms 0 run then takes minutes)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

RSS = ("import atexit, resource, runpy, sys\n"
       "atexit.register(lambda: sys.stderr.write("
       "f'maxrss_kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n'))\n"
       "sys.argv = ['calibrate'] + sys.argv[1:]\n"
       "runpy.run_module('calibrate_cli', run_name='__main__')\n")


def run(path: str, atoms: int | None) -> tuple[float, float, float]:
    args = ["epsilon", "--classes", "1000", "--logits", path, "--json"]
    if atoms is not None:
        args += ["--atoms", str(atoms)]
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RSS, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(r.stderr)
    import json

    eps = json.loads(r.stdout)["epsilon"]
    kb = [int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("maxrss_kb")]
    return eps, wall, kb[-1] / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=4_000_000)
    n = ap.parse_args().values
    rows = max(2, n // 1000)
    logits = np.random.default_rng(0).normal(0, 0.6, size=(rows, 1000)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logits.npy")
        np.save(path, logits)
        size = os.path.getsize(path) / 2**20
        print(f"{logits.size} logit values ({size:.0f} MiB file), epsilon --classes 1000")
        results = {}
        for atoms in (None, 16384, 0):
            results[atoms] = run(path, atoms)
        ref = results[0][0]
        for atoms, (eps, wall, mib) in results.items():
            label = "default (2048)" if atoms is None else str(atoms)
            print(f"  --atoms {label:>15}: ε = {eps:.6f} (Δ vs all values {eps - ref:+.1e}), "
                  f"{wall:7.1f} s, peak RSS {mib:6.0f} MiB")


if __name__ == "__main__":
    main()
