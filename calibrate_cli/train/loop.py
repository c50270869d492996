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
   dataset's K, through :class:`calibrate_cli.nn.CalibratedLoss` (the numbers
   ``calibrate_cli.nn`` gives for that s):

   * ``calibrate = θ``: θ at K from its value at ``calibrate_from`` classes
     (default: the ``--preset``'s K), :func:`~calibrate_cli.engine.solve.solve_transfer`;
   * ``logit_bias = auto``: ε from :func:`~calibrate_cli.engine.solve.solve_epsilon`
     (criterion ``bias_criterion``, the calibrated parameters);

4. train. The loss of a sample is the loss at biased logits,

   .. math::  L_\varepsilon(z, y) = L(z + \varepsilon\, e_y,\; y),

   i.e. ε is added to the logit of the (noisy) training label. The bias is used in
   training only: every accuracy, and the logit statistics, use the raw logits z.

Each epoch is a training pass and an evaluation (:mod:`calibrate_cli.train.epoch`, which
describes the per-epoch record), then the run's files are written
(:mod:`calibrate_cli.train.records`). The batches and their order:
:mod:`calibrate_cli.train.batches`; several processes under ``torchrun``, the device and the
precision: :mod:`calibrate_cli.train.runtime`.

Checkpoints: ``checkpoint.pt`` after every epoch, written to a temporary file and
renamed. Every random draw of an epoch is seeded from (seed, epoch, rank), so
``--resume`` continues exactly: 2 epochs straight equal 1 epoch and a resume to
2. Ctrl-C stops after writing the results of the completed epochs (status
``interrupted``); the checkpoint of the last completed epoch stays and
``--resume`` continues from it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable

import numpy as np
import torch

from .._version import __version__
from ..utils.atomic import make_folder
from ..errors import CalibrateError, UsageError, install_hint
from ..nn import centred_std, loss as calibrated_loss, measure_logits as measure_model_logits
from .batches import MemoryData, _augment_kind, make_split
from .config import TrainConfig, changed_result_fields, default_out_dir, read_saved_config
from .console import EpochProgress
from .epoch import Learner, evaluate, train_epoch
from .records import (CHECKPOINT, METRIC_COLUMNS, TrainResult, save_checkpoint, write_json,
                      write_metrics)
from .runtime import (Dist, autocast_for, pick_device, pick_precision, seed_everything,
                      setup_distributed)
from .safety import FiniteGuard, RunLock, failure, held_interrupt, load_checkpoint, one_line

#: The run's own names, and those it hands on from the modules it uses (importable from here).
__all__ = ["train", "TrainResult", "prepare_out_dir", "derive_loss_settings", "measure_logits",
           "learning_rate", "make_optimizer", "check_labels", "CHECKPOINT", "METRIC_COLUMNS",
           "Dist", "pick_device", "pick_precision", "setup_distributed", "seed_everything",
           "evaluate", "save_checkpoint", "write_json"]


# ------------------------------------------------------ schedule, optimiser, labels

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
                   dist: Dist, classes: int | None = None) -> np.ndarray:
    """Logits [N, K] of the model as it is now on the first ``batches`` training batches in
    file order, by :func:`calibrate_cli.nn.measure_logits` (train mode, buffers and random
    state restored; K = ``classes`` checked when given)."""
    order = torch.arange(min(data.n, batch * batches))
    one = Dist()  # every process measures the same batches
    return measure_model_logits(model, data.batches(torch.split(order, batch), one, "none", None),
                                batches, classes=classes)


def derive_loss_settings(cfg: TrainConfig, spec, params: dict, classes: int,
                         measure: Callable[[], np.ndarray] | None,
                         log: Callable[[str], None]) -> dict:
    """Measured logit std, calibrated parameter and ε; the numbers training uses.

    The engine is asked by :class:`calibrate_cli.nn.CalibratedLoss` for N(0, s²): the run's
    numbers are those of ``calibrate_cli.nn.loss(...)`` with the same s and settings.
    Returns ``{"params", "calibrated", "epsilon_info", "logit_std", "logit_std_source",
    "epsilon"}``.
    """
    if cfg.logit_bias != "auto" and cfg.calibrate is None:  # nothing to solve: s is not used
        return {"params": dict(params), "calibrated": None, "epsilon_info": None,
                "logit_std": None, "logit_std_source": None, "epsilon": float(cfg.logit_bias)}
    if cfg.logit_std is not None:
        s, source = float(cfg.logit_std), "given (--logit-std)"
    else:
        z = measure()
        s = centred_std(z)
        source = f"measured at initialisation on {z.shape[0]} training images"
        if not math.isfinite(s) or s <= 0:
            raise UsageError("the model's initial logits have zero or undefined spread; "
                             "give --logit-std")
    log(f"logit std at initialisation: {s:.4f} ({source}); K = {classes}")
    calibrate = None
    if cfg.calibrate is not None:
        k_from = cfg.calibrate_from
        if k_from is None:
            from ..losses.registry import get_preset

            k_from = get_preset(spec, cfg.loss_preset).classes
        calibrate = {cfg.calibrate: k_from}
    solved = calibrated_loss(spec, classes, logit_bias=cfg.logit_bias, logit_std=s, params=params,
                             calibrate=calibrate, criterion=cfg.bias_criterion,
                             branch=cfg.bias_branch)
    c, info = solved.calibrated, solved.epsilon_info
    if c is not None:
        log(f"calibrated {spec.name} {c['param']}: {c['from_value']:g} at K = "
            f"{c['from_classes']} -> {c['value']:.4f} at K = {classes}")
    if info is not None:
        log(f"logit bias ε = {solved.epsilon:.4f} ({info['criterion']} criterion, K = {classes}, "
            f"<δ_k> at the logit mean {info['delta_before']:.4g} -> {info['delta_after']:.4g})")
    return {"params": dict(solved.params), "calibrated": c, "epsilon_info": info,
            "logit_std": s, "logit_std_source": source, "epsilon": solved.epsilon}


