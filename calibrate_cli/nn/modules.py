"""The module: :class:`CalibratedLoss`, the logit bias, and one class per registry loss."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import torch

from ..engine.average import Averager, check_classes, default_samples
from ..errors import UsageError
from ..engine.logits import DEFAULT_LOGIT_STD, Gaussian
from ..losses import get_loss, get_preset, list_losses, resolve_params
from ..losses.base import LossSpec
from ..engine.solve import solve_epsilon, solve_transfer
from .checks import check_arguments, check_inputs, check_state, parse_bias, parse_std, probe
from .measure import _measure

REDUCTIONS = ("mean", "sum", "none")
CRITERIA = ("match", "peak")  # the trainer's --bias-criterion choices
BRANCHES = ("below", "above")  # which root of match: below the peak of <δ_k>(z) or above
MEASURE = "measure"
_HALF = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------- the bias

def add_logit_bias(logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    r"""z + ε·onehot(y): ε added to each row's logit of its label (a new tensor, same dtype)."""
    shift = torch.full((logits.shape[0], 1), float(epsilon), dtype=logits.dtype,
                       device=logits.device)
    return logits.scatter_add(1, target[:, None], shift)


# --------------------------------------------------------------------- the module

def _parse_calibrate(spec: LossSpec, calibrate, preset: str | None) -> tuple[str, int] | None:
    """``{"q": 100}`` (the parameter and the K its value holds for) or ``"q"`` (the preset's K)."""
    if calibrate is None:
        return None
    if isinstance(calibrate, str):
        spec.param(calibrate)
        if not preset:
            raise UsageError(f"calibrate='{calibrate}': give the class count its value holds for, "
                             f"calibrate={{'{calibrate}': K}} (or a preset, whose K is used)")
        return calibrate, get_preset(spec, preset).classes
    if isinstance(calibrate, Mapping) and len(calibrate) == 1:
        (name, k_from), = calibrate.items()
        spec.param(name)
        return str(name), check_classes(k_from, f"calibrate[{name!r}]")
    raise UsageError(f"calibrate must be {{'param': K_from}} with one parameter, or a parameter "
                     f"name (with a preset), got {calibrate!r}")


