r"""The training loop of ``calibrate train`` (one process, or one of several under torchrun).

What one run does, in order:

1. load the dataset (:func:`~calibrate_cli.train.data.load_dataset`), apply the
   label noise (:func:`~calibrate_cli.train.noise.apply_noise`, seeded by
   ``noise_seed``, default the run's ``seed``) and save the noisy labels with
   their hash;
2. build the model (parameters depend on ``seed`` only);
3. if ``logit_bias = auto`` or ``calibrate`` is set: measure the std s of the
   centred logits of the model *at initialisation* on the first
   ``measure_batches`` training batches (train mode, parameters and buffers
   restored afterwards), and ask the engine with ``Gaussian(0, s)`` and the
   dataset's K:

   * ``calibrate = θ``: θ at K from its value at ``calibrate_from`` classes
     (default: the ``--preset``'s K), :func:`~calibrate_cli.solve.solve_transfer`;
   * ``logit_bias = auto``: ε from :func:`~calibrate_cli.solve.solve_epsilon`
     (criterion ``bias_criterion``, the calibrated parameters);

4. train. The loss of a sample is the loss at biased logits,

   .. math::  L_\varepsilon(z, y) = L(z + \varepsilon\, e_y,\; y),

   i.e. ε is added to the logit of the (noisy) training label. The bias is used in
   training only: every accuracy, and the logit statistics, use the raw logits z.

Per-epoch record (``metrics.csv``, ``metrics.json``): ``train_loss`` (mean of
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

Data: in-memory datasets live on the device as one normalised float tensor
[N, C, H, W]; an epoch draws a permutation from ``torch.Generator`` seeded with
(seed, epoch) and slices it into global batches of ``batch_size``. The last,
smaller batch is kept. File-backed datasets use a DataLoader with workers over
the same index order.

Several processes (``torchrun``; ``WORLD_SIZE > 1``): DistributedDataParallel,
backend nccl on CUDA and gloo otherwise. Every process draws the same
permutation and takes its contiguous share (``tensor_split``) of each *global*
batch, so the global batch size is ``batch_size`` whatever the number of
processes. A process's loss is ``Σ_shard L_ε · W / n_global`` (W processes,
n_global samples in the global batch); DDP averages gradients over the W
processes, so the gradient is that of the mean over the global batch, exactly
as in one process. Augmentation draws are seeded with seed + rank. Only rank 0
prints and writes files. Models with batch norm see per-process batch
statistics unless ``sync_bn``.

Checkpoints: ``checkpoint.pt`` after every epoch, written to a temporary file and
renamed. Every random draw of an epoch is seeded from (seed, epoch, rank), so
``--resume`` continues exactly: 2 epochs straight equal 1 epoch and a resume to
2. Ctrl-C stops after writing the results of the completed epochs (status
``interrupted``); the checkpoint of the last completed epoch stays and
``--resume`` continues from it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .._version import __version__
from ..atomic import make_folder, write_atomic
from ..errors import CalibrateError, UsageError
from ..nn import centred_std, loss as calibrated_loss, measure_logits as measure_model_logits
from .batches import FileData, MemoryData, _augment_kind, global_batches, make_split
from .config import TrainConfig, changed_result_fields, default_out_dir, read_saved_config
from .safety import FiniteGuard, RunLock, failure, load_checkpoint, one_line

CHECKPOINT = "checkpoint.pt"
#: Columns of metrics.csv, in order (imagenet_* only when --imagenet-val-dir is given).
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc_noisy", "train_acc_clean",
                  "memorised", "recovered", "test_top1", "test_top5", "logit_correct_mean", "logit_correct_std",
                  "logit_other_mean", "logit_other_std", "samples_per_s", "time_s")


# --------------------------------------------------------------------- small utilities

def write_json(path: str, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def save_checkpoint(path: str, state: dict) -> None:
    """``torch.save`` to a temporary file, then rename (never a half-written checkpoint)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Dist:
    """Where this process stands among the processes of a run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Dist:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method="env://")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available, then MPS, then CPU. An unavailable choice is a UsageError."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available (use --device auto or cpu)")
        # one process: the current device (a grid's worker may have been given another GPU)
        index = local_rank % torch.cuda.device_count() if local_rank else torch.cuda.current_device()
        return torch.device("cuda", index)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError("--device mps: MPS is not available (use --device auto or cpu)")
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA devices that support it, fp32 elsewhere."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UsageError(f"--precision fp16 needs a CUDA device (this run uses {device.type}); "
                         "use --precision bf16, fp32 or auto")
    if name == "bf16" and device.type not in ("cuda", "cpu"):
        raise UsageError(f"--precision bf16 runs on CUDA or CPU, not {device.type}; "
                         "use --precision fp32 or auto")
    return name


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """lr of 0-based ``epoch``: linear warm-up, then cosine, step or constant.

    cosine: lr · ½(1 + cos(π (e - w)/(E - w))); step: lr · γ^⌊(e - w)/step_size⌋;
    warm-up (w epochs): lr · (e + 1)/(w + 1).
    """
    w = cfg.warmup_epochs
    if epoch < w:
        return cfg.lr * (epoch + 1) / (w + 1)
    e, span = epoch - w, max(1, cfg.epochs - w)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * e / span))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (e // cfg.step_size)
    return cfg.lr


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def check_labels(labels: np.ndarray, classes: int, what: str) -> None:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise UsageError(f"{what} labels must lie in [0, {classes - 1}] for a model with "
                         f"{classes} outputs, found {int(labels.min())}..{int(labels.max())}")


# ---------------------------------------------------------------------- measuring

def measure_logits(model: torch.nn.Module, data, batch: int, batches: int,
                   dist: Dist) -> np.ndarray:
    """Logits [N, K] of the model as it is now on the first ``batches`` training batches in
    file order, by :func:`calibrate_cli.nn.measure_logits` (train mode, buffers restored)."""
    order = torch.arange(min(data.n, batch * batches))
    one = Dist()  # every process measures the same batches
    return measure_model_logits(model, data.batches(torch.split(order, batch), one, "none", None),
                                batches)


def derive_loss_settings(cfg: TrainConfig, spec, params: dict, classes: int,
                         measure: Callable[[], np.ndarray] | None,
                         log: Callable[[str], None]) -> dict:
    """Measured logit std, calibrated parameter and ε; the numbers training uses.

    Returns ``{"params", "epsilon", "logit_std", "logit_std_source", "calibrated",
    "epsilon_info"}``.
    """
    from ..logits import Gaussian
    from ..solve import solve_epsilon, solve_transfer

    out: dict[str, Any] = {"params": dict(params), "calibrated": None, "epsilon_info": None,
                           "logit_std": None, "logit_std_source": None}
    need = cfg.logit_bias == "auto" or cfg.calibrate is not None
    if need:
        if cfg.logit_std is not None:
            s, source = float(cfg.logit_std), "given (--logit-std)"
        else:
            z = measure()
            s = centred_std(z)
            source = f"measured at initialisation on {z.shape[0]} training images"
            if not math.isfinite(s) or s <= 0:
                raise UsageError("the model's initial logits have zero or undefined spread; "
                                 "give --logit-std")
        out["logit_std"], out["logit_std_source"] = s, source
        log(f"logit std at initialisation: {s:.4f} ({source}); K = {classes}")
        dist = Gaussian(0.0, s)
        if cfg.calibrate is not None:
            name = cfg.calibrate
            k_from = cfg.calibrate_from
            if k_from is None:
                from ..losses.registry import get_preset

                k_from = get_preset(spec, cfg.loss_preset).classes
            res = solve_transfer(spec, params, name, k_from, classes, dist)
            out["params"][name] = float(res.value)
            out["calibrated"] = {"param": name, "from_classes": int(k_from), "to_classes": classes,
                                 "from_value": float(params[name]), "value": float(res.value)}
            log(f"calibrated {spec.name} {name}: {params[name]:g} at K = {k_from} -> "
                f"{res.value:.4f} at K = {classes}")
    if cfg.logit_bias == "auto":
        res = solve_epsilon(spec, out["params"], classes, Gaussian(0.0, out["logit_std"]),
                            criterion=cfg.bias_criterion, branch=cfg.bias_branch)
        eps = float(res.epsilon)
        out["epsilon_info"] = {"criterion": cfg.bias_criterion, "branch": cfg.bias_branch,
                               "classes": classes,
                               "delta_before": float(res.delta_before),
                               "delta_after": float(res.delta_after)}
        log(f"logit bias ε = {eps:.4f} ({cfg.bias_criterion} criterion, K = {classes}, "
            f"<δ_k> at the logit mean {res.delta_before:.4g} -> {res.delta_after:.4g})")
    else:
        eps = float(cfg.logit_bias)
    out["epsilon"] = eps
    return out


# --------------------------------------------------------------------------- run

@dataclass
class TrainResult:
    out_dir: str
    status: str
    history: list[dict] = field(default_factory=list)
    derived: dict = field(default_factory=dict)
    noise: dict = field(default_factory=dict)

    @property
    def last_top1(self) -> float | None:
        return self.history[-1]["test_top1"] if self.history else None

    @property
    def best_top1(self) -> float | None:
        return max(r["test_top1"] for r in self.history) if self.history else None


def prepare_out_dir(cfg: TrainConfig, resume: bool) -> str:
    """The run directory; checks that a resume matches and that a new run overwrites nothing."""
    out = cfg.out or default_out_dir(cfg)
    ckpt = os.path.join(out, CHECKPOINT)
    if resume:
        if not os.path.isfile(ckpt):
            raise UsageError(f"--resume: no checkpoint '{ckpt}' (start the run without --resume)")
        saved = os.path.join(out, "config.json")
        if os.path.isfile(saved):
            old = read_saved_config(saved)
            changed = changed_result_fields(old, cfg)
            if changed:
                raise UsageError(f"--resume: {', '.join(changed)} differ from the saved run in "
                                 f"'{out}' (only --epochs and run options may change)")
    elif os.path.isfile(ckpt):
        raise UsageError(f"'{out}' already holds a run: pass --resume to continue it, or "
                         "choose another --out")
    return out


def train(cfg: TrainConfig, *, resume: bool = False, bundle=None, progress: bool = True,
          command: str | None = None, log_stream=None, resume_hint: str | None = None,
          ) -> TrainResult:
    """Run (or resume) one training run as configured; returns its history.

    ``bundle``: an already loaded :class:`~calibrate_cli.train.data.DatasetBundle`
    (``validate`` loads it once for the whole grid). ``progress``: show a progress bar
    during each epoch when stderr is a terminal (rank 0). ``log_stream``: where the
    run's lines go (setup, one line per epoch, the result; default stderr), plain and
    unwrapped. ``resume_hint``: what an interrupted run tells the user to do next.

    Every input is checked before anything is written; the run folder is then locked
    (:mod:`calibrate_cli.lock`) until the run ends, so a second process is refused. torch
    runs with ``cfg.threads`` threads, or :func:`~calibrate_cli.train.threads.default_threads`;
    the caller's setting is restored at the end.
    """
    lock = RunLock()
    threads = torch.get_num_threads()  # the run sets its own; the caller's is restored
    try:
        return _train(cfg, resume=resume, bundle=bundle, progress=progress, command=command,
                      log_stream=log_stream, resume_hint=resume_hint, lock=lock)
    finally:
        lock.release()
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, *, resume: bool, bundle, progress: bool, command: str | None,
           log_stream, resume_hint: str | None, lock: RunLock) -> TrainResult:
    from ..atomic import check_folder
    from ..losses import get_loss, resolve_params
    from ..progress import slow_step
    from . import threads as T
    from .models import create_model
    from .noise import apply_noise, save_noisy_labels

    device_kind = cfg.device
    if device_kind == "auto":
        device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    dist = setup_distributed(device_kind)
    device = pick_device(cfg.device, dist.local_rank)
    precision = pick_precision(cfg.precision, device)

    def log(msg: str) -> None:
        if dist.main:
            stream = sys.stderr if log_stream is None else log_stream
            print(msg, file=stream, flush=True)

    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:
            raise UsageError("--tensorboard needs the tensorboard package: pip install "
                             "'calibrate-cli[tensorboard]' (or pip install tensorboard)") from None
    if dist.enabled and cfg.batch_size < dist.world:
        raise UsageError(f"--batch-size {cfg.batch_size} is the global batch and must be at least "
                         f"the number of processes ({dist.world})")
    if cfg.out is None and dist.enabled:  # one default folder for every process: rank 0's
        import torch.distributed as tdist

        box = [default_out_dir(cfg) if dist.main else None]
        tdist.broadcast_object_list(box, src=0)
        cfg.out = box[0]
    out = prepare_out_dir(cfg, resume)
    if dist.main:
        check_folder(out, "--out")  # fail now, not after loading the data; create nothing yet
        if os.path.isdir(out):  # an existing folder: lock it before reading what it holds
            lock.take(out, lambda: prepare_out_dir(cfg, resume))
    threads, why = T.resolve(cfg.threads)
    torch.set_num_threads(threads)
    log(f"threads: {threads} ({why})")
    seed_everything(cfg.seed + dist.rank)

    # data and noise
    if bundle is None:
        from .data import load_dataset

        with slow_step(f"loading {cfg.dataset}"):
            bundle = load_dataset(cfg.dataset, cfg.data_dir, classes=cfg.classes,
                                  train_per_class=cfg.train_samples_per_class,
                                  test_per_class=cfg.test_samples_per_class,
                                  image_size=cfg.image_size, seed=cfg.data_seed)
    K = int(bundle.classes)
    if cfg.classes is not None and cfg.classes != K:
        raise UsageError(f"--classes {cfg.classes}: the loaded dataset has {K} classes")
    check_labels(bundle.train.labels, K, "train")
    check_labels(bundle.test.labels, K, "test")
    if len(bundle.train) == 0:
        raise UsageError(f"{bundle.name}: the training split is empty")
    log(bundle.description)
    noise_seed = cfg.seed if cfg.noise_seed is None else cfg.noise_seed
    noise = apply_noise(bundle.train.labels, cfg.noise, K, seed=noise_seed, dataset=bundle.name,
                        coarse=bundle.coarse_labels)
    log(noise.describe())

    train_data = make_split(bundle.train, noise.labels, bundle.train.labels, bundle, device,
                            train=True, seed=cfg.seed + dist.rank, workers=cfg.workers)
    test_data = make_split(bundle.test, bundle.test.labels, bundle.test.labels, bundle, device,
                           train=False, seed=0, workers=cfg.workers)
    extra_eval = {}
    if cfg.imagenet_val_dir:
        from .data import load_dataset

        iv = load_dataset("ilsvrc12-val", cfg.imagenet_val_dir, classes=K,
                          image_size=bundle.image_size)
        extra_eval["imagenet"] = make_split(iv.test, iv.test.labels, iv.test.labels, bundle,
                                            device, train=False, seed=0, workers=cfg.workers)
    aug = _augment_kind(cfg, bundle.name) if train_data.__class__ is MemoryData else "file"

    # model, loss, optimiser
    model = create_model(cfg.model, num_classes=K, in_channels=bundle.channels,
                         image_size=bundle.image_size, seed=cfg.seed,
                         zero_init_residual=cfg.zero_init_residual).to(device)
    spec = get_loss(cfg.loss)
    params = resolve_params(spec, cfg.loss_preset, cfg.loss_params)

    ckpt_path = os.path.join(out, CHECKPOINT)
    state = None
    if resume:
        state = load_checkpoint(ckpt_path, model, device, noise.hash)
        derived = state["derived"]
        log(f"resuming '{out}' after epoch {state['epoch']}")
    else:
        local_batch = max(1, cfg.batch_size // dist.world)
        with slow_step("measuring the initial logits and solving for the loss settings"):
            derived = derive_loss_settings(
                cfg, spec, params, K,
                lambda: measure_logits(model, train_data, local_batch, cfg.measure_batches, dist),
                log)
        if dist.enabled:  # every process trains with rank 0's numbers
            import torch.distributed as tdist

            box = [derived]
            tdist.broadcast_object_list(box, src=0)
            derived = box[0]
    if dist.main:  # every input checked: now the run folder is made, locked and written
        make_folder(out, "--out")
        lock.take(out, lambda: prepare_out_dir(cfg, resume))
        save_noisy_labels(os.path.join(out, "noisy_labels.npz"), noise)
    epsilon = float(derived["epsilon"])
    loss_fn = calibrated_loss(spec, K, logit_bias=epsilon, params=derived["params"],
                              reduction="none")  # per sample: L(z + ε·onehot(y), y)

    if cfg.sync_bn and dist.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    core = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(cfg, core)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    history: list[dict] = []
    start = 0
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        except Exception as exc:
            raise UsageError(f"--resume: the optimiser state in '{ckpt_path}' does not fit this "
                             f"run ({type(exc).__name__}); restore it, or start a new run in "
                             "another --out") from None
        history = list(state["history"])
        start = int(state["epoch"])
        if start >= cfg.epochs:
            log(f"the run already has {start} epochs (--epochs {cfg.epochs}): nothing to train")

    config_record = {"version": __version__, "command": command, "config": cfg.to_dict(),
                     "derived": derived, "noise": noise.to_dict(), "out": out,
                     "world_size": dist.world, "device": str(device), "precision": precision,
                     "dataset": {"name": bundle.name, "classes": K, "train": len(bundle.train),
                                 "test": len(bundle.test), "description": bundle.description},
                     "augment": aug}
    if dist.main:
        write_json(os.path.join(out, "config.json"), config_record)
        write_json(os.path.join(out, "noise.json"), noise.to_dict())
    writer = None
    if cfg.tensorboard and dist.main:
        writer = SummaryWriter(os.path.join(out, "tensorboard"))

    autocast = _autocast(device, precision)
    stat_dtype = torch.float32 if device.type == "mps" else torch.float64
    status = "running"
    saved = len(history)
    bar = _Progress(progress and dist.main, log)
    guard = FiniteGuard(device, dist.enabled)
    error = None
    try:
        with bar:
            for epoch in range(start, cfg.epochs):
                lr = learning_rate(cfg, epoch)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                model.train()
                gen = None
                if aug not in ("none", "file"):
                    gen = torch.Generator(device=device)
                    gen.manual_seed((cfg.seed + dist.rank) * 1_000_003 + epoch + 7)
                if isinstance(train_data, FileData):
                    train_data.ds.epoch = epoch
                idx = global_batches(train_data.n, cfg.batch_size, cfg.seed, epoch)
                acc = torch.zeros(11, dtype=stat_dtype, device=device)
                t0 = time.perf_counter()
                seen = 0
                bar.start_epoch(epoch, cfg.epochs, len(idx))
                for step, (x, y, yc, n_global) in enumerate(train_data.batches(idx, dist, aug, gen)):
                    with autocast:
                        logits = model(x)
                    z = logits.float()
                    per = loss_fn(z, y)
                    loss = per.sum() * (dist.world / n_global)
                    guard.check(loss, epoch, step)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    with torch.no_grad():  # per-batch sums in fp32, accumulated in fp64
                        zd = z.detach()
                        pred = zd.argmax(1)
                        zc = zd.gather(1, y[:, None])
                        changed = y != yc  # labels the noise moved
                        seen += y.numel()
                        acc[1:] += torch.stack([
                            per.detach().sum(), (pred == y).sum(dtype=torch.float32),
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
                row = _epoch_row(epoch + 1, lr, a, K, elapsed)
                guard.epoch_end(row["train_loss"], epoch, core)
                for name, data in [("test", test_data)] + list(extra_eval.items()):
                    t1, t5 = evaluate(model, data, cfg.eval_batch_size, dist, autocast)
                    row[f"{name}_top1"], row[f"{name}_top5"] = t1, t5
                history.append(row)
                bar.end_epoch(row)
                with _held_interrupt():  # checkpoint and bookkeeping agree, whenever Ctrl-C comes
                    if dist.main:
                        save_checkpoint(ckpt_path, {
                            "epoch": epoch + 1, "model": core.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "history": history, "derived": derived, "noise_hash": noise.hash,
                            "config": cfg.to_dict(), "version": __version__})
                        _write_metrics(out, history, config_record, "running", extra_eval)
                        if writer is not None:
                            for k, v in row.items():
                                if k != "epoch" and v is not None:
                                    writer.add_scalar(k, v, epoch + 1)
                            writer.flush()
                    saved = len(history)
                if dist.enabled:
                    import torch.distributed as tdist

                    tdist.barrier()
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        del history[saved:]  # an epoch whose checkpoint was not written is redone on resume
        log(f"interrupted: results of {len(history)} completed epoch(s) saved; "
            + (resume_hint or f"continue with --resume --out {out}"))
    except BaseException as exc:  # diverged, user code, a bad file, a full disk: saved epochs stay
        del history[saved:]
        status, error = failure(exc, saved, out)
        if error is not exc:
            raise error from None
        raise
    finally:
        if dist.main:
            try:
                _write_metrics(out, history, config_record, status, extra_eval,
                               error=None if error is None else one_line(error))
            except CalibrateError:
                if status == "complete":
                    raise
                # the run failed already (often for the same reason, a full disk): the
                # checkpoint and the metrics of the last saved epoch still agree
        if writer is not None:
            writer.close()
    if status == "interrupted":
        raise KeyboardInterrupt
    if history:
        best = max(history, key=lambda r: r["test_top1"])
        log(f"done: test top-1 {100 * history[-1]['test_top1']:.2f}% at the last epoch, "
            f"{100 * best['test_top1']:.2f}% best (epoch {best['epoch']}); results in {out}")
    return TrainResult(out_dir=out, status=status, history=history, derived=derived,
                       noise=noise.to_dict())


@contextlib.contextmanager
def _held_interrupt():
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


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _epoch_row(epoch: int, lr: float, a: list[float], K: int, elapsed: float) -> dict:
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


def _write_metrics(out: str, history: list[dict], record: dict, status: str, extra: dict,
                   error: str | None = None) -> None:
    cols = list(METRIC_COLUMNS)
    for name in extra:
        cols[cols.index("test_top5") + 1:cols.index("test_top5") + 1] = [f"{name}_top1",
                                                                          f"{name}_top5"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in history:
        w.writerow([r["epoch"]] + ["" if r.get(c) is None else f"{r[c]:.6g}" for c in cols[1:]])
    write_atomic(os.path.join(out, "metrics.csv"), buf.getvalue())
    summary = {}
    if history:
        best = max(history, key=lambda r: r["test_top1"])
        summary = {"last_top1": history[-1]["test_top1"], "last_top5": history[-1]["test_top5"],
                   "best_top1": best["test_top1"], "best_epoch": best["epoch"],
                   "best_minus_last": best["test_top1"] - history[-1]["test_top1"],
                   "memorised": history[-1].get("memorised"),
                   "recovered": history[-1].get("recovered")}
    write_json(os.path.join(out, "metrics.json"), {
        "version": record["version"], "command": record["command"], "status": status,
        "epochs_planned": record["config"]["epochs"], "epochs_done": len(history),
        **({"error": error} if error else {}),
        "derived": record["derived"], "noise": record["noise"], **summary, "epochs": history})


class _Progress:
    """What the user sees of each epoch: a progress bar on stderr while it runs (only when
    stderr is a terminal; refreshed at most four times a second, each refresh reading the
    on-device sums once), then one plain line through ``log`` when it ends."""

    def __init__(self, enabled: bool, log: Callable[[str], None]):
        from ..progress import interactive

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
