"""Precomputed tables of ε and recalibrated hyperparameters (``calibrate tables``).

Four tables, each written as CSV, JSON and Markdown with a header saying how
it was made (tool version, criterion, logit distribution, numerics):

``epsilon``
    ε for every bounded loss (registry defaults) under the criteria ``match``
    (K_ref = 10, root below the peak) and ``peak``, for K on a log grid from 2
    to 10^6 and the Gaussian logit std in {0.05, 0.1, 0.25, 0.5, 1, 2}.
    (``target`` needs a user value, so it has no table.) Losses whose δ_k
    depends on σ_k alone are computed exactly; the others (NCE, NFL, biTemp
    and their combinations) by Monte Carlo whose draws are reduced to a few
    numbers once per K, on the same full grid (63 K × 6 stds), with the
    number of samples stated and the Monte Carlo error in the ``error``
    column (a loss without such a reduction would get the coarser MC_CLASSES ×
    MC_STDS grid).
``q``
    GCE's q transferred from (K = 100, q = 0.7) to every K of the full grid,
    for every std: <δ_k>_{K,q}(μ) = <δ_k>_{100,0.7}(μ).
``transfer``
    single-parameter transfers of NCE+AGCE (alpha, beta, a, q) and NF-MAE
    (gamma, alpha, beta) from their CIFAR-100 presets at K = 100 to other K
    (each parameter alone, the others held at the preset), std 0.5.
``presets``
    for every loss with literature presets and every parameter: the value
    computed by transferring the CIFAR-100 preset (K = 100) to K = 10, 50,
    100 and 1000, beside the literature value at that K where one exists
    (CIFAR-10: 10, mini-WebVision: 50, CIFAR-100: 100).

Every row holds what is needed to recompute it (``recompute_row``); the test
suite recomputes a seeded sample of rows and compares with the committed files.
A row with no solution keeps its place with an empty value and the reason in
``status``; a value whose error estimate exceeds 0.05 (ε, logit units) or
10 % (a parameter) is kept with ``status`` 'uncertain: ...' and marked † in
the Markdown.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .._version import __version__
from ..utils.atomic import write_atomic
from ..errors import NoSolutionError, UsageError
from .run import (MC_DRAW_BUDGET, MC_MIN_SAMPLES, Averagers, format_params,
                         parse_params, run_tables)

TABLE_NAMES = ("epsilon", "q", "transfer", "presets")
STDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
MC_STDS = (0.1, 0.5, 1.0)
MC_CLASSES = (2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
MC_SAMPLES = 512
MC_SEED = 0
CRITERIA = ("match", "peak")
REFERENCE_CLASSES = 10
Q_FROM = (100, 0.7)
TRANSFER_LOSSES = ("nce-agce", "nf-mae")
TRANSFER_CLASSES = (10, 20, 50, 100, 200, 500, 1000)
TRANSFER_STD = 0.5
PRESET_CLASSES = (10, 50, 100, 1000)
PRESET_SOURCE = "cifar100"
PRESET_STD = 0.5
#: A solved value is marked 'uncertain' when its error estimate exceeds these:
EPS_UNCERTAIN = 0.05  # ε, in logit units
REL_UNCERTAIN = 0.1  # a transferred parameter, relative to its value


def class_grid(points: int = 64, high: int = 10**6) -> list[int]:
    """Integer K on a log grid from 2 to ``high``: round(2·(high/2)^(i/(points-1))), deduplicated.

    64 log points give 63 distinct integers (2 and 3 repeat at the low end).
    """
    raw = np.geomspace(2, high, points)
    return sorted({int(round(k)) for k in raw})


# -------------------------------------------------------------------- tables
@dataclass
class Table:
    """A table: name, a header (how it was made), column names and rows (dicts)."""

    name: str
    title: str
    header: dict
    columns: list[str]
    rows: list[dict] = field(default_factory=list)


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


# ---------------------------------------------------------------- row kernels
def compute_epsilon(row: dict, avs: Averagers) -> dict:
    """Fill ``epsilon``, ``error``, ``method``, δ before/after and ``status`` of an ε row."""
    from ..losses import get_loss
    from ..engine.solve import solve_epsilon

    spec = get_loss(row["loss"])
    params = _full_params(spec, parse_params(row["params"]))
    av = avs.get(row["logit_std"], row["samples"], row["seed"])
    out = dict(row)
    try:
        r = solve_epsilon(spec, params, row["classes"], av.dist, criterion=row["criterion"],
                          reference_classes=row["reference_classes"] or REFERENCE_CLASSES,
                          averager=av, other_root=False)
        out.update(epsilon=r.epsilon, error=_num(r.error), method=r.method,
                   delta_before=r.delta_before, delta_after=r.delta_after,
                   status=_status(r.error, EPS_UNCERTAIN))
    except NoSolutionError as exc:
        out.update(epsilon=None, error=None, method=_method(spec), delta_before=None,
                   delta_after=None, status=f"no solution: {exc}")
    return out


def compute_transfer(row: dict, avs: Averagers) -> dict:
    """Fill ``value``, ``error``, ``method``, ``status`` of a q / transfer / presets row."""
    from ..losses import get_loss
    from ..engine.solve import solve_transfer

    spec = get_loss(row["loss"])
    params = _full_params(spec, parse_params(row["params"]))
    av = avs.get(row["logit_std"], row.get("samples"), row.get("seed"))
    out = dict(row)
    try:
        r = solve_transfer(spec, params, row["param"], row["classes_from"], row["classes"],
                           av.dist, averager=av)
        out.update(value=r.value, error=_num(r.error), method=r.method,
                   status=_status(r.error, REL_UNCERTAIN * abs(r.value)))
    except NoSolutionError as exc:
        out.update(value=None, error=None, method=_method(spec), status=f"no solution: {exc}")
    return out


def _status(error: float, limit: float) -> str:
    """'ok', or 'uncertain: ...' when the error estimate exceeds ``limit``."""
    if error is not None and math.isfinite(error) and error <= limit:
        return "ok"
    return f"uncertain: error estimate {error:.3g} exceeds {limit:.3g}"


def _method(spec) -> str:
    return "exact" if spec.sigma_only else "monte-carlo"


KERNELS = {"epsilon": compute_epsilon, "q": compute_transfer, "transfer": compute_transfer,
           "presets": compute_transfer}


def recompute_row(table: str, row: dict, avs: Averagers | None = None) -> dict:
    """Recompute one row of ``table`` from its inputs (as read back from the JSON file)."""
    if table not in KERNELS:
        raise UsageError(f"unknown table '{table}' (known: {', '.join(TABLE_NAMES)})")
    return KERNELS[table](row, avs or Averagers())


# --------------------------------------------------------------- row inputs
def _bounded_losses():
    from ..losses import list_losses

    return [s for s in list_losses() if s.bounded]


def epsilon_rows(quick: bool = False) -> list[dict]:
    from ..losses import resolve_params

    grid = [2, 10, 1000] if quick else class_grid()
    rows = []
    for spec in _bounded_losses():
        exact = spec.sigma_only
        if quick and not exact and spec.name not in ("nce-mae",):
            continue
        full = exact or spec.reducible  # NCE, NFL, biTemp: draws reduced once per K
        ks = grid if full else ([2, 10] if quick else list(MC_CLASSES))
        stds = (0.5,) if quick else (STDS if full else MC_STDS)
        params = format_params(resolve_params(spec))
        for crit in CRITERIA:
            for std in stds:
                for k in ks:
                    rows.append({"loss": spec.name, "params": params, "criterion": crit,
                                 "reference_classes": REFERENCE_CLASSES if crit == "match" else None,
                                 "classes": k, "logit_std": std,
                                 "samples": None if exact else (64 if quick else MC_SAMPLES),
                                 "seed": None if exact else MC_SEED})
    return rows


def q_rows(quick: bool = False) -> list[dict]:
    grid = [2, 10, 1000] if quick else class_grid()
    stds = (0.5,) if quick else STDS
    k0, q0 = Q_FROM
    return [{"loss": "gce", "params": format_params({"q": q0}), "param": "q",
             "value_from": q0, "classes_from": k0, "classes": k, "logit_std": std}
            for std in stds for k in grid]


def transfer_rows(quick: bool = False) -> list[dict]:
    from ..losses import get_loss, get_preset

    rows = []
    for name in TRANSFER_LOSSES[:1] if quick else TRANSFER_LOSSES:
        spec = get_loss(name)
        preset = get_preset(spec, PRESET_SOURCE)
        params = _full_params(spec, preset.values)
        for p in spec.params:
            if p.flag:
                continue
            for k in ([10] if quick else TRANSFER_CLASSES):
                rows.append({"loss": name, "preset": PRESET_SOURCE, "params": format_params(params),
                             "param": p.name, "value_from": params[p.name],
                             "classes_from": preset.classes, "classes": k,
                             "logit_std": TRANSFER_STD, "samples": 64 if quick else MC_SAMPLES,
                             "seed": MC_SEED})
    return rows


def preset_rows(quick: bool = False) -> list[dict]:
    from ..losses import get_preset, list_losses

    rows = []
    for spec in list_losses():
        if PRESET_SOURCE not in spec.presets:
            continue
        if quick and spec.name != "gce":
            continue
        source = get_preset(spec, PRESET_SOURCE)
        params = _full_params(spec, source.values)
        by_k = {pr.classes: pr for pr in spec.presets.values()}
        for p in spec.params:
            if p.flag or p.name not in source.values:
                continue
            for k in PRESET_CLASSES:
                lit = by_k.get(k)
                rows.append({
                    "loss": spec.name, "param": p.name, "params": format_params(params),
                    "value_from": params[p.name], "classes_from": source.classes,
                    "classes": k, "logit_std": PRESET_STD,
                    "literature": None if lit is None else lit.values.get(p.name),
                    "literature_dataset": None if lit is None else lit.dataset,
                    "literature_source": None if lit is None else lit.source,
                    "samples": None if spec.sigma_only else (64 if quick else MC_SAMPLES),
                    "seed": None if spec.sigma_only else MC_SEED})
    return rows


def _full_params(spec, values) -> dict:
    from ..losses import resolve_params

    p = resolve_params(spec)
    p.update({k: float(v) for k, v in values.items()})
    return p


ROWS = {"epsilon": epsilon_rows, "q": q_rows, "transfer": transfer_rows, "presets": preset_rows}
COLUMNS = {
    "epsilon": ["loss", "params", "criterion", "reference_classes", "classes", "logit_std",
                "epsilon", "error", "method", "samples", "seed", "delta_before", "delta_after",
                "status"],
    "q": ["loss", "params", "param", "value_from", "classes_from", "classes", "logit_std",
          "value", "error", "method", "status"],
    "transfer": ["loss", "preset", "params", "param", "value_from", "classes_from", "classes",
                 "logit_std", "value", "error", "method", "samples", "seed", "status"],
    "presets": ["loss", "param", "params", "value_from", "classes_from", "classes", "logit_std",
                "value", "error", "literature", "literature_dataset", "literature_source",
                "method", "samples", "seed", "status"],
}
TITLES = {
    "epsilon": "Logit bias ε of the bounded losses against K and the logit std",
    "q": "GCE's q at K, transferred from q = 0.7 at K = 100",
    "transfer": "Single-parameter transfers of NCE+AGCE and NF-MAE from their CIFAR-100 presets",
    "presets": "Literature presets beside the values computed from the CIFAR-100 preset",
}


def _header(name: str, quick: bool, seconds: float) -> dict:
    grid = class_grid()
    common = {"tool": "calibrate", "version": __version__,
              "command": "calibrate tables" + (" --quick" if quick else ""),
              "table": name, "title": TITLES[name], "seconds": round(seconds, 1),
              "engine": ("exact: Laplace-space integral with fixed-Talbot inversion for losses "
                         "whose δ_k depends on σ_k alone; Monte Carlo with common random "
                         "numbers and control variates otherwise ('samples' logit vectors, "
                         "'seed'), its standard error included in 'error'"),
              "frame": "logits centred at μ = 0; ε is the shift of the correct-class logit"}
    if name == "epsilon":
        common.update(
            criterion=(f"match (K_ref = {REFERENCE_CLASSES}, root below the peak of <δ_k>(z)) and "
                       "peak (extremum of <δ_k>(z) at μ); target needs a user value"),
            distribution=f"Gaussian N(0, std²), std in {list(STDS)}",
            grid=(f"{len(grid)} K from 2 to 10^6 (log grid) × std {list(STDS)} for every loss; "
                  f"Monte Carlo losses (NCE, NFL, biTemp and their combinations; seed {MC_SEED}) "
                  f"reduce each logit vector to a few numbers once per K (NCE: ln Σ e^z and Σ z; "
                  f"NFL: power sums; biTemp: moments) and draw {MC_SAMPLES} vectors per K up to "
                  f"K · samples = {MC_DRAW_BUDGET} logits, fewer above (at least "
                  f"{MC_MIN_SAMPLES}; K_ref = {REFERENCE_CLASSES} always {MC_SAMPLES})"),
            parameters="registry defaults of each loss (column params)")
    elif name == "q":
        common.update(criterion=(f"<δ_k>_(K, q)(μ) = <δ_k>_(K={Q_FROM[0]}, q={Q_FROM[1]})(μ)"),
                      distribution=f"Gaussian N(0, std²), std in {list(STDS)}",
                      grid=f"{len(grid)} K from 2 to 10^6 (log grid) × std {list(STDS)}")
    elif name == "transfer":
        common.update(criterion=("<δ_k>_(K, θ)(μ) = <δ_k>_(100, θ_preset)(μ) for one parameter θ, "
                                 "the others at the CIFAR-100 preset"),
                      distribution=f"Gaussian N(0, {TRANSFER_STD}²)",
                      grid=(f"K in {list(TRANSFER_CLASSES)}; Monte Carlo, {MC_SAMPLES} samples, "
                            f"seed {MC_SEED}"))
    else:
        common.update(criterion=("<δ_k>_(K, θ)(μ) = <δ_k>_(100, θ_cifar100)(μ) for one parameter "
                                 "θ, the others at the CIFAR-100 preset"),
                      distribution=f"Gaussian N(0, {PRESET_STD}²)",
                      grid=(f"K in {list(PRESET_CLASSES)}; literature value where a preset exists "
                            "for that K (cifar10: 10, webvision-mini: 50, cifar100: 100); Monte "
                            f"Carlo losses: {MC_SAMPLES} samples, seed {MC_SEED}"))
    return common


def build_tables(names, *, quick: bool = False, jobs: int = 1, progress=None) -> list[Table]:
    """Compute several tables at once: the row groups of all of them share one pool of
    ``jobs`` worker processes (``quick``: a few rows per table, for tests). A table's header
    gives the seconds its rows took, summed over the workers."""
    bad = [n for n in names if n not in ROWS]
    if bad:
        raise UsageError(f"unknown table '{bad[0]}' (known: {', '.join(TABLE_NAMES)})")
    done = run_tables([(n, ROWS[n](quick), KERNELS[n]) for n in names], jobs, progress)
    return [Table(n, TITLES[n], _header(n, quick, seconds), COLUMNS[n], rows)
            for n, (rows, seconds) in zip(names, done)]


def build_table(name: str, *, quick: bool = False, jobs: int = 1, progress=None) -> Table:
    """Compute one table (:func:`build_tables` for one name)."""
    return build_tables([name], quick=quick, jobs=jobs, progress=progress)[0]


# ------------------------------------------------------------------- writing
def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.12g}"
    return v


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    for k, v in table.header.items():
        buf.write(f"# {k}: {v}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    for r in table.rows:
        w.writerow([_cell(r.get(c)) for c in table.columns])
    return buf.getvalue()


def to_json(table: Table) -> str:
    """``{"header": {...}, "columns": [...], "rows": [[...], ...]}``, one row per line.

    Each row is a list in the order of ``columns`` (null for no value).
    """
    def dump(x):
        return json.dumps(x, ensure_ascii=False, allow_nan=False)

    rows = ",\n".join("  " + dump([r.get(c) for c in table.columns]) for r in table.rows)
    return (f'{{"header": {json.dumps(table.header, indent=1, ensure_ascii=False)},\n'
            f' "columns": {dump(table.columns)},\n "rows": [\n{rows}\n]}}\n')


def _fmt(v, digits=5):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def to_markdown(table: Table) -> str:
    h = table.header
    lines = [f"# {table.title}", "", f"Made by `{h['command']}` (calibrate {h['version']}).", ""]
    for k in ("criterion", "distribution", "grid", "parameters", "engine", "frame"):
        if k in h:
            lines.append(f"- **{k}**: {h[k]}")
    lines += ["", "Full precision, errors and the reason for every empty cell: "
              f"`{table.name}.csv` / `{table.name}.json`. '–': no solution; '†': the error "
              "estimate exceeds 0.05 (ε) or 10 % (a parameter), see the error column.", ""]
    if table.name == "epsilon":
        lines += _md_epsilon(table.rows)
    elif table.name == "q":
        lines += _md_pivot(table.rows, ["classes"], "logit_std", "value", "K", "std")
    elif table.name == "transfer":
        for loss in dict.fromkeys(r["loss"] for r in table.rows):
            rows = [r for r in table.rows if r["loss"] == loss]
            lines += [f"## {loss} (from {rows[0]['preset']}: {rows[0]['params']}, K = "
                      f"{rows[0]['classes_from']})", ""]
            lines += _md_pivot(rows, ["classes"], "param", "value", "K", "")
            lines.append("")
    else:
        head = ["loss", "param", "cifar100 value", "K", "computed", "literature"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in table.rows:
            lit = "–" if r["literature"] is None else f"{_fmt(r['literature'])} ({r['literature_dataset']})"
            lines.append(f"| {r['loss']} | {r['param']} | {_fmt(r['value_from'])} | {r['classes']} | "
                         f"{_mark(r, 'value')} | {lit} |")
    return "\n".join(lines).rstrip() + "\n"


def _mark(r, value_key):
    v = _fmt(r[value_key])
    return v + " †" if r["status"].startswith("uncertain") else v


def _md_pivot(rows, row_keys, col_key, value_key, row_title, col_title):
    cols = list(dict.fromkeys(r[col_key] for r in rows))
    cells: dict = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in row_keys), {})[r[col_key]] = _mark(r, value_key)
    head = [row_title] + [f"{col_title} {_fmt(c)}".strip() for c in cols]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, vals in cells.items():
        out.append("| " + " | ".join([", ".join(map(str, key))] +
                                     [vals.get(c, "") for c in cols]) + " |")
    return out


def _md_epsilon(rows):
    out = []
    sections = dict.fromkeys((r["loss"], r["params"], r["criterion"]) for r in rows)
    for loss, params, crit in sections:
        sub = [r for r in rows if (r["loss"], r["params"], r["criterion"]) == (loss, params, crit)]
        mc = sub[0]["samples"]
        note = f", Monte Carlo ({mc} samples)" if mc else ""
        out += [f"## {loss} ({params or 'no parameters'}), {crit}{note}", ""]
        out += _md_pivot(sub, ["classes"], "logit_std", "epsilon", "K", "std")
        out.append("")
    return out


def write_table(table: Table, out_dir: str) -> list[str]:
    """Write ``<name>.csv``, ``.json`` and ``.md`` atomically; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext, text in (("csv", to_csv(table)), ("json", to_json(table)), ("md", to_markdown(table))):
        path = os.path.join(out_dir, f"{table.name}.{ext}")
        write_atomic(path, text)
        paths.append(path)
    return paths


