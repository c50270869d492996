"""What a training run leaves in its folder, and what :func:`~calibrate_cli.train.loop.train`
returns.

Files (rank 0 writes them, each through :func:`calibrate_cli.utils.atomic.write_atomic`: never half
written): ``config.json`` (the settings, the derived loss settings, the noise, the dataset),
``noise.json`` and ``noisy_labels.npz``, ``checkpoint.pt`` after every epoch, and
``metrics.csv`` / ``metrics.json``: one row per completed epoch (the columns are described in
:mod:`calibrate_cli.train.epoch`); the JSON adds the run's status (``running``, ``complete``,
``interrupted``, or ``diverged`` and ``failed`` with the one-line ``error``) and a summary of
the last and the best epoch.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..utils.atomic import write_atomic
from ..utils.strict_json import dumps

CHECKPOINT = "checkpoint.pt"
#: Columns of metrics.csv, in order (imagenet_* only when --imagenet-val-dir is given).
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc_noisy", "train_acc_clean",
                  "memorised", "recovered", "test_top1", "test_top5", "logit_correct_mean", "logit_correct_std",
                  "logit_other_mean", "logit_other_std", "samples_per_s", "time_s")


@dataclass
class TrainResult:
    out_dir: str
    status: str
    history: list[dict] = field(default_factory=list)
    derived: dict = field(default_factory=dict)
    noise: dict = field(default_factory=dict)

    @property
    def last_top1(self) -> float | None:
        return self.history[-1]["test_top1"] if self.history else None

    @property
    def best_top1(self) -> float | None:
        return max(r["test_top1"] for r in self.history) if self.history else None


def write_json(path: str, obj: Any) -> None:
    """``obj`` as strict JSON (non-finite numbers as null: :mod:`calibrate_cli.utils.strict_json`),
    atomically."""
    write_atomic(path, dumps(obj, indent=2) + "\n")


def save_checkpoint(path: str, state: dict) -> None:
    """``torch.save`` to a temporary file, then rename (never a half-written checkpoint)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def write_metrics(out: str, history: list[dict], record: dict, status: str, extra: dict,
                  error: str | None = None) -> None:
    """metrics.csv and metrics.json of the epochs in ``history``; ``record`` is config.json's
    content, ``extra`` the additional evaluation sets (their columns follow test_top5)."""
    cols = list(METRIC_COLUMNS)
    for name in extra:
        cols[cols.index("test_top5") + 1:cols.index("test_top5") + 1] = [f"{name}_top1",
                                                                          f"{name}_top5"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in history:  # no value, or none that is finite: an empty cell
        w.writerow([r["epoch"]] + ["" if r.get(c) is None or not math.isfinite(r[c])
                                   else f"{r[c]:.6g}" for c in cols[1:]])
    write_atomic(os.path.join(out, "metrics.csv"), buf.getvalue())
    summary = {}
    if history:
        best = max(history, key=lambda r: r["test_top1"])
        summary = {"last_top1": history[-1]["test_top1"], "last_top5": history[-1]["test_top5"],
                   "best_top1": best["test_top1"], "best_epoch": best["epoch"],
                   "best_minus_last": best["test_top1"] - history[-1]["test_top1"],
                   "memorised": history[-1].get("memorised"),
                   "recovered": history[-1].get("recovered")}
    write_json(os.path.join(out, "metrics.json"), {
        "version": record["version"], "command": record["command"], "status": status,
        "epochs_planned": record["config"]["epochs"], "epochs_done": len(history),
        **({"error": error} if error else {}),
        "derived": record["derived"], "noise": record["noise"], **summary, "epochs": history})
