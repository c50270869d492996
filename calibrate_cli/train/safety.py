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
    if state.get("noise_hash") != noise_hash:
        raise UsageError(f"--resume: the noisy labels differ from the saved run "
                         f"(hash {noise_hash} vs {state.get('noise_hash')})")
    try:
        model.load_state_dict(state["model"])
    except Exception as exc:  # missing keys or other shapes: another model
        first = " ".join(str(exc).split())[:160]
        raise bad(f"holds the weights of another model ({first})") from None
    return state


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
    """Stops training at the first non-finite loss, before the optimiser steps on it.

    One process on the CPU: every step (a free check). One process on an accelerator: a flag
    kept on the device, read every 20 steps (a read waits for the device). Several processes:
    at the end of the epoch, on the loss summed over all of them, so that every process stops
    at the same point. Before each checkpoint the weights are checked too, so a checkpoint
    never holds non-finite weights.
    """

    def __init__(self, device: torch.device, distributed: bool):
        self.every = 1 if device.type == "cpu" else 20
        self.per_step = not distributed
        self.flag = None

    def check(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        if not self.per_step:
            return
        if self.every == 1:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFinite(f"the loss is {value} at step {step + 1} of epoch {epoch + 1}")
            return
        bad = ~torch.isfinite(loss.detach())
        self.flag = bad if self.flag is None else self.flag | bad
        if (step + 1) % self.every == 0 and bool(self.flag):
            raise NonFinite(f"the loss is not finite at a step up to {step + 1} of epoch "
                             f"{epoch + 1}")

    def epoch_end(self, mean_loss: float, epoch: int, model: torch.nn.Module) -> None:
        if self.flag is not None and bool(self.flag):
            raise NonFinite(f"the loss is not finite at a step of epoch {epoch + 1}")
        self.flag = None
        if not math.isfinite(mean_loss):
            raise NonFinite(f"the mean training loss of epoch {epoch + 1} is {mean_loss}")
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
