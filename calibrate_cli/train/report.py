"""The tables and figure of a grid: per label and noise level, the mean and the sample
standard deviation over seeds (no ± where one seed is complete) of the last- and best-epoch
test top-1 and of the memorisation at the last epoch."""

from __future__ import annotations

import csv
import io
import math
import os

from ..utils.atomic import write_atomic


#: (per-run key, summary name): each gets ``<name>_mean`` and ``<name>_std`` over seeds.
SUMMARY_FIELDS = (("last_top1", "last"), ("best_top1", "best"), ("best_minus_last", "drop"),
                  ("last_memorised", "memorised"), ("last_recovered", "recovered"),
                  ("last_train_acc_noisy", "fit_noisy"))


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _std(xs):
    if not xs:
        return None
    if len(xs) == 1:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _zero(x: float) -> float:
    return 0.0 if abs(x) < 5e-4 else x


def pct(m, s, n=None):
    """A mean ± std in percent; the mean alone for one seed (n = 1), where there is no spread."""
    if m is None:
        return "–"
    return f"{100 * m:.2f}" if n == 1 else f"{100 * m:.2f} ± {100 * s:.2f}"


def markdown_table(results: dict) -> str:
    """Rows: losses; columns: noise levels; cells: last-epoch (best-epoch) top-1, mean ± std."""
    g = results["grid"]
    by = {(r["label"], r["noise"]): r for r in results["summary"]}
    eps, cal = {}, {}
    for r in results["runs"]:
        if r["status"] == "complete":
            eps.setdefault(r["label"], []).append(r["logit_bias"] or 0.0)
            for k, v in (r["params"] or {}).items():
                cal.setdefault(r["label"], {}).setdefault(k, []).append(v)
    lines = [f"Test top-1 accuracy (%), mean ± std over the complete runs of seeds "
             f"{', '.join(map(str, g['seeds']))} (n per cell; the mean alone where n = 1): "
             f"last epoch (best epoch). {g['dataset']}, K = {g['classes'] or 'dataset'}, "
             f"{g['model']}, {g['epochs']} epochs.", ""]
    head = ["loss", "ε (mean)", "parameters (mean)"] + [f"noise {n}" for n in g["noise"]]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for label in g["losses"]:
        e = eps.get(label)
        ps = cal.get(label, {})
        cells = [label, f"{_zero(sum(e) / len(e)):.3f}" if e else "–",
                 ", ".join(f"{k}={sum(v) / len(v):.4g}" for k, v in ps.items()) or "–"]
        for n in g["noise"]:
            s = by[(label, n)]
            cells.append(f"{pct(s['last_mean'], s['last_std'], s['n'])} "
                         f"({pct(s['best_mean'], s['best_std'], s['n'])}) n={s['n']}")
        lines.append("| " + " | ".join(cells) + " |")
    noisy = [n for n in g["noise"] if any(by[(label, n)].get("memorised_mean") is not None
                                         for label in g["losses"])]
    if noisy:
        lines += ["", "Memorisation at the last epoch (%), mean over seeds: of the training samples "
                  "whose label the noise changed, predicted as the noisy label / as the true label; "
                  "and best − last test top-1 (points lost after the best epoch).", ""]
        head = ["loss"] + [f"noise {n}" for n in noisy]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for label in g["losses"]:
            cells = [label]
            for n in noisy:
                s = by[(label, n)]
                if s["memorised_mean"] is None:
                    cells.append("–")
                    continue
                cells.append(f"{100 * s['memorised_mean']:.1f} / {100 * s['recovered_mean']:.1f} "
                             f"(best − last {100 * s['drop_mean']:.2f})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: str, results: dict) -> None:
    from .records import write_json

    write_json(os.path.join(out, "results.json"), results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = [f"{name}_{stat}" for _, name in SUMMARY_FIELDS for stat in ("mean", "std")]
    w.writerow(["label", "noise", "n"] + keys)
    for s in results["summary"]:
        w.writerow([s["label"], s["noise"], s["n"]] +
                   ["" if s.get(k) is None else f"{s[k]:.6g}" for k in keys])
    write_atomic(os.path.join(out, "results.csv"), buf.getvalue())
    write_atomic(os.path.join(out, "results.md"), markdown_table(results))
    plot_results(results, os.path.join(out, "accuracy.png"))


def plot_results(results: dict, path: str) -> None:
    """accuracy.png through calibrate_cli.plots.plot_accuracy, or a minimal fallback."""
    try:
        from ..plots import plot_accuracy
    except ImportError:
        plot_accuracy = _plot_accuracy_fallback
    plot_accuracy(results, path)


def _plot_accuracy_fallback(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    noises = results["grid"]["noise"]
    fig, axes = plt.subplots(1, len(noises), figsize=(5 * len(noises), 4), squeeze=False)
    colors = {}
    for r in results["runs"]:
        if not r["epochs"]:
            continue
        ax = axes[0][noises.index(r["noise"])]
        c = colors.setdefault(r["label"], f"C{len(colors) % 10}")
        ax.plot(r["epochs"], [100 * a for a in r["test_top1"]], color=c, alpha=0.8,
                label=r["label"] if r["seed"] == results["grid"]["seeds"][0] else None)
    for ax, n in zip(axes[0], noises):
        ax.set_title(f"noise {n}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
