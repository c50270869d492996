"""What :class:`~calibrate_cli.nn.CalibratedLoss` checks, at construction and in the forward.

Every argument is checked where it enters, with one ``ValueError`` (a
:class:`~calibrate_cli.errors.UsageError`) or ``TypeError`` (an
:class:`~calibrate_cli.errors.ArgumentTypeError`, which is both) naming the argument: a bool is
not a number, non-finite and absurd values are refused before any forward runs, and so is state
loaded by ``load_state_dict`` that the constructor would refuse. In the forward: the logits and
the targets are tensors of the right kinds and shapes; the targets' values (in [0, K) or
``ignore_index``) are checked on the CPU, where reading them costs nothing, but not on an
accelerator, where it would wait for the device every step, nor while ``torch.compile`` traces.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..engine.logits import MAX_LOGIT_BIAS, MAX_STD
from ..errors import ArgumentTypeError, UsageError

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def is_number(value: Any) -> bool:
    """A real number, not a bool (``True`` is an int to Python, not a number to a user)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, (np.integer, np.floating)) and not isinstance(value, np.bool_)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An integer (not a bool, not 2.5) in [low, high] (either end None: open)."""
    span = ("" if low is None and high is None else f" >= {low}" if high is None
            else f" <= {high}" if low is None else f" in [{low}, {high}]")
    if not is_number(value) or (isinstance(value, float) and not value.is_integer()):
        raise ArgumentTypeError(f"{name} must be an integer{span}, got {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise UsageError(f"{name} must be an integer{span}, got {value!r}")
    return v


def _number(value: Any, name: str, expected: str) -> float:
    """``value`` (a number, or a string holding one) as a float; the error names ``name`` and
    says what was ``expected``."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{name} must be {expected}, got {value!r}") from None
    if is_number(value):
        return float(value)
    raise ArgumentTypeError(f"{name} must be {expected}, got {value!r}")


