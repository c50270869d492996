"""What keeps a training run safe: its folder's lock, an unusable checkpoint refused in one
line, training stopped at the first non-finite loss, a Ctrl-C held while an epoch's results are
written, and the status and message of a run that ended with an error. Used by
:mod:`calibrate_cli.train.loop`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from typing import Any, Callable

import torch

from ..utils.atomic import clean_temporaries
from ..errors import CalibrateError, RunError, UsageError
from ..utils.lock import lock_folder

#: What a checkpoint of :func:`train` holds.
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "history", "derived", "noise_hash")


def load_checkpoint(path: str, model: torch.nn.Module, device, noise_hash: str) -> dict:
    """Read a run's checkpoint for ``--resume`` into ``model`` and return it; every way it can
    be unusable (empty, truncated, not a checkpoint, another model, other labels) is a
    one-line UsageError."""
    def bad(why: str) -> UsageError:
        return UsageError(f"--resume: the checkpoint '{path}' {why}; restore it, or start a new "
                          "run in another --out")

    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # EOFError (empty), RuntimeError (truncated zip), pickle errors...
        raise bad(f"cannot be read ({type(exc).__name__}: "
                  f"{' '.join(str(exc).split())[:120] or 'empty file'})") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise bad("is not a checkpoint of calibrate train")
    why = checkpoint_problem(state)
    if why:
        raise bad(f"holds {why}")
    if state.get("noise_hash") != noise_hash:
        raise UsageError(f"--resume: the noisy labels differ from the saved run "
                         f"(hash {noise_hash} vs {state.get('noise_hash')})")
    try:
        model.load_state_dict(state["model"])
    except Exception as exc:  # missing keys or other shapes: another model
        first = " ".join(str(exc).split())[:160]
        raise bad(f"holds the weights of another model ({first})") from None
    return state


def _number(v: Any, *, none: bool = False) -> bool:
    if v is None:
        return none
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def checkpoint_problem(state: dict) -> str | None:
    """What is wrong with the fields of a checkpoint (None: nothing), checked before a resume
    trains anything: ``epoch`` a count, ``history`` one complete record per epoch (every
    column of metrics.csv, finite numbers), ``derived`` the loss settings training used, the
    optimiser's state a state dict."""
    from .records import METRIC_COLUMNS

    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return f"epoch = {epoch!r}, not a count of completed epochs"
    history = state.get("history")
    if not isinstance(history, list) or len(history) != epoch:
        n = len(history) if isinstance(history, list) else type(history).__name__
        return f"a history of {n} records for {epoch} epochs"
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            return f"history record {i + 1} = {row!r}, not a record"
        missing = [c for c in METRIC_COLUMNS if c not in row]
        if missing:
            return f"history record {i + 1} without {', '.join(missing)}"
        if row["epoch"] != i + 1:
            return f"history record {i + 1} for epoch {row['epoch']!r}"
        for key, value in row.items():
            if not _number(value, none=key in ("memorised", "recovered")):
                return f"history record {i + 1} with {key} = {value!r}, not a finite number"
    derived = state.get("derived")
    if not isinstance(derived, dict) or not isinstance(derived.get("params"), dict):
        return f"loss settings (derived) = {derived!r}, not the settings training used"
    if not _number(derived.get("epsilon")) or not all(_number(v) for v in
                                                       derived["params"].values()):
        return (f"loss settings with epsilon = {derived.get('epsilon')!r} and parameters "
                f"{derived['params']!r}, not finite numbers")
    for key in ("optimizer", "model"):
        if not isinstance(state.get(key), dict):
            return (f"{'an' if key[0] in 'aeiou' else 'a'} {key} state of type "
                    f"{type(state.get(key)).__name__}, not a state dict")
    if not isinstance(state.get("noise_hash"), str):
        return f"noise_hash = {state.get('noise_hash')!r}"
    return None


