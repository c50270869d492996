r"""One epoch of a training run on its device: the training pass, its record, the evaluation.

The training pass optimises the loss at biased logits, L_ε(z, y) = L(z + ε e_y, y)
(``loss_fn``, per sample); everything it records uses the raw logits z.

Per-epoch record (a row of ``metrics.csv`` and ``metrics.json``): ``train_loss`` (mean of
L_ε over the epoch's samples, as optimised), ``train_acc_noisy`` /
``train_acc_clean`` (argmax of the raw logits of the training batches, in train
mode, against the noisy / the original labels), ``memorised`` / ``recovered``
(the same predictions restricted to the training samples whose label the noise
changed: the fraction predicted as their noisy label, i.e. memorised, and as
their true label; empty without noise), ``test_top1`` / ``test_top5``
(eval mode, raw logits), ``lr``, and the mean and std of the correct-class logit
z_y (y: the training label) and of the other K - 1 logits over the epoch's
training batches. All of it is summed on the device and synchronised once per
epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .batches import FileData, global_batches
from .config import TrainConfig
from .runtime import Dist
from .safety import FiniteGuard


@dataclass
class Learner:
    """What one optimisation step uses; fixed for the run."""

    model: torch.nn.Module  # what the forward calls: the model, maybe in DDP and compiled
    core: torch.nn.Module  # the bare model, whose gradients are clipped
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per sample: L_ε(z, y)
    optimizer: torch.optim.Optimizer
    scaler: Any  # a torch.amp.GradScaler for fp16, else None
    autocast: Any  # the forward's context (:func:`~calibrate_cli.train.runtime.autocast_for`)
    guard: FiniteGuard  # stops at the first non-finite loss
    grad_clip: float  # max gradient norm; 0: none


def train_epoch(learner: Learner, data, cfg: TrainConfig, dist: Dist, device: torch.device, *,
                epoch: int, lr: float, aug: str, classes: int, bar) -> dict:
    """One pass over the training split ``data`` in epoch ``epoch``'s order (0-based), one
    optimisation step per global batch. Returns the epoch's row, the test columns still NaN.

    ``aug``: the augmentation (``none``, ``file`` for file-backed data, or a batched kind,
    drawn from a generator seeded with (seed + rank, epoch)). ``bar``: the epoch's progress,
    :class:`~calibrate_cli.train.console.EpochProgress`.
    """
    model, optimizer, scaler = learner.model, learner.optimizer, learner.scaler
    model.train()
    gen = None
    if aug not in ("none", "file"):
        gen = torch.Generator(device=device)
        gen.manual_seed((cfg.seed + dist.rank) * 1_000_003 + epoch + 7)
    if isinstance(data, FileData):
        data.ds.epoch = epoch
    idx = global_batches(data.n, cfg.batch_size, cfg.seed, epoch)
    stat_dtype = torch.float32 if device.type == "mps" else torch.float64
    acc = torch.zeros(11, dtype=stat_dtype, device=device)  # the sums epoch_row unpacks
    t0 = time.perf_counter()
    seen = 0
    bar.start_epoch(epoch, cfg.epochs, len(idx))
    for step, (x, y, yc, n_global) in enumerate(data.batches(idx, dist, aug, gen)):
        with learner.autocast:
            logits = model(x)
        z = logits.float()
        per = learner.loss_fn(z, y)
        loss = per.sum() * (dist.world / n_global)
        learner.guard.check(loss, epoch, step, logits=z)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if learner.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(learner.core.parameters(), learner.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        with torch.no_grad():  # per-batch sums in the statistics' precision (fp64 but on MPS):
            zd = z.detach()  # logits far beyond 1e19 still give finite squares
            pred = zd.argmax(1)
            zd = zd.to(stat_dtype)
            zc = zd.gather(1, y[:, None])
            changed = y != yc  # labels the noise moved
            seen += y.numel()
            acc[1:] += torch.stack([
                per.detach().sum().to(stat_dtype), (pred == y).sum(dtype=torch.float32),
                (pred == yc).sum(dtype=torch.float32), zc.sum(), zc.square().sum(),
                zd.sum(), zd.square().sum(), changed.sum(dtype=torch.float32),
                (changed & (pred == y)).sum(dtype=torch.float32),
                (changed & (pred == yc)).sum(dtype=torch.float32)]).to(stat_dtype)
        bar.step(step, acc, seen, t0)
    acc[0] = seen
    if dist.enabled:
        import torch.distributed as tdist

        tdist.all_reduce(acc)
    a = acc.cpu().tolist()
    elapsed = time.perf_counter() - t0
    return epoch_row(epoch + 1, lr, a, classes, elapsed)


def epoch_row(epoch: int, lr: float, a: list[float], K: int, elapsed: float) -> dict:
    """The record of 1-based ``epoch`` from the sums ``a`` of its training pass, synchronised."""
    n, loss, ok_noisy, ok_clean, zc, zc2, z_all, z2_all, n_moved, fit_noisy, fit_true = a
    zo, zo2 = z_all - zc, z2_all - zc2
    n = max(n, 1.0)
    no = n * (K - 1)
    mc, mo = zc / n, zo / no
    return {"epoch": epoch, "lr": lr, "train_loss": loss / n, "train_acc_noisy": ok_noisy / n,
            "train_acc_clean": ok_clean / n,
            "memorised": fit_noisy / n_moved if n_moved else None,
            "recovered": fit_true / n_moved if n_moved else None,
            "test_top1": float("nan"), "test_top5": float("nan"),
            "logit_correct_mean": mc, "logit_correct_std": math.sqrt(max(zc2 / n - mc * mc, 0.0)),
            "logit_other_mean": mo, "logit_other_std": math.sqrt(max(zo2 / no - mo * mo, 0.0)),
            "samples_per_s": n / max(elapsed, 1e-9), "time_s": elapsed}


@torch.no_grad()
def evaluate(model, data, batch: int, dist: Dist, autocast) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of the raw logits (eval mode); each process takes a share."""
    model.eval()
    dev = next(model.parameters()).device
    counts = torch.zeros(3, dtype=torch.float32 if dev.type == "mps" else torch.float64, device=dev)
    idx = list(torch.split(torch.arange(data.n), batch))
    seen = 0
    for x, y, _, _ in data.batches(idx, dist, "none", None):
        if x.shape[0] == 0:
            continue
        with autocast:
            z = _unwrap(model)(x).float()
        k = min(5, z.shape[1])
        top = z.topk(k, dim=1).indices
        hit = top == y[:, None]
        seen += y.numel()
        counts[1:] += torch.stack([hit[:, 0].sum().to(counts.dtype),
                                   hit.any(1).sum().to(counts.dtype)])
    counts[0] = seen
    if dist.enabled:
        import torch.distributed as tdist

        tdist.all_reduce(counts)
    n, t1, t5 = counts.cpu().tolist()
    return (t1 / n, t5 / n) if n else (float("nan"), float("nan"))


def _unwrap(model):
    """The module without DDP (evaluation needs no gradient synchronisation)."""
    m = getattr(model, "_orig_mod", model)
    return getattr(m, "module", m)
