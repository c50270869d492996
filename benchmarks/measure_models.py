"""Logit statistics of the standard models at initialisation, and what ε and q become.

Usage: python benchmarks/measure_models.py [--batches 2] [--batch-size 128]
       [--seeds 0,1,2] [--device auto] [--json out.json]

For each model (CIFAR variant on 3x32x32 Gaussian inputs; mlp1024 also on
1x28x28, the Fashion-MNIST shape) and K in {10, 100, 1000}: the logits at the
default initialisation (``calibrate_cli.measure.measure_logits``), their std
(per-row centred, the engine's convention), the spread of std over seeds, the
skewness, excess kurtosis, class spread and KS distance to the fitted Gaussian;
then MAE's ε (criterion match, K_ref = 10) and GCE's q (0.7 at K = 100 -> K =
1000) with the measured (empirical) distribution and with the Gaussian of the
same std. Prints a Markdown table (quoted in docs/measure.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from calibrate_cli.engine.average import Averager  # noqa: E402
from calibrate_cli.engine.logits import Gaussian  # noqa: E402
from calibrate_cli.losses import get_loss, resolve_params  # noqa: E402
from calibrate_cli.measure import measure_logits  # noqa: E402
from calibrate_cli.engine.solve import solve_epsilon, solve_q  # noqa: E402

CASES = [("mlp1024", (1, 28, 28)), ("mlp1024", (3, 32, 32)), ("cnn8", (3, 32, 32)),
         ("resnet18", (3, 32, 32)), ("resnet34", (3, 32, 32)), ("resnet50", (3, 32, 32))]
CLASSES = (10, 100, 1000)


def calibrations(dist, classes):
    mae = get_loss("mae")
    av = Averager(dist)
    eps = solve_epsilon(mae, resolve_params(mae), classes, dist, averager=av).epsilon
    q = solve_q(100, 1000, dist, q_from=0.7, averager=av).value
    return eps, q


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write every number to this file")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for model, shape in CASES:
        for k in CLASSES:
            t0 = time.perf_counter()
            m = measure_logits(model, k, input_shape=shape, batches=a.batches,
                               batch_size=a.batch_size, seeds=seeds, device=a.device)
            s = m.stats
            eps_e, q_e = calibrations(m.distribution(), k)
            eps_g, q_g = calibrations(Gaussian(0.0, s["std"]), k)
            row = {"model": model, "input": "x".join(map(str, shape)), "classes": k,
                   "std": s["std"], "std_seed_min": min(s["per_seed_std"]),
                   "std_seed_max": max(s["per_seed_std"]), "skewness": s["skewness"],
                   "excess_kurtosis": s["excess_kurtosis"], "class_spread": s["class_spread"],
                   "input_spread": s["input_spread"], "ks": s["ks_distance"],
                   "eps_empirical": eps_e, "eps_gaussian": eps_g,
                   "q_empirical": q_e, "q_gaussian": q_g,
                   "seconds": time.perf_counter() - t0, "device": m.meta["device"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"Inputs: Gaussian N(0,1) per pixel; {a.batches}x{a.batch_size} inputs per seed, "
          f"seeds {a.seeds}; batch norm in training mode. std: per-row centred logits.")
    print()
    print("| model | input | K | std (seeds min–max) | skew | ex. kurt | class spread | KS | "
          "ε MAE emp. | ε MAE Gauss | q emp. | q Gauss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['classes']} | {r['std']:.3f} "
              f"({r['std_seed_min']:.3f}–{r['std_seed_max']:.3f}) | {r['skewness']:+.2f} | "
              f"{r['excess_kurtosis']:+.2f} | {r['class_spread']:.3f} | {r['ks']:.3f} | "
              f"{r['eps_empirical']:.3f} | {r['eps_gaussian']:.3f} | {r['q_empirical']:.3f} | "
              f"{r['q_gaussian']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