@contextlib.contextmanager
def held_interrupt():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it at its end.

    Around the end-of-epoch checkpoint: without it, an interrupt between writing the
    checkpoint and recording that it was written would leave metrics.json one epoch behind
    the checkpoint. Outside the main thread (no signal handlers there) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class RunLock:
    """A run folder's lock, taken once the folder exists (:mod:`calibrate_cli.utils.lock`)."""

    def __init__(self):
        self.lock = None

    def take(self, out: str, recheck: Callable[[], Any]) -> None:
        """Lock ``out``, then call ``recheck`` (what the folder holds may have changed before
        the lock) and remove the temporaries a killed process left there."""
        if self.lock is None:
            self.lock = lock_folder(out, "--out")
            recheck()
            clean_temporaries(out)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class NonFinite(RunError):
    """The training loss (or the weights) stopped being finite."""


class FiniteGuard:
    """Stops training at the first non-finite loss or logits, before the optimiser steps on it.

    One process on the CPU: every step (a free check). One process on an accelerator: a flag
    kept on the device, read every 20 steps (a read waits for the device). Several processes:
    at the end of the epoch, on the loss summed over all of them, so that every process stops
    at the same point. At the end of each epoch every number of its record (loss, accuracies,
    logit statistics) must be finite too, and so must the weights, so a checkpoint never holds
    non-finite weights and metrics.json never a NaN: such a run is ``diverged``.
    """

    def __init__(self, device: torch.device, distributed: bool):
        self.every = 1 if device.type == "cpu" else 20
        self.per_step = not distributed
        self.flag = None

    def check(self, loss: torch.Tensor, epoch: int, step: int,
              logits: torch.Tensor | None = None) -> None:
        if not self.per_step:
            return
        if self.every == 1:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFinite(f"the loss is {value} at step {step + 1} of epoch {epoch + 1}")
            if logits is not None and not bool(torch.isfinite(logits.detach()).all()):
                raise NonFinite(f"the logits are not finite at step {step + 1} of epoch "
                                f"{epoch + 1}")
            return
        bad = ~torch.isfinite(loss.detach())
        if logits is not None:
            bad = bad | ~torch.isfinite(logits.detach()).all()
        self.flag = bad if self.flag is None else self.flag | bad
        if (step + 1) % self.every == 0 and bool(self.flag):
            raise NonFinite(f"the loss or the logits are not finite at a step up to {step + 1} "
                            f"of epoch {epoch + 1}")

    def epoch_end(self, mean_loss: float, epoch: int, model: torch.nn.Module,
                  row: dict | None = None) -> None:
        if self.flag is not None and bool(self.flag):
            raise NonFinite(f"the loss or the logits are not finite at a step of epoch {epoch + 1}")
        self.flag = None
        if not math.isfinite(mean_loss):
            raise NonFinite(f"the mean training loss of epoch {epoch + 1} is {mean_loss}")
        for key, value in (row or {}).items():  # the test columns are still to come (NaN)
            if (isinstance(value, float) and not math.isfinite(value)
                    and not key.startswith("test_")):
                raise NonFinite(f"the {key} of epoch {epoch + 1} is {value} (the logits "
                                "overflow)")
        with torch.no_grad():
            finite = [p.isfinite().all() for p in model.parameters()]
            if finite and not bool(torch.stack(finite).all()):
                raise NonFinite(f"the weights are not finite after epoch {epoch + 1}")


def failure(exc: BaseException, saved: int, out: str) -> tuple[str, BaseException]:
    """The status of a run that ended with ``exc``, and the error to raise (``exc`` itself
    when it already says what happened)."""
    kept = (f"the checkpoint of epoch {saved} is kept in '{out}'" if saved
            else "no epoch was completed")
    if isinstance(exc, NonFinite):
        return "diverged", RunError(f"training diverged: {exc}; stopped, {kept} (try a lower "
                                    "--lr, or check the loss)")
    if isinstance(exc, SystemExit):
        return "failed", UsageError(
            f"user code called sys.exit({exc.code!r}) during training (a loss must return its "
            f"value, not end the process); the run was stopped, {kept}")
    return "failed", exc


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, CalibrateError) else f"{type(exc).__name__}: {text}"
