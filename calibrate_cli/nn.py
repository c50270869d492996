r"""The registry's losses as ``torch.nn.Module`` s, with the logit bias ε and calibrated parameters.

For training code you already have (a plain loop, Lightning, Hugging Face's ``Trainer``,
timm's train script, a DDP job): build the criterion once, call it like
``torch.nn.CrossEntropyLoss``.

    >>> import calibrate_cli as cal
    >>> crit = cal.nn.loss("mae", classes=1000, logit_bias="auto")   # MAE*: ε = 4.7342
    >>> loss = crit(model(x), y)                                       # mean over the batch
    >>> crit.epsilon, crit.to_dict()                                   # what was chosen, for logs

The loss of a sample is the loss at biased logits (the trainer's, ``calibrate train``'s):

.. math::  L_\varepsilon(z, y) = L(z + \varepsilon\, e_y,\; y),

ε added to the logit of the sample's label. ε (``logit_bias="auto"``) and a calibrated
parameter (``calibrate={"q": 100}``: GCE's q carried from K = 100 to ``classes``) come
from the engine (:func:`calibrate_cli.solve.solve_epsilon`, :func:`~calibrate_cli.solve.solve_transfer`)
for a Gaussian N(0, s²) of initial logits: s = ``logit_std`` (0.5, the default of
``calibrate epsilon``), or measured on your model and data (``logit_std="measure"`` with
``model=`` and ``loader=``, or ``.calibrate(model, loader)`` later) by
:func:`measure_logit_std`, the code ``calibrate train`` measures with.

One class per registry loss (``cal.nn.MAE``, ``cal.nn.GCE``, ``cal.nn.NCE_AGCE``, ...:
the registry name in capitals, ``-`` as ``_``), made from the registry on first use;
:func:`loss` takes any name or alias, or ``package.module:function`` for your own loss.

Forward: ``logits`` [N, K] (float64, float32, or float16/bfloat16, which are computed in
float32 and give a float32 loss), ``target`` [N] class indices; returns the mean (default),
the sum or the per-sample losses [N] (``reduction`` as in torch). The forward is stateless
(ε is a Python number fixed at construction) and reads nothing back from the device, so it
runs under DDP and ``torch.compile`` without host synchronisation; the one exception is
``bitemp``, whose tempered-softmax normaliser checks its convergence on the host once per
Newton step. Soft targets (mixup, cutmix, label smoothing) are not supported: the bias goes
to the labelled class.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from .errors import UsageError
from .logits import DEFAULT_LOGIT_STD, Gaussian, centre_rows
from .losses import get_loss, get_preset, list_losses, resolve_params
from .losses.base import LossSpec

__all__ = ["CalibratedLoss", "loss", "loss_class", "add_logit_bias", "measure_logits",
           "measure_logit_std", "centred_std", "REDUCTIONS", "CRITERIA"]

REDUCTIONS = ("mean", "sum", "none")
CRITERIA = ("match", "peak")  # the trainer's --bias-criterion choices
MEASURE = "measure"
_HALF = (torch.float16, torch.bfloat16)
_LABEL_KEYS = ("labels", "label", "target", "targets")


# ----------------------------------------------------------------------- the bias

def add_logit_bias(logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    r"""z + ε·onehot(y): ε added to each row's logit of its label (a new tensor, same dtype)."""
    shift = torch.full((logits.shape[0], 1), float(epsilon), dtype=logits.dtype,
                       device=logits.device)
    return logits.scatter_add(1, target[:, None], shift)


# ------------------------------------------------------------------------ measuring

def _device_of(model: torch.nn.Module):
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return None


def _to(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) and device is not None else x


def _default_forward(model: torch.nn.Module, batch) -> Any:
    """The inputs of a batch: a tensor, the first item of a tuple/list ``(x, y, ...)``, or a
    dict of keyword arguments without its labels (Hugging Face style)."""
    dev = _device_of(model)
    if isinstance(batch, torch.Tensor):
        return model(_to(batch, dev))
    if isinstance(batch, Mapping):
        return model(**{k: _to(v, dev) for k, v in batch.items() if k not in _LABEL_KEYS})
    if isinstance(batch, (tuple, list)) and batch:
        return model(_to(batch[0], dev))
    raise UsageError(f"cannot find the inputs in a batch of type {type(batch).__name__}; "
                     "pass forward=lambda model, batch: model(...)")


