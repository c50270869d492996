"""Time and memory of ``--atoms 0`` (every measured value an atom) against the default atoms.

Writes a file of N measured logits (float32, [N/1000, 1000], N(0, 0.6²): a ResNet-like spread),
then runs ``calibrate epsilon --classes 1000 --logits FILE`` with ``--atoms 0`` and with the
default 2048 (and 16384) atoms, each in its own process (one thread: OMP_NUM_THREADS=1), and
prints for each: ε, the wall time, the CPU time and the peak resident memory of the process
(ru_maxrss). With ``--atom-by-atom`` it also runs ``--atoms 0`` the way it ran before the atoms
were binned (every ψ(t) a sum over all N atoms: :mod:`calibrate_cli.engine.binned` switched
off), for the before/after figure; the two ε agree to rounding.

Usage: python benchmarks/bench_atoms.py [--values N] [--atom-by-atom]   (default 10^6 values,
a 4 MB file; atom by atom, 10^6 values take minutes)
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

RSS = ("import atexit, os, resource, runpy, sys\n"
       "atexit.register(lambda: sys.stderr.write("
       "f'maxrss_kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n'))\n"
       "if os.environ.get('BENCH_ATOM_BY_ATOM'):\n"
       "    import calibrate_cli.engine.laplace as laplace\n"
       "    laplace.MIN_ATOMS = float('inf')\n"
       "sys.argv = ['calibrate'] + sys.argv[1:]\n"
       "runpy.run_module('calibrate_cli', run_name='__main__')\n")


def run(path: str, atoms: int | None, by_atom: bool = False) -> tuple[float, float, float, float]:
    args = ["epsilon", "--classes", "1000", "--logits", path, "--json"]
    if atoms is not None:
        args += ["--atoms", str(atoms)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if by_atom:
        env["BENCH_ATOM_BY_ATOM"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RSS, *args], capture_output=True, text=True,
                       env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode:
        raise SystemExit(r.stderr)
    import json

    eps = json.loads(r.stdout)["epsilon"]
    kb = [int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("maxrss_kb")]
    return eps, wall, cpu, kb[-1] / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=1_000_000)
    ap.add_argument("--atom-by-atom", action="store_true",
                    help="also run --atoms 0 as before the binning (slow)")
    opts = ap.parse_args()
    n = opts.values
    rows = max(2, n // 1000)
    logits = np.random.default_rng(0).normal(0, 0.6, size=(rows, 1000)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logits.npy")
        np.save(path, logits)
        size = os.path.getsize(path) / 2**20
        print(f"{logits.size} logit values ({size:.0f} MiB file), epsilon --classes 1000")
        results = {}
        for atoms in (None, 16384, 0):
            results[str(atoms)] = run(path, atoms)
        if opts.atom_by_atom:
            results["0, atom by atom"] = run(path, 0, by_atom=True)
        ref = results["0"][0]
        for atoms, (eps, wall, cpu, mib) in results.items():
            label = "default (2048)" if atoms == "None" else atoms
            print(f"  --atoms {label:>15}: ε = {eps:.12f} (Δ vs all values {eps - ref:+.1e}), "
                  f"{wall:7.1f} s wall, {cpu:7.1f} s CPU, peak RSS {mib:6.0f} MiB")


if __name__ == "__main__":
    main()
