r"""A user's own torch loss as a :class:`LossSpec`: ``--loss package.module:function``.

The reference names a module importable from the current working directory
(it is put first on ``sys.path``: run ``calibrate`` from your project
directory) or a ``.py`` file, and a callable in it (``module:Class.attr`` also
works). The callable is called as ``fn(logits, target)`` with

* ``logits``: float tensor ``[N, K]``, ``target``: long tensor ``[N]``;
* result: the per-sample losses ``[N]`` (preferred), or one scalar that is the
  **mean or the sum** of per-sample losses over the batch.

Which of the three it is, is found on a probe batch (4 samples, seeded random
logits, targets spread over the classes) the first time each number of
classes K is used: a scalar is compared with the mean and the sum of the
losses of the 4 samples called one at a time. A scalar that is neither is
rejected, and so are per-sample losses that change when the other samples
of the batch change. A class (e.g. a ``torch.nn.Module`` subclass) is instantiated
without arguments.

δ_k = ∂L/∂z_k is computed by autograd on float64 logits with the correct class
in column 0 (``target`` all zeros), in chunks. For a scalar loss the gradient
of the batch scalar is scaled by N (mean) or 1 (sum), which is exact because
the probe checked that samples do not interact. If the function fails on
float64 logits but works on float32 ones, δ_k is computed in float32 (about 7
digits).

``torch_loss`` returns per-sample losses ``[N]``: the function itself for a
per-sample loss; for a scalar loss, the function called on batches of one
(correct but slow: return per-sample losses for training).

``bounded`` is reported as False: the tool does not know whether a user loss
is bounded, and does not claim it.

Every problem is a :class:`~calibrate_cli.errors.UsageError` with a one-line
message: reference malformed, module not importable, attribute missing, not
callable, raises on the probe batch, result not a tensor, wrong shape, not
finite, or not differentiable with respect to the logits.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UsageError
from .base import LossSpec, Params

PROBE_N = 4
PROBE_SCALE = 2.0  # standard deviation of the probe logits
CHUNK_ELEMENTS = 1 << 21  # logits per autograd chunk (16 MiB in float64)


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    msg = _one_line(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# ------------------------------------------------------------------ loading
def _split_ref(ref: str) -> tuple[str, str]:
    module, sep, attr = ref.strip().rpartition(":")
    if not sep or not module.strip() or not attr.strip():
        raise UsageError(
            f"user loss '{ref}' must be written package.module:function (or path/to/file.py:function)"
        )
    return module.strip(), attr.strip()


def _import_module(module: str) -> Any:
    cwd = os.getcwd()
    if module.endswith(".py"):
        path = Path(module).expanduser()
        if not path.is_absolute():
            path = Path(cwd) / path
        if not path.is_file():
            raise UsageError(f"cannot import '{module}': no such file")
        name = "calibrate_user_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import '{module}': not a Python module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except (Exception, SystemExit) as exc:
            del sys.modules[name]
            raise UsageError(f"importing '{module}' failed: {_describe(exc)}") from None
        return mod
    # Users run calibrate from their project directory: search it first. It
    # stays on sys.path so that the module's own lazy imports keep working.
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module == missing or module.startswith(missing + ".")):
            raise UsageError(
                f"cannot import module '{module}': not found (searched the current directory"
                f" {cwd} and the installed packages)"
            ) from None
        raise UsageError(
            f"importing module '{module}' failed: it imports '{missing}', which is not installed"
        ) from None
    except (Exception, SystemExit) as exc:
        raise UsageError(f"importing module '{module}' failed: {_describe(exc)}") from None


def _load(ref: str) -> Callable:
    module, attr = _split_ref(ref)
    obj: Any = _import_module(module)
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = module if i == 0 else f"{module}:{'.'.join(attr.split('.')[:i])}"
            names = [n for n in dir(obj) if not n.startswith("_")]
            near = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UsageError(f"'{where}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except (Exception, SystemExit) as exc:
            raise UsageError(
                f"'{ref}' is a class that could not be created without arguments"
                f" ({_describe(exc)}); name a function or a module-level instance"
            ) from None
    if not callable(obj):
        raise UsageError(f"'{ref}' is a {type(obj).__name__}, not a function fn(logits, target)")
    return obj


# ------------------------------------------------------------------- probing
@dataclass(frozen=True)
class _Mode:
    """How the user's function behaves for one K: dtype used for δ_k, reduction."""

    dtype: Any  # torch.float64 or torch.float32
    reduction: str  # "none" (per-sample [N]), "mean" or "sum"


