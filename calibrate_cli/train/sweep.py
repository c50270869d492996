r"""``calibrate validate --sweep``: test accuracy against one swept quantity, computed values marked.

A sweep trains one loss over a list of values of one quantity, on the same data, model,
noise and seeds, the way a hyperparameter search would, and puts the value ``calibrate``
computes without training among them:

``eps=0,1,2,match,peak,above``
    the logit bias ε: numbers are fixed biases (``NAME@eps=V``); ``match``, ``peak`` and
    ``above`` are solved per run from K and the measured logit std (``NAME*``,
    ``NAME*peak``, ``NAME*above``: criterion match with the root below the peak, the peak,
    match's root above the peak);
``q=0.3,0.4,calibrated,calibrated:10,calibrated:10:0.1,0.7``
    a loss parameter: numbers are fixed values (``NAME@q=V``); ``calibrated`` is the value
    transferred to the dataset's K from the parameter's current value at ``calibrate_from``
    classes (default 100; ``NAME@calibrated:q:100``), ``calibrated:K`` from K classes,
    ``calibrated:K:V`` from the value V at K classes (``NAME@calibrated:q:K:V``).

The runs are those of ``calibrate validate`` (``OUT/runs/<label>/<noise>/seed-<s>/``,
completed runs skipped, interrupted ones resumed), so a sweep and a grid given the same
``--out`` share the runs they have in common. Results: ``OUT/sweep-<loss>-<quantity>``
``.json``, ``.csv``, ``.md`` and ``.png``: per value, mean ± std over seeds of the last-epoch
test top-1 (the literature's convention), best-epoch top-1 and memorisation; for each
computed point, its accuracy as a fraction of the best fixed point and the number of
trainings the fixed points took.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass

from ..utils.atomic import write_atomic
from ..errors import UsageError
from ..utils.numbers import number_text
from .report import SUMMARY_FIELDS, pct
from .validate import LossVariant, parse_losses, run_grid

#: Computed points of an ε sweep: keyword -> the validate label suffix.
EPSILON_POINTS = {"match": "*", "peak": "*peak", "above": "*above"}


@dataclass(frozen=True)
class SweepPoint:
    variant: LossVariant
    computed: str | None  # None for a fixed value, else "match", "peak", "above", "calibrated[:K]"
    value: float | None   # the fixed value (computed points: read from the runs)


@dataclass(frozen=True)
class Sweep:
    loss: str
    quantity: str          # "eps" or a parameter name
    points: tuple[SweepPoint, ...]

    @property
    def name(self) -> str:
        return f"sweep-{self.loss}-{self.quantity}"


def parse_sweep(spec: str, losses: str, calibrate_from: int = 100) -> Sweep:
    """``--sweep eps=0,1,match`` or ``q=0.3,calibrated`` with ``--losses`` naming one loss."""
    variants = parse_losses(losses)
    if len(variants) != 1 or variants[0].label != variants[0].loss:
        raise UsageError("--sweep: give exactly one plain loss in --losses (e.g. --losses mae); "
                         "the sweep makes its variants")
    loss = variants[0].loss
    m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=(.+)", str(spec))
    if not m:
        raise UsageError(f"--sweep expects QUANTITY=V1,V2,... (e.g. eps=0,2,match or q=0.3,0.5), "
                         f"got '{spec}'")
    quantity = "eps" if m.group(1) in ("eps", "epsilon") else m.group(1)
    items = [t.strip() for t in m.group(2).split(",") if t.strip()]
    if quantity != "eps":
        from ..losses import get_loss

        get_loss(loss).param(quantity)  # UsageError for a parameter the loss lacks
    labels: list[tuple[str, str | None, float | None]] = []
    for item in items:
        key = item.lower()
        if quantity == "eps" and key in EPSILON_POINTS:
            labels.append((f"{loss}{EPSILON_POINTS[key]}", key, None))
        elif quantity != "eps" and re.fullmatch(r"calibrated(:\d+(:[^:]+)?)?", key):
            _, k_text, v_text = (key.split(":") + ["", ""])[:3]
            k_from = int(k_text or calibrate_from)
            if v_text:  # calibrated:K:V, transferred from the value V at K classes
                v = number_text(_sweep_number(quantity, v_text))
                labels.append((f"{loss}@calibrated:{quantity}:{k_from}:{v}",
                               f"calibrated:{k_from}:{v}", None))
                continue
            short = quantity == "q" and k_from == 100  # validate's gce@calibrated
            labels.append((f"{loss}@calibrated" if short else
                           f"{loss}@calibrated:{quantity}:{k_from}", key, None))
        else:
            value = _sweep_number(quantity, item)
            # one canonical text for the value: the label, the folder, the run and the report
            labels.append((f"{loss}@{quantity}={number_text(value)}", None, value))
    if not any(c is None for _, c, _ in labels):
        raise UsageError("--sweep: give at least one fixed value to sweep over")
    seen = set()
    points = []
    for (label, computed, value), variant in zip(labels, parse_losses(",".join(l for l, _, _ in
                                                                               labels))):
        if label in seen:
            raise UsageError(f"--sweep: '{label}' is listed twice")
        seen.add(label)
        points.append(SweepPoint(variant, computed, value))
    return Sweep(loss, quantity, tuple(points))


def _sweep_number(quantity: str, item: str) -> float:
    try:
        value = float(item)
    except ValueError:
        known = ", ".join(EPSILON_POINTS) if quantity == "eps" else \
            "calibrated, calibrated:K, calibrated:K:V"
        raise UsageError(f"--sweep {quantity}: '{item}' is neither a number nor one of "
                         f"{known}") from None
    if not math.isfinite(value):
        raise UsageError(f"--sweep {quantity}: '{item}' is not a finite number")
    return value


def run_sweep(sweep: Sweep, base: dict, noises: list[str], seeds: list[int], out: str, *,
              jobs: int = 1, progress: bool = True, command: str | None = None,
              log=print, train: bool = True, emit=None) -> dict:
    """Train the sweep's runs (skipping completed ones; none with ``train=False``) and write
    its results. ``emit``: write nothing, pass it the ``calibrate train`` line of each
    missing run instead (``--emit-commands``)."""
    from .. import __version__
    from .records import write_json

    variants = [p.variant for p in sweep.points]
    grid = run_grid(base, variants, noises, seeds, out, progress=progress, command=command,
                    log=log, jobs=jobs, record=None, train=train, emit=emit)
    if emit is not None:
        return grid
    results = sweep_results(sweep, grid)
    if grid.get("written") is False:  # --report-only beside a running grid: print only
        return results
    path = os.path.join(out, f"{sweep.name}.json")
    results.update(version=__version__, command=command, base=base,
                   invocations=_invocations(path, command, grid))
    write_json(path, results)
    write_atomic(os.path.join(out, f"{sweep.name}.csv"), sweep_csv(results))
    write_atomic(os.path.join(out, f"{sweep.name}.md"), sweep_markdown(results))
    from ..plots import save_figure

    save_figure(figure_sweep(results), os.path.join(out, f"{sweep.name}.png"))
    return results


def _invocations(path: str, command: str | None, grid: dict) -> list[dict]:
    """The commands that made this sweep's file so far, and this one."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        history = [e for e in old.get("invocations", []) if isinstance(e, dict)]
        if not history and old.get("command"):
            history = [{"command": old["command"], "version": old.get("version"),
                        "note": "recorded before invocations were kept"}]
    except (OSError, ValueError, AttributeError):
        history = []
    complete = sum(r["status"] == "complete" for r in grid["runs"])
    return history + [{"command": command, "complete_runs": complete}]