def write_index(tables: list[Table], out_dir: str) -> str:
    lines = ["# Tables", "",
             f"Regenerate with `calibrate tables --out-dir {os.path.basename(out_dir.rstrip('/')) or 'tables'}` "
             f"(calibrate {__version__}). Each table comes as CSV (header lines start with `#`), "
             "JSON (`header`, `columns`, `rows` as lists in column order) and Markdown.", "",
             "| table | what | rows | seconds (summed over workers) |", "|---|---|---|---|"]
    for t in tables:
        lines.append(f"| [{t.name}]({t.name}.md) | {t.title} | {len(t.rows)} | "
                     f"{t.header['seconds']} |")
    for t in tables:  # which loss is on which grid: every loss of a table, its K and stds
        if not t.rows or not {"loss", "classes", "logit_std"} <= set(t.columns):
            continue
        lines += ["", f"Coverage of [{t.name}]({t.name}.md): every loss, its K values (2 to "
                  f"{max(r['classes'] for r in t.rows):,}) and logit stds:", "",
                  "| loss | K values | stds | rows |", "|---|---|---|---|"]
        for loss in dict.fromkeys(r["loss"] for r in t.rows):
            sub = [r for r in t.rows if r["loss"] == loss]
            lines.append(f"| {loss} | {len({r['classes'] for r in sub})} | "
                         f"{len({r['logit_std'] for r in sub})} | {len(sub)} |")
    path = os.path.join(out_dir, "README.md")
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def read_table(path: str) -> Table:
    """A table back from its JSON file."""
    if not os.path.isfile(path):
        raise UsageError(f"table file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    h = obj["header"]
    cols = obj["columns"]
    return Table(h["table"], h["title"], h, cols, [dict(zip(cols, r)) for r in obj["rows"]])
