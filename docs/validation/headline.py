"""Print the README's headline tables from a validation folder's results.json (and its sweeps).

Usage: python docs/validation/headline.py docs/validation/k1000

Every number in the README's validation summary is printed by this script from the committed
files, so that the two cannot drift apart.
"""

from __future__ import annotations

import json
import os
import sys

NOISE = {"none": "clean", "symmetric:0.4": "40 % sym.", "symmetric:0.6": "60 % sym.",
         "pairflip:0.4": "40 % pairflip"}


def _load(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _cell(s):
    if s is None:
        return "–"
    text = f"{100 * s['last_mean']:.2f}"
    if s["n"] > 1:
        text += f" ± {100 * s['last_std']:.2f}"
    return text


def accuracy_table(results: dict) -> str:
    summary = {(s["label"], s["noise"]): s for s in results["summary"]}
    labels = list(dict.fromkeys(s["label"] for s in results["summary"]))
    noises = [n for n in NOISE if any(k[1] == n for k in summary)]
    setting = {}  # what the variant computes: ε, or the recalibrated parameter (seed 0's run)
    for r in results["runs"]:
        if r["label"] in setting:
            continue
        if r.get("logit_bias"):
            setting[r["label"]] = f"ε = {r['logit_bias']:.2f}"
        elif "@calibrated" in r["label"]:
            name = r["label"].split(":")[1] if ":" in r["label"] else "q"
            setting[r["label"]] = f"{name} = {r['params'][name]:.4g}"
        else:
            setting[r["label"]] = ", ".join(f"{k} = {v:g}" for k, v in r["params"].items()
                                            if k in ("q", "alpha")) or "–"
    ns = sorted({s["n"] for s in results["summary"]})
    lines = [f"Test top-1 (%) at the last epoch, mean ± std over seeds ({' or '.join(map(str, ns))} "
             "per cell: `results.md` gives n; no ± where one seed is complete):",
             "",
             "| loss | computed / set | " + " | ".join(NOISE[n] for n in noises) + " |",
             "|---|---|" + "---|" * len(noises)]
    for label in labels:
        row = [f"`{label}`", setting.get(label, "–")]
        cells = [summary.get((label, n)) for n in noises]
        best = {n: max((summary[(lb, n)]["last_mean"] for lb in labels if (lb, n) in summary))
                for n in noises}
        for n, s in zip(noises, cells):
            c = _cell(s)
            if s is not None and s["last_mean"] == best[n]:
                c = f"**{c}**"
            row.append(c)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def memorisation_table(results: dict) -> str:
    summary = {(s["label"], s["noise"]): s for s in results["summary"]}
    labels = list(dict.fromkeys(s["label"] for s in results["summary"]))
    noises = [n for n in NOISE if n != "none" and any(k[1] == n for k in summary)]
    lines = ["Of the training images whose label the noise changed, % predicted as the noisy label "
             "/ as the true label at the last epoch (mean over seeds); best − last test top-1:",
             "",
             "| loss | " + " | ".join(NOISE[n] for n in noises) + " |",
             "|---|" + "---|" * len(noises)]
    for label in labels:
        row = [f"`{label}`"]
        for n in noises:
            s = summary.get((label, n))
            if s is None or s["memorised_mean"] is None:
                row.append("–")
            else:
                row.append(f"{100 * s['memorised_mean']:.0f} / {100 * s['recovered_mean']:.0f} "
                           f"({100 * s['drop_mean']:.2f})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def fit_epochs(results: dict, label: str = "ce", level: float = 0.95) -> str:
    """Per noise level: the epoch at which ``label`` first fits ``level`` of the noisy training
    labels, its best test epoch and its accuracy on the noisy labels at the end (per seed)."""
    lines = []
    for n in NOISE:
        runs = [r for r in results["runs"] if r["label"] == label and r["noise"] == n
                and r["status"] == "complete"]
        if n == "none" or not runs:
            continue
        fit = [next((e for e, a in zip(r["epochs"], r["train_acc_noisy"]) if a >= level), None)
               for r in runs]
        best = [r["epochs"][max(range(len(r["test_top1"])), key=r["test_top1"].__getitem__)]
                for r in runs]
        end = [100 * r["train_acc_noisy"][-1] for r in runs]
        lines.append(f"- {label}, {NOISE[n]}: fits {100 * level:.0f} % of the noisy training labels "
                     f"at epoch {fit}, best test epoch {best}, {min(end):.2f}–{max(end):.2f} % "
                     f"of the noisy labels at the end (seeds {[r['seed'] for r in runs]})")
    return "\n".join(lines)


def main(folder: str) -> None:
    print(accuracy_table(_load(os.path.join(folder, "results.json"))))
    print()
    print(memorisation_table(_load(os.path.join(folder, "results.json"))))
    print()
    print(fit_epochs(_load(os.path.join(folder, "results.json"))))
    for name in sorted(os.listdir(folder)):
        if name.startswith("sweep-") and name.endswith(".md"):
            print()
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                print(fh.read().strip())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "k1000"))