def _as_logits(out) -> torch.Tensor:
    """The logits of a model's output: a tensor, ``.logits`` (Hugging Face), or the first item."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise UsageError(f"cannot find the logits in a model output of type {type(out).__name__}; "
                     "pass forward=lambda model, batch: <logits tensor>")


@torch.no_grad()
def measure_logits(model: torch.nn.Module, loader: Iterable, batches: int = 4, *,
                   forward: Callable | None = None) -> np.ndarray:
    """The model's logits [N, K] (float64) on the first ``batches`` batches of ``loader``.

    As at the start of training: train mode (dropout on, batch norm on batch statistics),
    no gradients; every buffer (batch-norm running statistics) is restored afterwards and
    the mode set back, so training starts from the same state. ``forward(model, batch)``
    returns the logits of a batch (default: the batch itself, its first item, or
    ``model(**batch)`` without its labels; ``.logits`` of the output is used when it has one).
    Outputs with more than two dimensions are flattened to [-1, K].
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UsageError(f"batches must be an integer >= 1, got {batches!r}")
    call = forward or _default_forward
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    out = []
    try:
        for batch in itertools.islice(loader, batches):
            z = _as_logits(call(model, batch))
            out.append(z.reshape(-1, z.shape[-1]).float().cpu())
    finally:
        for name, b in model.named_buffers():
            if name in saved:
                b.copy_(saved[name])
        model.train(was_training)
    if not out:
        raise UsageError("the loader gave no batch to measure the logits on")
    return torch.cat(out).numpy().astype(np.float64)


def centred_std(z: np.ndarray) -> float:
    """The std of logits [N, K] centred per row (softmax ignores a row's common shift):
    what ``logit_std`` and ``calibrate train``'s measured std mean."""
    return float(centre_rows(z).std())


def _from_rank0(value):
    """Rank 0's value on every process of an initialised process group (else the value)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _measure(model, loader, batches, forward, broadcast) -> tuple[float, int]:
    z = measure_logits(model, loader, batches, forward=forward)
    s, n = centred_std(z), int(z.shape[0])
    if broadcast:
        s, n = _from_rank0((s, n))
    if not math.isfinite(s) or s <= 0:
        raise UsageError("the model's logits on the first batches have zero or undefined spread; "
                         "give logit_std=<number>")
    return s, n


def measure_logit_std(model: torch.nn.Module, loader: Iterable, batches: int = 4, *,
                      forward: Callable | None = None, broadcast: bool = True) -> float:
    """The std of the model's row-centred logits on the first ``batches`` batches
    (:func:`measure_logits`, :func:`centred_std`): ``calibrate train``'s measurement.

    Under ``torch.distributed`` (an initialised process group) every process must call it;
    all of them get rank 0's value (``broadcast=False``: each its own), so that every
    process trains with the same ε.
    """
    return _measure(model, loader, batches, forward, broadcast)[0]


# --------------------------------------------------------------------- the module

def _parse_bias(value) -> float | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"logit_bias must be 'auto' or a number, got {value!r}") from None
    if not math.isfinite(eps):
        raise UsageError(f"logit_bias must be finite, got {value!r}")
    return eps


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
        from .average import check_classes

        (name, k_from), = calibrate.items()
        spec.param(name)
        return str(name), check_classes(k_from)
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
            ``reference_classes`` is match's K_ref (10).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample [N]).
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
                 reference_classes: int = 10, reduction: str = "mean", samples: int | None = None,
                 seed: int = 0, model: torch.nn.Module | None = None, loader: Iterable | None = None,
                 batches: int = 4, forward: Callable | None = None, **param_values: float):
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
        self.spec = spec
        self.reduction = reduction
        self.criterion = criterion
        self.reference_classes = int(reference_classes)
        self.samples, self.seed = samples, int(seed)
        self.preset = preset
        self.base_params = resolve_params(spec, preset, {**(params or {}), **param_values})
        self.logit_bias = _parse_bias(logit_bias)
        self._calibrate = _parse_calibrate(spec, calibrate, preset)
        need = self.logit_bias == "auto" or self._calibrate is not None
        if classes is not None or need:
            from .average import check_classes

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
            try:
                s = float(logit_std)
            except (TypeError, ValueError):
                raise UsageError(f"logit_std must be a positive number or 'measure', "
                                 f"got {logit_std!r}") from None
            source = "given"
        self._solve(s, source)

    # ............................................................... calibration
    def _solve(self, s: float, source: str) -> None:
        """ε and the calibrated parameter for a Gaussian N(0, s²), as ``calibrate train``."""
        from .average import Averager, default_samples
        from .solve import solve_epsilon, solve_transfer

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
                                reference_classes=self.reference_classes, averager=averager())
            eps = float(res.epsilon)
            info = {"criterion": self.criterion, "classes": self.classes,
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
        s, n = _measure(model, loader, batches, forward, broadcast)
        self._solve(s, f"measured on {n} samples ({batches} batches, train mode)")
        return self

    def _build(self) -> None:
        self._fn = self.spec.torch_loss(self.params)

    # .................................................................... forward
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            raise RuntimeError(f"{type(self).__name__}: logit_std='measure' and not yet measured; "
                               "call .calibrate(model, loader) before training")
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape [N, K], got {tuple(logits.shape)}")
        if self.classes is not None and logits.shape[1] != self.classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, the loss was set up for "
                             f"classes={self.classes}")
        if target.dim() != 1 or target.shape[0] != logits.shape[0] or target.is_floating_point():
            raise ValueError(f"target must be class indices of shape [{logits.shape[0]}], got "
                             f"{target.dtype} of shape {tuple(target.shape)} (soft targets are "
                             "not supported)")
        z = logits.float() if logits.dtype in _HALF else logits
        if self.epsilon != 0.0:
            z = add_logit_bias(z, target, self.epsilon)
        per = self._fn(z, target)
        if self.reduction == "mean":
            return per.mean()
        if self.reduction == "sum":
            return per.sum()
        return per

    # ................................................................. reporting
    def to_dict(self) -> dict:
        """Everything chosen, JSON-ready (for a run's log or config)."""
        return {"loss": self.spec.name, "classes": self.classes, "params": dict(self.params),
                "epsilon": self.epsilon, "logit_bias": self.logit_bias,
                "logit_std": self.logit_std, "logit_std_source": self.logit_std_source,
                "calibrated": self.calibrated, "epsilon_info": self.epsilon_info,
                "reduction": self.reduction}

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
        """ε and the parameters in ``state_dict()``: a checkpoint restores them as chosen."""
        return {**self.to_dict(), "ready": self._fn is not None}

    def set_extra_state(self, state: dict) -> None:
        if state.get("loss") != self.spec.name:
            raise UsageError(f"the saved loss is {state.get('loss')!r}, this one {self.spec.name!r}")
        if not state.get("ready"):
            return  # saved before it was measured: nothing to restore
        for k in self._STATE:
            setattr(self, k, state.get(k))
        self.params = dict(self.params)
        self.epsilon = float(self.epsilon)
        self._build()

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
            "loss_name": spec.name, "__doc__": _class_doc(spec), "__module__": __name__,
            "__qualname__": cls_name})
        _CLASSES[spec.name] = cls
        globals()[cls_name] = cls
    return _CLASSES[spec.name]