def _value_of(run: dict, quantity: str) -> float | None:
    if quantity == "eps":
        return run.get("logit_bias")
    return (run.get("params") or {}).get(quantity)


def sweep_results(sweep: Sweep, grid: dict) -> dict:
    """Per noise level and point: the swept value and the summary over seeds; the report."""
    from .report import _mean, _std

    by = {(s["label"], s["noise"]): s for s in grid["summary"]}
    rows = []
    for noise in grid["grid"]["noise"]:
        for p in sweep.points:
            runs = [r for r in grid["runs"] if r["label"] == p.variant.label
                    and r["noise"] == noise and r["status"] == "complete"]
            values = [v for v in (_value_of(r, sweep.quantity) for r in runs) if v is not None]
            row = {"noise": noise, "label": p.variant.label, "computed": p.computed,
                   "value": p.value if p.value is not None else _mean(values),
                   "value_std": 0.0 if p.value is not None else _std(values),
                   **{k: v for k, v in by[(p.variant.label, noise)].items()
                      if k not in ("label", "noise")}}
            rows.append(row)
    report = []
    for noise in grid["grid"]["noise"]:
        fixed = [r for r in rows if r["noise"] == noise and r["computed"] is None
                 and r["last_mean"] is not None]
        if not fixed:
            continue
        best = max(fixed, key=lambda r: r["last_mean"])
        trainings = sum(r["n"] for r in fixed)
        for r in rows:
            if r["noise"] != noise or r["computed"] is None or r["last_mean"] is None:
                continue
            report.append({"noise": noise, "label": r["label"], "computed": r["computed"],
                           "value": r["value"], "last_mean": r["last_mean"],
                           "last_std": r["last_std"], "best_fixed_value": best["value"],
                           "best_fixed_mean": best["last_mean"],
                           "best_fixed_std": best["last_std"],
                           "fraction_of_best": r["last_mean"] / best["last_mean"]
                           if best["last_mean"] > 0 else None,
                           "sweep_trainings": trainings, "sweep_points": len(fixed)})
    return {"sweep": {"loss": sweep.loss, "quantity": sweep.quantity, "name": sweep.name},
            "grid": grid["grid"], "points": rows, "report": report, "runs": grid["runs"]}