class CalibratedLoss(torch.nn.Module):
    r"""A registry loss with the logit bias ε: per sample L(z + ε·onehot(y), y).

    Use :func:`loss` or a loss's own class (``cal.nn.MAE(classes=1000, logit_bias="auto")``).

    Args:
        classes: K, the number of classes (needed for ``logit_bias="auto"`` and ``calibrate``;
            when given, the logits must have K columns).
        logit_bias: ε, a number (default 0: the plain loss) or ``"auto"``: solved for K and
            the logit std under ``criterion``.
        logit_std: s of the Gaussian N(0, s²) of initial logits: a number, ``None`` (0.5, as
            ``calibrate epsilon``) or ``"measure"``: measured on ``model`` and ``loader`` now,
            or later by :meth:`calibrate` (forward refuses to run before).
        preset, params, **param_values: the loss's parameters: defaults, then the preset's
            values (``calibrate losses -v`` lists them), then ``params`` and keywords.
        calibrate: ``{"q": 100}``: the parameter's value holds for 100 classes; carry it to
            ``classes``. A bare name ``"q"`` takes the preset's class count.
        criterion: ``"match"`` (default) or ``"peak"``, as ``calibrate epsilon --criterion``;
            ``reference_classes`` is match's K_ref (10), ``branch`` its root (``"below"`` the
            peak of <δ_k>(z), the default, or ``"above"``).
        reduction: ``"mean"`` (default: over the samples kept), ``"sum"`` or ``"none"``
            (per-sample [N]).
        ignore_index: a target value whose samples are skipped, as in
            ``torch.nn.CrossEntropyLoss`` (default -100, what Hugging Face pads labels with):
            their loss is 0 and ``"mean"`` divides by the number kept (NaN when none is).
        samples, seed: Monte Carlo settings of the engine for losses it cannot average exactly.
        model, loader, batches, forward: for ``logit_std="measure"``, see :func:`measure_logits`.

    Attributes: ``epsilon``, ``params`` (the values the loss uses, calibrated included),
    ``classes``, ``logit_std``, ``spec`` (the registry's :class:`LossSpec`), ``reduction``;
    :meth:`to_dict` gives all of it, with how each number was obtained.
    """

    loss_name: str | None = None  # set on each registry loss's own class

    def __init__(self, classes: int | None = None, *, loss: str | LossSpec | None = None,
                 logit_bias: float | str = 0.0, logit_std: float | str | None = None,
                 preset: str | None = None, params: Mapping[str, float] | None = None,
                 calibrate: Mapping[str, int] | str | None = None, criterion: str = "match",
                 branch: str = "below", reference_classes: int = 10, reduction: str = "mean",
                 samples: int | None = None,
                 seed: int = 0, model: torch.nn.Module | None = None, loader: Iterable | None = None,
                 batches: int = 4, forward: Callable | None = None, ignore_index: int = -100,
                 **param_values: float):
        super().__init__()
        if loss is None:
            loss = self.loss_name
        elif self.loss_name is not None:
            raise TypeError(f"{type(self).__name__} is the {self.loss_name} loss; loss= is for "
                            "CalibratedLoss itself")
        if loss is None:
            raise TypeError("CalibratedLoss needs loss=NAME (or use calibrate_cli.nn.loss)")
        spec = loss if isinstance(loss, LossSpec) else get_loss(loss)
        if reduction not in REDUCTIONS:
            raise UsageError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if criterion not in CRITERIA:
            raise UsageError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        if branch not in BRANCHES:
            raise UsageError(f"branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
        self.spec = spec
        self.reduction = reduction
        self.criterion, self.branch = criterion, branch
        (self.reference_classes, self.samples, self.seed,
         self.ignore_index) = check_arguments(reference_classes, samples, seed, ignore_index)
        self.preset = preset
        if params is not None and not isinstance(params, Mapping):
            raise UsageError(f"params must be a mapping name: value, got {params!r}")
        self.base_params = resolve_params(spec, preset, {**(params or {}), **param_values})
        self.logit_bias = parse_bias(logit_bias)
        self._calibrate = _parse_calibrate(spec, calibrate, preset)
        need = self.logit_bias == "auto" or self._calibrate is not None
        if classes is not None or need:
            if classes is None:
                raise UsageError("classes= (the number of classes K) is needed for "
                                 "logit_bias='auto' and calibrate")
            classes = check_classes(classes)
        self.classes = classes
        self.params = dict(self.base_params)
        self.epsilon = self.logit_bias if isinstance(self.logit_bias, float) else math.nan
        self.logit_std: float | None = None
        self.logit_std_source: str | None = None
        self.calibrated: dict | None = None
        self.epsilon_info: dict | None = None
        self._fn: Callable | None = None
        if isinstance(logit_std, str) and logit_std == MEASURE:
            if model is not None and loader is not None:
                self.calibrate(model, loader, batches, forward=forward)
            elif model is not None or loader is not None:
                raise UsageError("logit_std='measure' needs both model= and loader= "
                                 "(or neither, and .calibrate(model, loader) later)")
            elif not need:
                self._build()
            return
        if logit_std is None:
            s, source = DEFAULT_LOGIT_STD, "default (as calibrate epsilon)"
        else:
            s, source = parse_std(logit_std), "given"
        self._solve(s, source)

    # ............................................................... calibration
    def _solve(self, s: float, source: str) -> None:
        """ε and the calibrated parameter for a Gaussian N(0, s²); ``calibrate train`` solves
        through here too (:func:`calibrate_cli.train.loop.derive_loss_settings`)."""
        spec, base = self.spec, self.base_params
        need = self.logit_bias == "auto" or self._calibrate is not None
        if not need:  # s is not used; recorded only when it was given
            if source == "given":
                self.logit_std, self.logit_std_source = float(s), source
            self._build()
            return
        dist = Gaussian(0.0, s)  # checks 0 < s <= 10

        def averager():
            if self.samples is None and self.seed == 0:
                return None  # the engine's default, as calibrate epsilon and calibrate train
            n = self.samples if self.samples is not None else default_samples(spec)
            return Averager(dist, samples=n, seed=self.seed)

        params, calibrated, info = dict(base), None, None
        if self._calibrate is not None:
            name, k_from = self._calibrate
            res = solve_transfer(spec, base, name, k_from, self.classes, dist, averager=averager())
            params[name] = float(res.value)
            calibrated = {"param": name, "from_classes": int(res.k_from),
                          "to_classes": self.classes, "from_value": float(base[name]),
                          "value": float(res.value)}
        eps = self.logit_bias
        if eps == "auto":
            res = solve_epsilon(spec, params, self.classes, dist, criterion=self.criterion,
                                reference_classes=self.reference_classes, branch=self.branch,
                                averager=averager())
            eps = float(res.epsilon)
            info = {"criterion": self.criterion, "branch": self.branch, "classes": self.classes,
                    "delta_before": float(res.delta_before), "delta_after": float(res.delta_after)}
        self.params, self.calibrated, self.epsilon_info = params, calibrated, info
        self.epsilon = float(eps)
        self.logit_std, self.logit_std_source = float(s), source
        self._build()

    def calibrate(self, model: torch.nn.Module, loader: Iterable, batches: int = 4, *,
                  forward: Callable | None = None, broadcast: bool = True) -> "CalibratedLoss":
        """Measure the logit std on the first ``batches`` batches (:func:`measure_logit_std`)
        and solve ε and the calibrated parameter for it. Call it before training, on every
        process of a distributed job (rank 0's measurement is used). Returns the module."""
        s, n = _measure(model, loader, batches, forward, broadcast, classes=self.classes)
        self._solve(s, f"measured on {n} samples ({batches} batches, train mode)")
        return self

    def _build(self) -> None:
        if self.spec.name not in {s.name for s in list_losses()}:  # a user's own loss: as is
            self._fn = self.spec.torch_loss(self.params)
            return
        self._fn = probe(lambda: self.spec.torch_loss(self.params), self.params,
                         self.epsilon if math.isfinite(self.epsilon) else 0.0, self.classes,
                         self.spec.name)

    # .................................................................... forward
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            raise RuntimeError(f"{type(self).__name__}: logit_std='measure' and not yet measured; "
                               "call .calibrate(model, loader) before training")
        keep = check_inputs(logits, target, self.classes, self.ignore_index)
        target = torch.where(keep, target, torch.zeros_like(target))  # ignored: any valid class
        z = logits.float() if logits.dtype in _HALF else logits
        if self.epsilon != 0.0:
            z = add_logit_bias(z, target, self.epsilon)
        per = torch.where(keep, self._fn(z, target), 0.0)  # ignored samples add nothing
        if self.reduction == "mean":
            return per.sum() / keep.sum()
        if self.reduction == "sum":
            return per.sum()
        return per

    # ................................................................. reporting
    def to_dict(self) -> dict:
        """Everything chosen, JSON-ready (for a run's log or config)."""
        ready = self._fn is not None
        return {"loss": self.spec.name, "classes": self.classes, "params": dict(self.params),
                "epsilon": self.epsilon if ready else None, "logit_bias": self.logit_bias,
                "logit_std": self.logit_std, "logit_std_source": self.logit_std_source,
                "calibrated": self.calibrated, "epsilon_info": self.epsilon_info,
                "reduction": self.reduction, "ignore_index": self.ignore_index,
                "validation": self.validation}

    @property
    def validation(self) -> dict:
        """The validity map's verdict on each value computed here, ``{"epsilon" or the
        calibrated parameter: {"status", "note"}}`` (as the commands print it; see
        :mod:`calibrate_cli.validity`); empty when nothing is computed."""
        from calibrate_cli.validity import note, quantity_of

        out = {}
        if self.logit_bias == "auto":
            n = note(quantity_of("epsilon", self.spec.name, criterion=self.criterion,
                                 reference_classes=self.reference_classes))
            out["epsilon"] = {"status": n.status, "note": n.line}
        if self.calibrated:
            c = self.calibrated
            n = note(quantity_of("transfer", self.spec.name, param=c["param"],
                                 reference_classes=c["from_classes"]),
                     reference_classes=c["from_classes"])
            out[c["param"]] = {"status": n.status, "note": n.line}
        return out

    def extra_repr(self) -> str:
        parts = [] if self.classes is None else [f"classes={self.classes}"]
        if self._fn is None:
            eps = "pending (logit_std='measure': call .calibrate(model, loader))"
        else:
            eps = f"{self.epsilon:.6g}"
            if self.logit_bias == "auto":
                eps += f" ({self.criterion}, logit std {self.logit_std:.4g})"
        parts.append(f"epsilon={eps}")
        parts += [f"{k}={v:g}" for k, v in self.params.items()]
        if self.calibrated:
            c = self.calibrated
            parts.append(f"calibrated {c['param']}: {c['from_value']:g} at K={c['from_classes']}")
        parts.append(f"reduction={self.reduction!r}")
        return ", ".join(parts)

    # .................................................... state, copies, pickling
    _STATE = ("params", "epsilon", "logit_std", "logit_std_source", "calibrated", "epsilon_info")

    def get_extra_state(self) -> dict:
        """ε and the parameters in ``state_dict()``: a checkpoint restores them as chosen (the
        map's verdict is not state: ``to_dict()`` gives it)."""
        state = self.to_dict()
        del state["validation"]
        return {**state, "ready": self._fn is not None}

    def set_extra_state(self, state: dict) -> None:
        """Restore what :meth:`get_extra_state` saved, each field checked as the constructor
        checks its arguments (a NaN ε or a parameter out of range is refused, nothing is
        changed)."""
        if isinstance(state, Mapping) and state.get("loss") == self.spec.name \
                and not state.get("ready"):
            return  # saved before it was measured: nothing to restore
        state = check_state(state, self.spec, self.classes)
        saved = {k: getattr(self, k) for k in self._STATE}
        for k in self._STATE:
            setattr(self, k, state.get(k))
        self.params = dict(self.params)
        try:
            self._build()
        except UsageError:
            for k, v in saved.items():
                setattr(self, k, v)
            raise

    def __getstate__(self):
        state = dict(self.__dict__)
        state["spec"] = self.spec.name  # specs hold lambdas; the name finds the spec again
        state["_fn"] = self._fn is not None  # the torch function is rebuilt from spec and params
        return state

    def __setstate__(self, state):
        ready = state.pop("_fn")
        super().__setstate__({**state, "_fn": None})
        if isinstance(self.spec, str):
            self.spec = get_loss(self.spec)
        if ready:
            self._build()


# ------------------------------------------------------------ one class per loss

_CLASSES: dict[str, type] = {}
_PACKAGE = __name__.rpartition(".")[0]  # calibrate_cli.nn: where the classes are found by name


def _class_name(name: str) -> str:
    return name.upper().replace("-", "_")


def _class_doc(spec: LossSpec) -> str:
    lines = [f"{spec.title}: L = {spec.formula}, δ_k = {spec.delta_formula} (p = σ_k), "
             "with the logit bias ε: per sample L(z + ε·onehot(y), y).", ""]
    if spec.params:
        lines.append("Parameters (keywords, or params={...}):")
        lines += [f"    {p.name} = {p.default:g} in {p.range_text()}: {p.doc}" for p in spec.params]
    if spec.presets:
        lines.append("Presets: " + "; ".join(
            f"{k} ({', '.join(f'{n}={v:g}' for n, v in p.values.items())})"
            for k, p in spec.presets.items()))
    if spec.notes:
        lines.append(spec.notes)
    lines += ["", "Calibration arguments and attributes: see CalibratedLoss."]
    return "\n".join(lines)


def loss_class(name: str) -> type:
    """The module class of a registry loss (by name or alias): ``loss_class("gce") is GCE``."""
    spec = get_loss(name)
    if spec.name not in {s.name for s in list_losses()}:
        raise UsageError(f"'{name}' is not a registry loss; use calibrate_cli.nn.loss('{name}', ...)")
    if spec.name not in _CLASSES:
        cls_name = _class_name(spec.name)
        cls = type(cls_name, (CalibratedLoss,), {
            "loss_name": spec.name, "__doc__": _class_doc(spec), "__module__": _PACKAGE,
            "__qualname__": cls_name})
        _CLASSES[spec.name] = cls
    return _CLASSES[spec.name]
