"""Which commands trained the runs of a validation folder, read from the runs themselves.

    python docs/validation/provenance.py docs/validation/k1000 [--record]

Every run's config.json holds the command that trained it. This prints those commands with the
number of runs each trained, and the runs that two labels trained twice (the same settings
under two names, e.g. ``mae`` and ``mae@eps=0``: grids made before runs were shared), with
whether their per-epoch metrics agree to the last digit. ``--record`` writes the commands into
the folder's grid.json as ``invocations`` where it has none (a grid.json written before
invocations were kept names only its last command).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys

VOLATILE = ("time", "samples_per_s")


def _load(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def commands(folder):
    counts = {}
    for path in sorted(glob.glob(os.path.join(folder, "runs", "*", "*", "seed-*", "config.json"))):
        cmd = _load(path).get("command")
        counts[cmd] = counts.get(cmd, 0) + 1
    return counts


def _metrics(path):
    with open(os.path.join(path, "metrics.csv"), encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if not any(x in k for x in VOLATILE)}
                for row in csv.DictReader(fh)]


def duplicates(folder):
    """Pairs of run folders with the same settings (calibrate_cli.train.provenance.run_key)."""
    from calibrate_cli.train.provenance import run_key

    by_key = {}
    for path in sorted(glob.glob(os.path.join(folder, "runs", "*", "*", "seed-*"))):
        cfg = _load(os.path.join(path, "config.json"))["config"]
        by_key.setdefault(run_key(cfg), []).append(path)
    out = []
    for paths in by_key.values():
        for other in paths[1:]:
            out.append((os.path.relpath(paths[0], folder), os.path.relpath(other, folder),
                        _metrics(paths[0]) == _metrics(other)))
    return out


def main(folder, record=False):
    counts = commands(folder)
    print(f"Commands that trained the {sum(counts.values())} runs of {folder} "
          "(from each run's config.json):\n")
    for cmd, n in counts.items():
        print(f"- {n} runs: `{cmd}`")
    dups = duplicates(folder)
    if dups:
        same = sum(d[2] for d in dups)
        print(f"\n{len(dups)} runs were trained twice under two labels; {same} of the pairs agree "
              "to the last digit in every per-epoch metric:\n")
        for a, b, equal in dups:
            print(f"- {a} = {b}: {'identical' if equal else 'DIFFERENT'}")
    if record:
        path = os.path.join(folder, "grid.json")
        grid = _load(path)
        if not grid.get("invocations"):
            grid["invocations"] = [{"command": c, "runs_trained": n,
                                    "note": "reconstructed from the runs' config.json"}
                                   for c, n in counts.items()]
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(grid, fh, indent=2, allow_nan=False)
                fh.write("\n")
            print(f"\nrecorded {len(counts)} invocations in {path}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))
    main(sys.argv[1], record="--record" in sys.argv[2:])
