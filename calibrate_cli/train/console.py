"""What the user sees of a training run's epochs while it runs."""

from __future__ import annotations

import time
from typing import Callable


class EpochProgress:
    """What the user sees of each epoch: a progress bar on stderr while it runs (only when
    stderr is a terminal; refreshed at most four times a second, each refresh reading the
    on-device sums once), then one plain line through ``log`` when it ends."""

    def __init__(self, enabled: bool, log: Callable[[str], None]):
        from ..utils.progress import interactive

        self.enabled = enabled and interactive()
        self.log = log
        self.bar = None
        self.task = None
        self.last = 0.0
        self.title = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stop()

    def _stop(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def start_epoch(self, epoch, epochs, steps):
        self.title = f"epoch {epoch + 1}/{epochs}"
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True,
                            redirect_stdout=False, redirect_stderr=False)
        self.bar.start()
        self.task = self.bar.add_task(self.title, total=steps, info="")
        self.last = time.perf_counter()

    def step(self, step, acc, seen, t0):
        """After step ``step``: ``acc`` the epoch's on-device sums so far (index 1: loss,
        2: correct against the noisy labels, as :func:`~calibrate_cli.train.epoch.epoch_row`
        reads them), ``seen`` samples since ``t0``."""
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self.last < 0.25:
            return
        self.last = now
        _, loss, ok = acc[:3].tolist()
        n = max(seen, 1)
        self.bar.update(self.task, completed=step + 1,
                        info=f"loss {loss / n:.4f}  acc {100 * ok / n:.1f}%  "
                             f"{n / max(now - t0, 1e-9):.0f} samples/s")

    def end_epoch(self, row):
        self._stop()
        memo = "" if row.get("memorised") is None else f"memorised {100 * row['memorised']:.1f}%  "
        self.log(f"{self.title}  loss {row['train_loss']:.4f}  acc "
                 f"{100 * row['train_acc_noisy']:.1f}% (clean {100 * row['train_acc_clean']:.1f}%)  "
                 f"test {100 * row['test_top1']:.2f}%  {memo}{row['samples_per_s']:.0f} samples/s  "
                 + (f"{row['time_s']:.1f} s" if row["time_s"] >= 1 else
                    f"{1000 * row['time_s']:.0f} ms"))