def parse_bias(value: Any) -> float | str:
    """``logit_bias``: ``"auto"`` or a finite number with |ε| <= MAX_LOGIT_BIAS."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    eps = _number(value, "logit_bias", "'auto' or a number")
    if not math.isfinite(eps) or abs(eps) > MAX_LOGIT_BIAS:
        raise UsageError(f"logit_bias must be 'auto' or a finite number in [-{MAX_LOGIT_BIAS:g}, "
                         f"{MAX_LOGIT_BIAS:g}], got {value!r}")
    return eps


def parse_std(value: Any) -> float:
    """``logit_std`` as a number: in (0, MAX_STD]."""
    s = _number(value, "logit_std", "a positive number or 'measure'")
    if not (math.isfinite(s) and 0 < s <= MAX_STD):
        raise UsageError(f"logit_std must be in (0, {MAX_STD:g}] or 'measure', got {value!r}")
    return s


def check_arguments(reference_classes, samples, seed, ignore_index) -> tuple:
    """(reference_classes, samples, seed, ignore_index), each checked."""
    ref = check_int("reference_classes", reference_classes, 2, 10**9)
    if samples is not None:
        samples = check_int("samples", samples, 16, 10**9)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    ignore = check_int("ignore_index", ignore_index, -2**63, 2**63 - 1)  # an int64, as targets
    return ref, samples, seed, ignore


def check_state(state: Any, spec, classes: int | None) -> dict:
    """The fields of a saved module state (``get_extra_state``), checked as the constructor
    checks its arguments; UsageError naming the first bad one."""
    from ..losses import resolve_params

    def bad(field: str, why: str) -> UsageError:
        return UsageError(f"load_state_dict: the saved {field} {why}")

    if not isinstance(state, Mapping):
        raise bad("extra state", f"is a {type(state).__name__}, not a mapping")
    if state.get("loss") != spec.name:
        raise UsageError(f"the saved loss is {state.get('loss')!r}, this one {spec.name!r}")
    if state.get("classes") != classes:
        raise UsageError(f"the saved loss is for classes={state.get('classes')}, this one for "
                         f"classes={classes}")
    out = dict(state)
    params = state.get("params")
    if not isinstance(params, Mapping) or not all(is_number(v) for v in params.values()):
        raise bad("params", f"are not a mapping of numbers: {params!r}")
    try:
        out["params"] = resolve_params(spec, None, dict(params))
    except UsageError as exc:
        raise bad("params", f"are invalid ({exc})") from None
    eps = state.get("epsilon")
    if not is_number(eps) or not math.isfinite(eps) or abs(eps) > MAX_LOGIT_BIAS:
        raise bad("epsilon", f"must be a finite number in [-{MAX_LOGIT_BIAS:g}, "
                             f"{MAX_LOGIT_BIAS:g}], got {eps!r}")
    out["epsilon"] = float(eps)
    s = state.get("logit_std")
    if s is not None and not (is_number(s) and math.isfinite(s) and 0 < s <= MAX_STD):
        raise bad("logit_std", f"must be None or in (0, {MAX_STD:g}], got {s!r}")
    for key in ("calibrated", "epsilon_info"):
        if state.get(key) is not None and not isinstance(state.get(key), Mapping):
            raise bad(key, f"must be None or a mapping, got {state.get(key)!r}")
    if state.get("logit_std_source") is not None and not isinstance(state["logit_std_source"], str):
        raise bad("logit_std_source", f"must be None or text, got {state['logit_std_source']!r}")
    return out


def probe(make, params: Mapping[str, float], epsilon: float, classes: int | None,
          name: str):
    """``make()`` (the loss's torch function), refused when the loss is not finite in float32
    on ordinary logits (std 1, the correct class biased by ε): parameters far out in their
    valid range (``scale=1e300``) overflow there, and every forward would return inf or NaN."""
    shown = ", ".join(f"{k}={v:g}" for k, v in params.items()) or "no parameters"
    why = (f"{name} ({shown}, logit bias {epsilon:g}) is not finite in float32 on logits of "
           "std 1: a parameter or the bias is too large to train with")
    k = min(classes or 10, 64)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, k, generator=g)
    y = torch.arange(4) % k
    z = z.scatter_add(1, y[:, None], torch.full((4, 1), float(epsilon)))
    try:
        fn = make()
        with torch.no_grad():
            out = fn(z, y)
    except (OverflowError, ZeroDivisionError, FloatingPointError):
        raise UsageError(why) from None
    if not bool(torch.isfinite(out).all()):
        raise UsageError(why)
    return fn


def check_inputs(logits: Any, target: Any, classes: int | None, ignore_index: int):
    """The forward's inputs: logits a floating tensor [N, K] (K = ``classes`` when set), target
    integer class indices [N]. Returns the mask of the samples kept (target != ignore_index)."""
    if not isinstance(logits, torch.Tensor):
        raise ArgumentTypeError(f"logits must be a torch.Tensor [N, K], got {type(logits).__name__}")
    if not isinstance(target, torch.Tensor):
        raise ArgumentTypeError(f"target must be a torch.Tensor of class indices [N], got "
                                f"{type(target).__name__}")
    if not logits.is_floating_point():
        raise ArgumentTypeError(f"logits must be floating point, got {logits.dtype}")
    if logits.dim() != 2:
        raise UsageError(f"logits must have shape [N, K], got {tuple(logits.shape)}")
    if classes is not None and logits.shape[1] != classes:
        raise UsageError(f"logits have {logits.shape[1]} classes, the loss was set up for "
                         f"classes={classes}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0] or target.is_floating_point():
        cls = ArgumentTypeError if target.is_floating_point() else UsageError
        raise cls(f"target must be class indices of shape [{logits.shape[0]}], got "
                  f"{target.dtype} of shape {tuple(target.shape)} (soft targets are not "
                  "supported)")
    if target.dtype not in _INTEGER_DTYPES:
        raise ArgumentTypeError(f"target must hold integer class indices (int64), got "
                                f"{target.dtype}")
    keep = target != ignore_index
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        k = logits.shape[1]
        outside = keep & ((target < 0) | (target >= k))
        if bool(outside.any()):
            found = int(target[outside][0])
            raise UsageError(f"target holds class index {found}, outside [0, {k - 1}] for logits "
                             f"of K = {k} classes (ignore_index={ignore_index} marks a sample to "
                             "skip)")
    return keep
