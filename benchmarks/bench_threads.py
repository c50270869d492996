"""Threads on a busy machine: epoch time of ``calibrate train`` per thread setting, and the
cost of the glyph class list.

    python benchmarks/bench_threads.py                  # the machine as it is
    python benchmarks/bench_threads.py --busy 2         # plus 2 busy-looping processes

For each setting a fresh ``calibrate train`` process trains the default glyph run (K = 100,
MLP1024, batch 256) for --epochs epochs; the figure is the median epoch time of epochs 2..E
(training steps only, from metrics.json). Settings: torch's own default (one thread per
physical core, OpenMP threads spinning while they wait), the same with OMP_WAIT_POLICY=PASSIVE,
one thread, and calibrate's default (no --threads: the free physical cores, passive waits).
The settings are interleaved over --repeats rounds. Then the glyph class list: computed the
old way (a matrix-vector product through multithreaded BLAS), the new way (einsum, one
thread), and read from the shipped file.

Prints the machine (CPU model, cores), the load average before and after, and every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def train_epoch_times(folder: str, env_extra: dict, args: list[str]) -> tuple[list[float], str]:
    """Epoch times of one run, and its 'threads: ...' line."""
    out = tempfile.mkdtemp(dir=folder)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(PYTHONPATH=REPO, **env_extra)
    r = subprocess.run([sys.executable, "-m", "calibrate_cli", "train", *args, "--out", out,
                        "-q", "--json"], env=env, check=True, capture_output=True, text=True)
    line = next((ln for ln in r.stderr.splitlines() if ln.startswith("threads:")), "")
    with open(os.path.join(out, "metrics.json")) as fh:
        return [r["time_s"] for r in json.load(fh)["epochs"]], line


def glyph_list_times() -> dict[str, float]:
    import numpy as np

    from calibrate_cli.train import glyphs as G

    G._candidates()  # fonts loaded before timing
    out = {}
    t = time.perf_counter()
    cands, kept = G._candidates(), []
    sigs = np.zeros((len(cands), 256))
    for cp in cands:  # the previous implementation: sigs @ s through BLAS
        img = G.render_base(cp, G.FACES[0])
        if img is None or img.mean() < G.MIN_INK:
            continue
        s = G._signature(img)
        if kept and float((sigs[:len(kept)] @ s).max()) >= G.SIMILARITY_LIMIT:
            continue
        sigs[len(kept)] = s
        kept.append(cp)
    out["old (BLAS threads)"] = time.perf_counter() - t
    t = time.perf_counter()
    new = G._compute_classes()
    out["new (einsum, 1 thread)"] = time.perf_counter() - t
    assert tuple(kept) == new
    G._all_classes.cache_clear()
    t = time.perf_counter()
    G._all_classes()
    out["shipped list"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes to start")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, REPO)
    from calibrate_cli.train import threads as T

    cores = T.physical_cores()
    print(f"machine: {cpu_model()}, {len(T.available_cpus())} logical CPUs, {cores} physical "
          f"cores; Python {platform.python_version()}")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    try:
        time.sleep(5 if hogs else 0)
        print(f"busy-looping processes started: {a.busy}; load average before: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        settings = {
            f"{cores} threads, spinning (torch's default)": ({"OMP_WAIT_POLICY": "ACTIVE"},
                                                            ["--threads", str(cores)]),
            f"{cores} threads, passive waits": ({"OMP_WAIT_POLICY": "PASSIVE"},
                                                ["--threads", str(cores)]),
            "1 thread": ({"OMP_WAIT_POLICY": "ACTIVE"}, ["--threads", "1"]),
            "calibrate's default (no --threads)": ({}, []),
        }
        times = {k: [] for k in settings}
        chosen = set()
        with tempfile.TemporaryDirectory() as folder:
            for _ in range(a.repeats):
                for name, (env_extra, extra) in settings.items():
                    ts, line = train_epoch_times(folder, env_extra,
                                                 ["--epochs", str(a.epochs), *extra])
                    times[name] += ts[1:]
                    if not extra:
                        chosen.add(line)
        print(f"calibrate train (glyphs K = 100, MLP1024, batch 256), median epoch time of "
              f"epochs 2..{a.epochs} over {a.repeats} runs:")
        for name, ts in times.items():
            print(f"  {name:<40} {statistics.median(ts):7.2f} s")
        for line in sorted(chosen):
            print(f"  calibrate's default printed: {line}")
        print("glyph class list (2,663 classes):")
        for name, t in glyph_list_times().items():
            print(f"  {name:<40} {t:7.2f} s")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        for h in hogs:
            h.kill()
            h.wait()


if __name__ == "__main__":
    main()