# --------------------------------------------------------------------------- run

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


def _note_hardware_change(out: str, device: str, precision: str, epochs: int, log) -> None:
    """One line when a resumed run continues on another device or in another precision than it
    was trained in (``--device auto`` and ``--precision auto`` pick per machine: a run started
    on a GPU node in bf16 and resumed on a CPU node would continue in fp32 without a word)."""
    try:
        with open(os.path.join(out, "config.json"), encoding="utf-8") as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        return
    was = (str(old.get("device", device)).split(":")[0], old.get("precision", precision))
    now = (device.split(":")[0], precision)
    if was != now:
        log(f"note: the run's {epochs} epoch(s) so far were trained on {was[0]} in {was[1]}; it "
            f"continues on {now[0]} in {now[1]} (give --device and --precision to keep them)")


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
    (:mod:`calibrate_cli.utils.lock`) until the run ends, so a second process is refused. torch
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
    from ..utils.atomic import check_folder
    from ..losses import get_loss, resolve_params
    from ..utils.progress import log_line, slow_step
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
            log_line(msg, log_stream)

    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:
            raise UsageError("--tensorboard needs the package 'tensorboard', which is not "
                             f"installed: {install_hint('tensorboard', 'tensorboard')}") from None
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
                lambda: measure_logits(model, train_data, local_batch, cfg.measure_batches, dist,
                                       classes=K),
                log)
        if dist.enabled:  # every process trains with rank 0's numbers
            import torch.distributed as tdist

            box = [derived]
            tdist.broadcast_object_list(box, src=0)
            derived = box[0]
    epsilon = float(derived["epsilon"])
    loss_fn = calibrated_loss(spec, K, logit_bias=epsilon, params=derived["params"],
                              reduction="none")  # per sample: L(z + ε·onehot(y), y)
    if dist.main:  # every input checked: now the run folder is made, locked and written
        make_folder(out, "--out")
        lock.take(out, lambda: prepare_out_dir(cfg, resume))
        save_noisy_labels(os.path.join(out, "noisy_labels.npz"), noise)

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
        _note_hardware_change(out, str(device), precision, start, log)
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

    autocast = autocast_for(device, precision)
    status = "running"
    saved = len(history)
    bar = EpochProgress(progress and dist.main, log)
    guard = FiniteGuard(device, dist.enabled)
    learner = Learner(model=model, core=core, loss_fn=loss_fn, optimizer=optimizer, scaler=scaler,
                      autocast=autocast, guard=guard, grad_clip=cfg.grad_clip)
    error = None
    try:
        with bar:
            for epoch in range(start, cfg.epochs):
                lr = learning_rate(cfg, epoch)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                row = train_epoch(learner, train_data, cfg, dist, device, epoch=epoch, lr=lr,
                                  aug=aug, classes=K, bar=bar)
                guard.epoch_end(row["train_loss"], epoch, core, row)
                for name, data in [("test", test_data)] + list(extra_eval.items()):
                    t1, t5 = evaluate(model, data, cfg.eval_batch_size, dist, autocast)
                    row[f"{name}_top1"], row[f"{name}_top5"] = t1, t5
                history.append(row)
                bar.end_epoch(row)
                with held_interrupt():  # checkpoint and bookkeeping agree, whenever Ctrl-C comes
                    if dist.main:
                        save_checkpoint(ckpt_path, {
                            "epoch": epoch + 1, "model": core.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "history": history, "derived": derived, "noise_hash": noise.hash,
                            "config": cfg.to_dict(), "version": __version__})
                        write_metrics(out, history, config_record, "running", extra_eval)
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
                write_metrics(out, history, config_record, status, extra_eval,
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
