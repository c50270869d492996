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
parameter (``calibrate={"q": K_ref}``: a parameter carried from K_ref to ``classes``) come
from the engine (:func:`calibrate_cli.engine.solve.solve_epsilon`, :func:`~calibrate_cli.engine.solve.solve_transfer`)
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

from typing import Callable, Iterable, Mapping

import torch

from ..losses import get_loss, list_losses
from ..losses.base import LossSpec
from .measure import centred_std, measure_logit_std, measure_logits
from .modules import (BRANCHES, CRITERIA, REDUCTIONS, CalibratedLoss, _class_name,
                      add_logit_bias, loss_class)

__all__ = ["CalibratedLoss", "loss", "loss_class", "add_logit_bias", "measure_logits",
           "measure_logit_std", "centred_std", "REDUCTIONS", "CRITERIA", "BRANCHES"]


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
         branch: str = "below", reference_classes: int = 10, reduction: str = "mean",
         samples: int | None = None, seed: int = 0, model: torch.nn.Module | None = None, loader: Iterable | None = None,
         batches: int = 4, forward: Callable | None = None, ignore_index: int = -100,
         **param_values: float) -> CalibratedLoss:
    """The loss ``name`` (registry name, alias, ``package.module:function`` or a
    :class:`LossSpec`) as a module; the arguments are :class:`CalibratedLoss`'s.

    >>> cal.nn.loss("mae", classes=1000, logit_bias="auto")            # MAE*, ε = 4.7342
    >>> cal.nn.loss("gce", classes=1000, q=0.4)                        # GCE: q from a sweep at K
    >>> cal.nn.loss("mae", classes=K, logit_bias="auto", logit_std="measure",
    ...             model=model, loader=train_loader)                  # ε for your model's logits
    """
    spec = name if isinstance(name, LossSpec) else get_loss(name)
    kw = dict(logit_bias=logit_bias, logit_std=logit_std, preset=preset, params=params,
              calibrate=calibrate, criterion=criterion, branch=branch,
              reference_classes=reference_classes,
              reduction=reduction, samples=samples, seed=seed, model=model, loader=loader,
              batches=batches, forward=forward, ignore_index=ignore_index, **param_values)
    registered = {s.name: s for s in list_losses()}
    if registered.get(spec.name) is spec:
        return loss_class(spec.name)(classes, **kw)
    return CalibratedLoss(classes, loss=spec, **kw)
