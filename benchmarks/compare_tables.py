"""Compare two folders of tables written by ``calibrate tables`` (their JSON files), row by row.

Prints, per table: rows, rows whose value moved, the largest move |Δ| and the largest move in
units of the row's stated ``error``; the largest relative change of the other numbers (error,
δ before/after); and every row whose status (ok / uncertain / no solution) changed.

Usage: python benchmarks/compare_tables.py OLD_DIR NEW_DIR [--only NAME ...]
Exit code 1 if the rows differ in their inputs or status, or a value moved by more than its
stated error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from calibrate_cli.tables import build as T  # noqa: E402

INPUTS = ("loss", "params", "criterion", "reference_classes", "param", "value_from",
          "classes_from", "classes", "logit_std", "samples", "seed")
OTHERS = ("error", "delta_before", "delta_after")


def _kind(status: str) -> str:
    return status.split(":")[0]


def compare(name: str, old_dir: str, new_dir: str) -> bool:
    old = T.read_table(os.path.join(old_dir, f"{name}.json"))
    new = T.read_table(os.path.join(new_dir, f"{name}.json"))
    key = "epsilon" if name == "epsilon" else "value"
    if len(old.rows) != len(new.rows):
        print(f"{name}: {len(old.rows)} / {len(new.rows)} rows: not the same tables")
        return False
    ok = True
    moved, worst, worst_err, others = 0, (0.0, None), (0.0, None), {f: (0.0, None) for f in OTHERS}
    for a, b in zip(old.rows, new.rows):
        label = tuple(a.get(c) for c in ("loss", "param", "criterion", "classes", "logit_std")
                      if a.get(c) is not None)
        if any(a.get(c) != b.get(c) for c in INPUTS):
            if ok:  # the first only: the files were made from different row lists
                print(f"  {name}: inputs differ from {label} on: {a} / {b}")
            ok = False
            continue
        if _kind(a["status"]) != _kind(b["status"]) or (a[key] is None) != (b[key] is None):
            print(f"  {name}: status changed at {label}: {a['status']!r} -> {b['status']!r}")
            ok = False
            continue
        if a[key] is None:
            continue
        d = abs(a[key] - b[key])
        moved += d > 0
        if d > worst[0]:
            worst = (d, label)
        err = a["error"]
        if err is not None and math.isfinite(err) and err > 0:
            if d / err > worst_err[0]:
                worst_err = (d / err, label)
            if d > err:
                ok = False
        for f in OTHERS:
            x, y = a.get(f), b.get(f)
            if x is None or y is None or x == y:
                continue
            rel = abs(x - y) / max(abs(x), 1e-300)
            if rel > others[f][0]:
                others[f] = (rel, label)
    print(f"{name}: {len(old.rows)} / {len(new.rows)} rows, {moved} values moved; largest |Δ| "
          f"{worst[0]:.2g} {worst[1] or ''}; largest |Δ|/error {worst_err[0]:.2g} "
          f"{worst_err[1] or ''}")
    for f, (rel, label) in others.items():
        if label is not None:
            print(f"  {f}: largest relative change {rel:.2g} {label}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--only", action="append")
    args = ap.parse_args()
    names = args.only or [n for n in T.TABLE_NAMES
                          if os.path.isfile(os.path.join(args.old, f"{n}.json"))]
    good = all([compare(n, args.old, args.new) for n in names])
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
