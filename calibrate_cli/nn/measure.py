"""Measuring a model's initial logits: the spread ``logit_std="measure"`` uses.

The same code measures for ``calibrate train`` (its "logit std at initialisation") and for
:class:`calibrate_cli.nn.CalibratedLoss` (``logit_std="measure"``, ``.calibrate(model, loader)``).

A measurement leaves no trace: the model's buffers and mode are restored, and so are torch's
random number generators (CPU, every CUDA device already initialised) and the generator of the
loader and of its sampler, so that a seeded run draws the same batches, dropout masks and
augmentations whether it measured first or not. The model's output must be logits [N, K] (or
[..., K], flattened to rows), with K = ``classes`` when given: a model with the wrong number
of outputs would give an ε for another K.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from ..errors import ArgumentTypeError, UsageError
from ..engine.logits import centre_rows

__all__ = ["measure_logits", "measure_logit_std", "centred_std"]

_LABEL_KEYS = ("labels", "label", "target", "targets")


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


def _generators(loader) -> list:
    """The torch.Generator objects a loader draws from: its own, its sampler's and its batch
    sampler's sampler's (a DataLoader with shuffle=True and a generator)."""
    found = []
    for owner in (loader, getattr(loader, "sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


@contextlib.contextmanager
def kept_random_state(loader=None):
    """Within: draw as much as you like; afterwards torch's CPU generator, the CUDA generators
    (of devices already initialised) and ``loader``'s generators are as they were."""
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    owned = [(g, g.get_state()) for g in _generators(loader)]
    try:
        yield
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for g, state in owned:
            g.set_state(state)


def _check_logits(z, classes: int | None) -> None:
    if not isinstance(z, torch.Tensor):
        raise ArgumentTypeError(f"the model's output holds no logits tensor ({type(z).__name__}); "
                                "pass forward=lambda model, batch: <logits tensor>")
    if z.dim() < 2 or z.shape[-1] < 2:
        raise UsageError(f"the model's logits must have shape [N, K] with K >= 2 classes, got "
                         f"{tuple(z.shape)}")
    if classes is not None and z.shape[-1] != classes:
        raise UsageError(f"the model has {z.shape[-1]} outputs, the loss is for classes={classes}: "
                         "its logits would give the numbers of another K")


@torch.no_grad()
def measure_logits(model: torch.nn.Module, loader: Iterable, batches: int = 4, *,
                   forward: Callable | None = None, classes: int | None = None) -> np.ndarray:
    """The model's logits [N, K] (float64) on the first ``batches`` batches of ``loader``.

    As at the start of training: train mode (dropout on, batch norm on batch statistics),
    no gradients; every buffer (batch-norm running statistics) is restored afterwards and
    the mode set back, so training starts from the same state. ``forward(model, batch)``
    returns the logits of a batch (default: the batch itself, its first item, or
    ``model(**batch)`` without its labels; ``.logits`` of the output is used when it has one).
    Outputs with more than two dimensions are flattened to [-1, K]; with ``classes`` given, K
    must equal it. torch's random state and the loader's generators are restored afterwards
    (:func:`kept_random_state`).
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UsageError(f"batches must be an integer >= 1, got {batches!r}")
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if classes is not None:
        from ..engine.average import check_classes

        classes = check_classes(classes)
    call = forward or _default_forward
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    out = []
    try:
        with kept_random_state(loader):
            for batch in itertools.islice(loader, batches):
                z = _as_logits(call(model, batch))
                _check_logits(z, classes)
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


def _measure(model, loader, batches, forward, broadcast, classes=None) -> tuple[float, int]:
    z = measure_logits(model, loader, batches, forward=forward, classes=classes)
    s, n = centred_std(z), int(z.shape[0])
    if broadcast:
        s, n = _from_rank0((s, n))
    if not math.isfinite(s) or s <= 0:
        raise UsageError("the model's logits on the first batches have zero or undefined spread; "
                         "give logit_std=<number>")
    return s, n


def measure_logit_std(model: torch.nn.Module, loader: Iterable, batches: int = 4, *,
                      forward: Callable | None = None, broadcast: bool = True,
                      classes: int | None = None) -> float:
    """The std of the model's row-centred logits on the first ``batches`` batches
    (:func:`measure_logits`, :func:`centred_std`): ``calibrate train``'s measurement.

    Under ``torch.distributed`` (an initialised process group) every process must call it;
    all of them get rank 0's value (``broadcast=False``: each its own), so that every
    process trains with the same ε. ``classes``: the K the logits must have (the model's
    outputs are checked against it).
    """
    return _measure(model, loader, batches, forward, broadcast, classes)[0]
