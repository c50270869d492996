"""``calibrate tables``: regenerate the committed tables/ (CSV, JSON, Markdown)."""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Optional

import typer

from ..utils.atomic import make_folder
from ..errors import UsageError
from .params import INT

HELP = """Compute the tables of ε and recalibrated hyperparameters and write them to --out-dir.

Tables: [bold]epsilon[/] (every bounded loss, criteria match and peak, 63 K from 2 to 10^6, logit std 0.05 to 2), [bold]q[/] (GCE's q from K = 100, q = 0.7 to every K), [bold]transfer[/] (NCE+AGCE and NF-MAE parameters from their CIFAR-100 presets), [bold]presets[/] (literature presets beside the computed values at K = 10, 50, 100, 1000). Each as <name>.csv, <name>.json and <name>.md, with a header saying how it was made; tables/README.md indexes them. Monte Carlo losses (NCE, NFL, biTemp and their combinations) draw 512 logit vectors per K, fewer at K above 8193 (see the headers). About a minute with --jobs 2 on two cores (the four tables share the workers).

[bold]Examples[/]

  calibrate tables

  calibrate tables --only q --out-dir /tmp/tables --jobs 2

  calibrate tables --quick                    (a few rows into tables-quick/, in seconds)
"""


#: Where the tables go: the full ones where the repository keeps them, the quick ones beside.
OUT_DIR, QUICK_OUT_DIR = "tables", "tables-quick"


def full_tables(folder: str, names) -> list[str]:
    """Those of the tables ``names`` that a full run wrote into ``folder`` (their CSV header
    names the command without --quick)."""
    full = []
    for name in names:
        try:
            with open(os.path.join(folder, f"{name}.csv"), encoding="utf-8") as fh:
                head = [next(fh, "").strip() for _ in range(8)]
        except (OSError, UnicodeDecodeError):
            continue
        if "# command: calibrate tables" in head:
            full.append(name)
    return full


def register(app: typer.Typer) -> None:
    app.command("tables", help=HELP)(tables)


def tables(
    out_dir: Annotated[Optional[str], typer.Option(
        "--out-dir", "-o", show_default=False,
        help=f"Folder to write to (default {OUT_DIR}; with --quick {QUICK_OUT_DIR}, and never "
             "over full tables).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", help="Compute only this table (repeatable): epsilon, q, transfer, presets.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", click_type=INT, help="Worker processes.")] = 1,
    quick: Annotated[bool, typer.Option(
        "--quick", help=f"A few rows per table, into {QUICK_OUT_DIR}/ (checks the pipeline; "
                        "not for committing).")] = False,
) -> None:
    from ..tables import build as T

    names = list(dict.fromkeys(only or T.TABLE_NAMES))
    bad = [n for n in names if n not in T.TABLE_NAMES]
    if bad:
        raise UsageError(f"--only must be one of {', '.join(T.TABLE_NAMES)}, got '{bad[0]}'")
    if not 1 <= jobs <= (os.cpu_count() or 1) * 4:
        raise UsageError(f"--jobs must be in [1, {(os.cpu_count() or 1) * 4}], got {jobs}")
    if out_dir is None:
        out_dir = QUICK_OUT_DIR if quick else OUT_DIR
    full = full_tables(out_dir, names) if quick else []
    if full:
        raise UsageError(f"--quick would write over the full tables in '{out_dir}' "
                         f"({', '.join(full)}); give another --out-dir (by default --quick "
                         f"writes to {QUICK_OUT_DIR})")
    make_folder(out_dir, "--out-dir", lock=True)

    done: dict = {}
    tty = sys.stderr.isatty()

    def progress(name, n):
        done[name] = done.get(name, 0) + n
        if tty:
            sys.stderr.write("\r" + ", ".join(f"{k}: {v} rows" for k, v in done.items()))
            sys.stderr.flush()

    import numpy as np

    t0 = time.perf_counter()
    with np.errstate(all="ignore"):  # one pool for all tables: its workers never wait
        built = T.build_tables(names, quick=quick, jobs=jobs, progress=progress)
    if tty:
        sys.stderr.write("\r\033[K")
    for table in built:
        paths = T.write_table(table, out_dir)
        failed = sum(1 for r in table.rows if r["status"].startswith("no solution"))
        unsure = sum(1 for r in table.rows if r["status"].startswith("uncertain"))
        sys.stderr.write(f"{table.name}: {len(table.rows)} rows ({failed} without solution, "
                         f"{unsure} uncertain), {table.header['seconds']:.1f} s of compute "
                         f"-> {', '.join(paths)}\n")
    if set(names) == set(T.TABLE_NAMES):
        T.write_index(built, out_dir)
    sys.stderr.write(f"done in {time.perf_counter() - t0:.1f} s\n")