class _UserLoss:
    """The user's callable plus what the probes found out, per number of classes."""

    def __init__(self, ref: str, fn: Callable) -> None:
        self.ref = ref
        self.fn = fn
        self.modes: dict[int, _Mode] = {}

    def _guard(self, thunk: Callable, what: str):
        """Run user code (the loss, or autograd through it): whatever it raises becomes one
        UsageError. That includes SystemExit (``sys.exit(0)`` in the loss must not end
        ``calibrate`` silently with exit code 0) and other BaseExceptions; only
        KeyboardInterrupt (a real Ctrl-C) passes through."""
        try:
            return thunk()
        except KeyboardInterrupt:
            raise
        except SystemExit as exc:
            raise UsageError(f"user loss '{self.ref}' called sys.exit({exc.code!r}) on {what};"
                             " a loss must return its values, not end the program") from None
        except BaseException as exc:
            raise UsageError(f"user loss '{self.ref}' raised {_describe(exc)} on {what}") from None

    def _grad(self, out, z, what: str, **kw):
        import torch

        return self._guard(lambda: torch.autograd.grad(out.sum(), z, **kw), what)

    def _call(self, logits, target, what: str):
        import torch

        out = self._guard(lambda: self.fn(logits, target), what)
        if not isinstance(out, torch.Tensor):
            raise UsageError(
                f"user loss '{self.ref}' returned {type(out).__name__} on {what};"
                " expected a torch tensor of per-sample losses [N] (or their mean or sum)"
            )
        return out

    def _try_probe(self, K: int, dtype) -> _Mode:
        import torch

        gen = torch.Generator().manual_seed(12345)
        logits = (PROBE_SCALE * torch.randn(PROBE_N, K, generator=gen, dtype=torch.float64)).to(dtype)
        target = torch.arange(PROBE_N, dtype=torch.long) * (K - 1) // (PROBE_N - 1)
        what = f"a probe batch (logits [{PROBE_N}, {K}] {str(dtype).replace('torch.', '')})"
        z = logits.clone().requires_grad_(True)
        with torch.enable_grad():
            out = self._call(z, target, what)
        if tuple(out.shape) == (PROBE_N,):
            reduction = "none"
        elif out.dim() == 0 or tuple(out.shape) == (1,):
            reduction = ""
        else:
            raise UsageError(
                f"user loss '{self.ref}' returned shape {tuple(out.shape)} on {what};"
                f" expected per-sample losses of shape ({PROBE_N},) or a scalar"
            )
        if not bool(torch.isfinite(out.detach()).all()):
            raise UsageError(f"user loss '{self.ref}' returned non-finite values on {what}")
        if not out.requires_grad:
            raise UsageError(
                f"user loss '{self.ref}' is not differentiable in the logits on {what}"
                " (compute it with torch operations on the logits, without .detach(), .item() or numpy)"
            )
        (grad,) = self._grad(out, z, what, allow_unused=True)
        if grad is None or not bool(torch.isfinite(grad).all()):
            raise UsageError(
                f"user loss '{self.ref}' has {'no' if grad is None else 'a non-finite'}"
                f" gradient with respect to the logits on {what}"
            )
        # Compare with the losses of the samples called one at a time.
        singles, grads = [], []
        for i in range(PROBE_N):
            zi = logits[i : i + 1].clone().requires_grad_(True)
            with torch.enable_grad():
                v = self._call(zi, target[i : i + 1], what)
            if v.numel() != 1:
                raise UsageError(
                    f"user loss '{self.ref}' returned shape {tuple(v.shape)} for a batch of one on"
                    f" {what}; expected one value"
                )
            (gi,) = self._grad(v, zi, what, allow_unused=True)
            singles.append(float(v.detach().sum()))
            grads.append(torch.zeros_like(zi) if gi is None else gi.detach())
        singles_t = torch.tensor(singles, dtype=torch.float64)
        grad_one = torch.cat(grads).to(torch.float64)
        rtol = 1e-6 if dtype == torch.float64 else 1e-4
        if reduction == "none":
            same = torch.allclose(out.detach().to(torch.float64), singles_t, rtol=rtol, atol=rtol)
            if same and torch.allclose(grad.to(torch.float64), grad_one, rtol=rtol, atol=rtol):
                return _Mode(dtype, "none")
            raise UsageError(
                f"user loss '{self.ref}' gives a sample a different loss or gradient in a batch than"
                f" alone on {what}; each per-sample loss must depend on its own logits only"
            )
        total = float(out.detach().sum())
        for name, value, scale in (("mean", float(singles_t.mean()), PROBE_N), ("sum", float(singles_t.sum()), 1)):
            close_value = abs(total - value) <= rtol * max(1.0, abs(value))
            close_grad = torch.allclose(grad.to(torch.float64) * scale, grad_one, rtol=rtol, atol=rtol)
            if close_value and close_grad:
                return _Mode(dtype, name)
        raise UsageError(
            f"user loss '{self.ref}' returns a scalar that is neither the mean nor the sum of its"
            f" per-sample losses on {what}; return per-sample losses of shape [N]"
        )

    def mode(self, K: int) -> _Mode:
        """Probe the function for K classes (once per K); float64 first, then float32."""
        if K in self.modes:
            return self.modes[K]
        import torch

        if K < 2:
            raise UsageError(f"user loss '{self.ref}' needs at least 2 classes, got {K}")
        try:
            mode = self._try_probe(K, torch.float64)
        except UsageError as exc64:
            try:
                mode = self._try_probe(K, torch.float32)
            except UsageError:
                raise exc64 from None
        self.modes[K] = mode
        return mode

    # ---------------------------------------------------------------- δ_k
    def delta(self, logits: np.ndarray, params: Params) -> np.ndarray:
        """δ_k = ∂L/∂z_k by autograd, correct class in column 0 of ``logits[N, K]``."""
        import torch

        logits = np.asarray(logits, dtype=float)
        n, K = logits.shape
        mode = self.mode(K)
        out = np.empty(n)
        bad_loss = np.zeros(n, dtype=bool)  # NaN/inf losses (a scalar loss: its whole batch)
        rows = max(1, CHUNK_ELEMENTS // K)
        for start in range(0, n, rows):
            block = logits[start : start + rows]
            z = torch.tensor(block, dtype=mode.dtype).requires_grad_(True)
            target = torch.zeros(z.shape[0], dtype=torch.long)
            what = f"logits [{z.shape[0]}, {K}]"
            with torch.enable_grad():
                v = self._call(z, target, what)
                if mode.reduction == "none" and tuple(v.shape) != (z.shape[0],):
                    raise UsageError(
                        f"user loss '{self.ref}' returned shape {tuple(v.shape)} on {what};"
                        f" expected ({z.shape[0]},)"
                    )
                finite = torch.isfinite(v.detach()).reshape(-1).numpy()
                bad_loss[start : start + rows] = ~finite if finite.size == len(block) else ~finite.all()
                (grad,) = self._grad(v, z, what)
            scale = z.shape[0] if mode.reduction == "mean" else 1
            out[start : start + rows] = grad[:, 0].to(torch.float64).numpy() * scale
        bad = ~np.isfinite(out)
        if bad.any():
            row = logits[np.argmax(bad)]
            raise UsageError(
                f"user loss '{self.ref}' has a non-finite gradient at {int(bad.sum())} of {n} logit"
                f" vectors (e.g. correct-class logit {row[0]:.3g}, others up to {row[1:].max():.3g});"
                " compute it from log_softmax to stay finite"
            )
        if bad_loss.any():  # finite gradients of a NaN loss (torch.where) would average silently
            row = logits[np.argmax(bad_loss)]
            raise UsageError(
                f"user loss '{self.ref}' returned a non-finite loss at {int(bad_loss.sum())} of {n} logit"
                f" vectors (e.g. correct-class logit {row[0]:.3g}, others up to {row[1:].max():.3g});"
                " <δ_k> would be wrong, so it is not computed"
            )
        return out

    # ----------------------------------------------------------------- torch
    def per_sample(self, params: Params) -> Callable:
        """``fn(logits[N, K], target[N]) -> per-sample losses [N]``."""
        import torch

        def loss(logits, target):
            n, K = logits.shape
            mode = self.mode(K)
            if mode.reduction == "none":
                v = self._call(logits, target, f"logits [{n}, {K}]")
                if tuple(v.shape) != (n,):
                    raise UsageError(
                        f"user loss '{self.ref}' returned shape {tuple(v.shape)} on logits"
                        f" [{n}, {K}]; expected ({n},)"
                    )
                return v
            return torch.stack(
                [self._call(logits[i : i + 1], target[i : i + 1], "a batch of one").reshape(())
                 for i in range(n)]
            )

        loss.__name__ = getattr(self.fn, "__name__", "user_loss")
        return loss


def user_loss(ref: str, *, classes: int | None = None) -> LossSpec:
    """The LossSpec of the torch loss named by ``package.module:function``.

    Imports and checks the callable now; probes it on a batch the first time
    each K is used (now, if ``classes`` is given). See the module docstring for
    the calling convention and what is checked.
    """
    user = _UserLoss(ref.strip(), _load(ref))
    if classes is not None:
        user.mode(int(classes))
    return LossSpec(
        name=user.ref,
        title=f"user loss {user.ref}",
        formula=f"{user.ref}(logits, target)",
        delta_formula="∂L/∂z_k by torch autograd (float64)",
        params=(),
        bounded=False,
        full=user.delta,
        torch_factory=user.per_sample,
        notes="A user's torch loss; δ_k by autograd. Boundedness is not checked (reported False).",
    )