def __getattr__(attr: str):
    for spec in list_losses():
        if _class_name(spec.name) == attr:
            return loss_class(spec.name)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__():
    return sorted(set(globals()) | {_class_name(s.name) for s in list_losses()})


def loss(name: str | LossSpec, classes: int | None = None, *, logit_bias: float | str = 0.0,
         logit_std: float | str | None = None, preset: str | None = None,
         params: Mapping[str, float] | None = None,
         calibrate: Mapping[str, int] | str | None = None, criterion: str = "match",
         reference_classes: int = 10, reduction: str = "mean", samples: int | None = None,
         seed: int = 0, model: torch.nn.Module | None = None, loader: Iterable | None = None,
         batches: int = 4, forward: Callable | None = None,
         **param_values: float) -> CalibratedLoss:
    """The loss ``name`` (registry name, alias, ``package.module:function`` or a
    :class:`LossSpec`) as a module; the arguments are :class:`CalibratedLoss`'s.

    >>> cal.nn.loss("mae", classes=1000, logit_bias="auto")            # MAE*, ε = 4.7342
    >>> cal.nn.loss("gce", classes=1000, calibrate={"q": 100})         # q = 0.7 at K = 100 -> 0.4716
    >>> cal.nn.loss("mae", classes=K, logit_bias="auto", logit_std="measure",
    ...             model=model, loader=train_loader)                  # ε for your model's logits
    """
    spec = name if isinstance(name, LossSpec) else get_loss(name)
    kw = dict(logit_bias=logit_bias, logit_std=logit_std, preset=preset, params=params,
              calibrate=calibrate, criterion=criterion, reference_classes=reference_classes,
              reduction=reduction, samples=samples, seed=seed, model=model, loader=loader,
              batches=batches, forward=forward, **param_values)
    registered = {s.name: s for s in list_losses()}
    if registered.get(spec.name) is spec:
        return loss_class(spec.name)(classes, **kw)
    return CalibratedLoss(classes, loss=spec, **kw)