def _symbol(quantity: str) -> str:
    return "ε" if quantity == "eps" else quantity


def sweep_csv(results: dict) -> str:
    keys = [f"{name}_{stat}" for _, name in SUMMARY_FIELDS for stat in ("mean", "std")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["noise", "label", "computed", "value", "value_std", "n"] + keys)
    for r in results["points"]:
        w.writerow([r["noise"], r["label"], r["computed"] or ""]
                   + ["" if r[k] is None else f"{r[k]:.6g}" for k in ("value", "value_std")]
                   + [r["n"]] + ["" if r.get(k) is None else f"{r[k]:.6g}" for k in keys])
    return buf.getvalue()


def sweep_markdown(results: dict) -> str:
    s, g = results["sweep"], results["grid"]
    sym = _symbol(s["quantity"])
    lines = []
    for noise in g["noise"]:
        rows = sorted((r for r in results["points"] if r["noise"] == noise),
                      key=lambda r: (r["value"] is None, r["value"] or 0.0))
        lines += [f"{s['loss']}: test top-1 accuracy (%) against {sym}, noise {noise}; mean ± std "
                  f"over the complete runs of seeds {', '.join(map(str, g['seeds']))} (n per row; the "
                  f"mean alone where n = 1). "
                  f"{g['dataset']}, K = "
                  f"{g['classes'] or 'dataset'}, {g['model']}, {g['epochs']} epochs.", ""]
        lines.append(f"| {sym} | point | last epoch | best epoch | memorised / recovered | n |")
        lines.append("|---|---|---|---|---|---|")
        for r in rows:
            v = "–" if r["value"] is None else f"{r['value']:.4g}"
            point = f"**computed ({r['computed']})**" if r["computed"] else "fixed"
            mem = "–" if r.get("memorised_mean") is None else \
                f"{100 * r['memorised_mean']:.1f} / {100 * r['recovered_mean']:.1f}"
            lines.append(f"| {v} | {point} | {pct(r['last_mean'], r['last_std'], r['n'])} | "
                         f"{pct(r['best_mean'], r['best_std'], r['n'])} | {mem} | {r['n']} |")
        lines.append("")
        for rep in (x for x in results["report"] if x["noise"] == noise):
            frac = "–" if rep["fraction_of_best"] is None else f"{rep['fraction_of_best']:.3f}"
            lines.append(f"- computed {sym} = {rep['value']:.4g} ({rep['computed']}): "
                         f"{100 * rep['last_mean']:.2f} % = **{frac} ×** the best fixed point "
                         f"({100 * rep['best_fixed_mean']:.2f} % at {sym} = "
                         f"{rep['best_fixed_value']:.4g}), which took the sweep "
                         f"{rep['sweep_trainings']} trainings ({rep['sweep_points']} values).")
        lines.append("")
    return "\n".join(lines)


def figure_sweep(results: dict):
    """Last-epoch test top-1 against the swept value (mean ± std over seeds), one panel per
    noise level; computed values as stars with a dashed line."""
    from ..plots import _plt

    plt = _plt()
    s, g = results["sweep"], results["grid"]
    noises = g["noise"]
    fig, axes = plt.subplots(1, len(noises), figsize=(5.2 * len(noises), 3.8), squeeze=False)
    for ax, noise in zip(axes[0], noises):
        rows = [r for r in results["points"] if r["noise"] == noise and r["last_mean"] is not None
                and r["value"] is not None]
        fixed = sorted((r for r in rows if r["computed"] is None), key=lambda r: r["value"])
        if fixed:
            ax.errorbar([r["value"] for r in fixed], [100 * r["last_mean"] for r in fixed],
                        yerr=[100 * r["last_std"] for r in fixed], color="C0", marker="o",
                        ms=4, lw=1.4, capsize=3, label="fixed values (sweep)")
        for i, r in enumerate(r for r in rows if r["computed"] is not None):
            color = f"C{i + 1}"
            ax.axvline(r["value"], color=color, ls="--", lw=1, alpha=0.7)
            ax.errorbar([r["value"]], [100 * r["last_mean"]], yerr=[100 * r["last_std"]],
                        color=color, marker="*", ms=13, capsize=3, ls="none",
                        label=f"computed: {r['computed']} ({_symbol(s['quantity'])} = "
                              f"{r['value']:.3g})")
        ax.set_title(f"{s['loss']}, noise {noise}", fontsize=10)
        ax.set_xlabel(_symbol(s["quantity"]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test top-1 (%), last epoch, mean ± std")
    fig.suptitle(f"{g['dataset']}, K = {g['classes'] or 'all'}, {g['model']}, "
                 f"{g['epochs']} epochs, seeds {', '.join(map(str, g['seeds']))}", fontsize=10)
    fig.tight_layout()
    return fig
