"""``calibrate train``: train a classifier on noisy labels with a (calibrated) robust loss.

The options map one to one onto :class:`~calibrate_cli.train.config.TrainConfig`;
only the options given on the command line override the dataset protocol and
``--config``. torch is imported inside the command only.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ..utils import strict_json
from .params import INT

DATA, MODEL, LOSS, OPT, RUN = "Data and noise", "Model", "Loss", "Optimisation", "Run"

HELP = """Train a classifier on noisy labels, with the logit bias ε and recalibrated loss parameters computed for the dataset's K.

ε (--logit-bias auto) and --calibrate use the dataset's number of classes and the logit std of the actual model at initialisation, measured on the first batches before training. The bias is added to the labelled class's logit in training only; accuracies use the raw logits.

Defaults: the dataset's protocol (the robust-loss literature's recipe; see docs/training.md), then --config FILE, then the options given here; --print-config shows the result for your options without training. The resolved configuration, per-epoch metrics (CSV and JSON), the noisy labels with their hash and a checkpoint per epoch go to --out.

Output: the run's lines (dataset, noise, ε, one line per epoch, the result) go to stdout, plain, so 'calibrate train > log' keeps them; a progress bar goes to stderr when it is a terminal; errors go to stderr as one line. With --json, stdout holds only the JSON summary and the run's lines go to stderr.

[bold]Examples[/]

  calibrate train                                 (embedded glyphs, nothing to download)

  calibrate train --dataset cifar100 --print-config

  calibrate train --loss mae --logit-bias auto --classes 1000 --train-per-class 20

  calibrate train --dataset cifar100 --data-dir ~/data/cifar-100-python --model resnet34 --loss mae --logit-bias auto --noise symmetric:0.4 --epochs 200 --seed 0 --out runs/c100

  calibrate train --loss mae --logit-bias auto --optimizer sgd --noise 0.4

  calibrate train --out runs/c100 --resume --epochs 250

  torchrun --nproc_per_node 4 -m calibrate_cli train --dataset webvision --data-dir ...
"""


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train)


def _opt(*names, panel, help, **kw):
    return typer.Option(*names, rich_help_panel=panel, help=help, **kw)


def train(
    dataset: Annotated[Optional[str], _opt("--dataset", panel=DATA, help="glyphs (embedded), cifar10, cifar100, fashion-mnist, imagefolder, webvision, webvision-mini.")] = None,
    data_dir: Annotated[Optional[str], _opt("--data-dir", panel=DATA, help="Folder with the dataset's files (see docs/datasets.md); nothing is downloaded.")] = None,
    classes: Annotated[Optional[int], _opt("--classes", panel=DATA, help="Keep the first K classes (glyphs: draw K characters; default 100).", click_type=INT)] = None,
    train_per_class: Annotated[Optional[int], _opt("--train-per-class", "--train-samples-per-class", panel=DATA, help="At most this many training images per class.", click_type=INT)] = None,
    test_per_class: Annotated[Optional[int], _opt("--test-per-class", "--test-samples-per-class", panel=DATA, help="At most this many test images per class.", click_type=INT)] = None,
    image_size: Annotated[Optional[int], _opt("--image-size", panel=DATA, help="Image side (glyphs: rendered size; image folders: training crop).", click_type=INT)] = None,
    data_seed: Annotated[Optional[int], _opt("--data-seed", panel=DATA, help="Seed of the glyph draws and per-class subsets (default 0, the same for every run).", click_type=INT)] = None,
    noise: Annotated[Optional[str], _opt("--noise", panel=DATA, help="Label noise: none, symmetric:R (or R), asymmetric:R, asymmetric-literature:R, pairflip:R, cifar100-block:R, cifar100-superclass:R, matrix:PATH; R in [0, 1).")] = None,
    noise_seed: Annotated[Optional[int], _opt("--noise-seed", panel=DATA, help="Seed of the label noise (default: --seed).", click_type=INT)] = None,
    augment: Annotated[Optional[str], _opt("--augment", panel=DATA, help="auto, none, flip, crop-flip, crop-flip-rotate.")] = None,
    imagenet_val_dir: Annotated[Optional[str], _opt("--imagenet-val-dir", panel=DATA, help="WebVision: also evaluate on ILSVRC12 val (first K classes).")] = None,
    workers: Annotated[Optional[int], _opt("--workers", panel=DATA, help="DataLoader workers (file-backed datasets only).", click_type=INT)] = None,
    model: Annotated[Optional[str], _opt("--model", panel=MODEL, help="mlp1024, cnn8, resnet18, resnet34, resnet50 (mlp<W>x<D>; resnetNN-cifar/-imagenet).")] = None,
    zero_init_residual: Annotated[Optional[bool], _opt("--zero-init-residual/--no-zero-init-residual", panel=MODEL, help="Start each residual branch's last batch norm at 0.")] = None,
    sync_bn: Annotated[Optional[bool], _opt("--sync-bn/--no-sync-bn", panel=MODEL, help="Synchronise batch-norm statistics across processes (DDP).")] = None,
    loss: Annotated[Optional[str], _opt("--loss", "-l", panel=LOSS, help="Loss name (see 'calibrate losses').")] = None,
    preset: Annotated[Optional[str], _opt("--preset", panel=LOSS, help="Literature parameters of the loss for a dataset (cifar10, cifar100, webvision-mini).")] = None,
    set_: Annotated[Optional[list[str]], _opt("--set", panel=LOSS, metavar="NAME=VALUE", help="Set one loss parameter (repeatable); after --preset.")] = None,
    logit_bias: Annotated[Optional[str], _opt("--logit-bias", panel=LOSS, help="ε added to the labelled class's logit in training: a number, or auto (solved for K and the measured logit std).")] = None,
    bias_criterion: Annotated[Optional[str], _opt("--bias-criterion", panel=LOSS, help="Criterion for --logit-bias auto: match (default) or peak (see 'calibrate epsilon --help').")] = None,
    bias_branch: Annotated[Optional[str], _opt("--bias-branch", panel=LOSS, help="For --logit-bias auto with the match criterion: the root below (default) or above the peak of <δ_k>.")] = None,
    calibrate: Annotated[Optional[str], _opt("--calibrate", panel=LOSS, help="A loss parameter (e.g. q) to recalibrate from --calibrate-from classes to the dataset's K.")] = None,
    calibrate_from: Annotated[Optional[int], _opt("--calibrate-from", panel=LOSS, help="K at which the parameter's value (--set or --preset) holds (default: the preset's K).", click_type=INT)] = None,
    logit_std: Annotated[Optional[float], _opt("--logit-std", panel=LOSS, help="Use this logit std instead of measuring it.")] = None,
    measure_batches: Annotated[Optional[int], _opt("--measure-batches", panel=LOSS, help="Batches measured for the initial logit std.", click_type=INT)] = None,
    epochs: Annotated[Optional[int], _opt("--epochs", panel=OPT, help="Epochs (with --resume: the new total).", click_type=INT)] = None,
    batch_size: Annotated[Optional[int], _opt("--batch-size", panel=OPT, help="Global batch size (all processes together).", click_type=INT)] = None,
    optimizer: Annotated[Optional[str], _opt("--optimizer", panel=OPT, help="sgd, adam or adamw.")] = None,
    lr: Annotated[Optional[float], _opt("--lr", panel=OPT, help="Peak learning rate.")] = None,
    momentum: Annotated[Optional[float], _opt("--momentum", panel=OPT, help="SGD momentum.")] = None,
    nesterov: Annotated[Optional[bool], _opt("--nesterov/--no-nesterov", panel=OPT, help="Nesterov momentum (SGD).")] = None,
    weight_decay: Annotated[Optional[float], _opt("--weight-decay", panel=OPT, help="Weight decay.")] = None,
    schedule: Annotated[Optional[str], _opt("--schedule", panel=OPT, help="cosine, step or constant (per epoch).")] = None,
    step_size: Annotated[Optional[int], _opt("--step-size", panel=OPT, help="step schedule: epochs between multiplications by --gamma.", click_type=INT)] = None,
    gamma: Annotated[Optional[float], _opt("--gamma", panel=OPT, help="step schedule: factor.")] = None,
    warmup_epochs: Annotated[Optional[int], _opt("--warmup-epochs", panel=OPT, help="Linear warm-up epochs.", click_type=INT)] = None,
    grad_clip: Annotated[Optional[float], _opt("--grad-clip", panel=OPT, help="Clip the gradient 2-norm to this (0: off).")] = None,
    seed: Annotated[Optional[int], _opt("--seed", panel=RUN, help="Seed of the model, the batch order and (by default) the noise.", click_type=INT)] = None,
    device: Annotated[Optional[str], _opt("--device", panel=RUN, help="auto (cuda, mps, cpu), cuda, mps or cpu.")] = None,
    precision: Annotated[Optional[str], _opt("--precision", panel=RUN, help="auto (bf16 on CUDA, else fp32), fp32, bf16 (CUDA or CPU), fp16 (CUDA).")] = None,
    compile_: Annotated[Optional[bool], _opt("--compile/--no-compile", panel=RUN, help="torch.compile the model.")] = None,
    threads: Annotated[Optional[int], _opt("--threads", panel=RUN, help="CPU threads of torch (default: the free physical cores, printed at the start).", click_type=INT)] = None,
    eval_batch_size: Annotated[Optional[int], _opt("--eval-batch-size", panel=RUN, help="Batch size of evaluation.", click_type=INT)] = None,
    out: Annotated[Optional[str], _opt("--out", "-o", panel=RUN, help="Run folder (default runs/<dataset>-<model>-<loss>-s<seed>).")] = None,
    tensorboard: Annotated[Optional[bool], _opt("--tensorboard/--no-tensorboard", panel=RUN, help="Also log to TensorBoard (needs tensorboard).")] = None,
    config: Annotated[Optional[str], _opt("--config", panel=RUN, metavar="FILE", help="Settings from a YAML or JSON file (keys: the fields of config.json or the option names, e.g. train_per_class, loss_params: {q: 0.5}); options given here win.")] = None,
    resume: Annotated[bool, _opt("--resume", panel=RUN, help="Continue the run in --out from its checkpoint.")] = False,
    continue_: Annotated[bool, _opt("--continue", panel=RUN, help="Start the run in --out, continue it from its checkpoint if there is one, or do nothing if it is complete with these settings: safe to run twice (the lines of 'calibrate validate --emit-commands').")] = False,
    quiet: Annotated[bool, _opt("--quiet", "-q", panel=RUN, help="No progress bar (the run's lines are still printed).")] = False,
    json_: Annotated[bool, _opt("--json", panel=RUN, help="Print the final summary as one JSON object on stdout (the run's lines go to stderr).")] = False,
    print_config: Annotated[bool, _opt("--print-config", panel=RUN, help="Print the resolved configuration (dataset protocol, --config, options) as JSON and exit without training.")] = False,
) -> None:
    from ..losses import parse_assignments
    from ..train import threads as thread_choice
    from ..train.config import load_config_file, read_saved_config, resolve_config

    thread_choice.before_torch()

    given = dict(dataset=dataset, data_dir=data_dir, classes=classes,
                 train_samples_per_class=train_per_class, test_samples_per_class=test_per_class,
                 image_size=image_size, data_seed=data_seed, noise=noise, noise_seed=noise_seed,
                 augment=augment, imagenet_val_dir=imagenet_val_dir, workers=workers, model=model,
                 zero_init_residual=zero_init_residual, sync_bn=sync_bn, loss=loss,
                 loss_preset=preset, logit_bias=logit_bias, bias_criterion=bias_criterion,
                 bias_branch=bias_branch,
                 calibrate=calibrate, calibrate_from=calibrate_from, logit_std=logit_std,
                 measure_batches=measure_batches, epochs=epochs, batch_size=batch_size,
                 optimizer=optimizer, lr=lr, momentum=momentum, nesterov=nesterov,
                 weight_decay=weight_decay, schedule=schedule, step_size=step_size, gamma=gamma,
                 warmup_epochs=warmup_epochs, grad_clip=grad_clip, seed=seed, device=device,
                 precision=precision, compile=compile_, threads=threads,
                 eval_batch_size=eval_batch_size, out=out,
                 tensorboard=tensorboard)
    cli_values = {k: v for k, v in given.items() if v is not None}
    file_values = load_config_file(config) if config else {}
    base = {}
    if resume:
        run_dir = out or file_values.get("out")
        if not run_dir:
            raise UsageError("--resume needs --out, the folder of the run to continue")
        saved = os.path.join(os.path.expanduser(run_dir), "config.json")
        if os.path.isfile(saved):
            base = read_saved_config(saved)
    if set_:
        merged = dict(base.get("loss_params", {}))
        merged.update(file_values.get("loss_params", {}) or {})
        merged.update(parse_assignments(set_))
        cli_values["loss_params"] = merged
    cfg = resolve_config(file_values=file_values, cli_values=cli_values, base=base)
    if print_config:
        typer.echo(strict_json.dumps(cfg.to_dict(), indent=2))
        return
    if continue_:
        from ..train.provenance import continue_state

        if resume:
            raise UsageError("give --resume or --continue, not both")
        state = continue_state(cfg)  # UsageError when --out holds a run with other settings
        if state == "complete":
            print(f"complete: '{cfg.out}' holds this run with all {cfg.epochs} epochs; nothing "
                  "to do", file=sys.stderr if json_ else sys.stdout)
            return
        resume = state == "resume"

    _print_validity(cfg, sys.stderr if json_ else sys.stdout)
    from ..train.loop import train as run_training

    command = "calibrate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_training(cfg, resume=resume, progress=not quiet, command=command,
                          log_stream=sys.stderr if json_ else sys.stdout)
    if json_:
        summary = {"out": result.out_dir, "status": result.status,
                   "epsilon": result.derived.get("epsilon"),
                   "params": result.derived.get("params"),
                   "logit_std": result.derived.get("logit_std"),
                   "noise_rate": result.noise.get("rate"), "noise_hash": result.noise.get("hash"),
                   "epochs": len(result.history), "last_top1": result.last_top1,
                   "best_top1": result.best_top1}
        if _is_main_process():
            typer.echo(strict_json.dumps(summary))


def _print_validity(cfg, stream) -> None:
    """The validity map's verdict on the computed values this run uses, for its optimizer."""
    from ..losses import get_loss
    from ..validity import note, quantity_of

    try:
        loss = get_loss(cfg.loss).name
    except UsageError:
        return  # the trainer says what is wrong with the loss
    quantities = []
    if cfg.logit_bias == "auto":
        quantities.append(("ε", quantity_of("epsilon", loss, criterion=cfg.bias_criterion), None))
    if cfg.calibrate:
        quantities.append((cfg.calibrate, quantity_of("transfer", loss, param=cfg.calibrate,
                                                      reference_classes=cfg.calibrate_from),
                           cfg.calibrate_from))
    if _is_main_process():
        for name, quantity, k_ref in quantities:
            v = note(quantity, optimizer=cfg.optimizer, reference_classes=k_ref)
            print(f"validity map, computed {name} with {cfg.optimizer}: {v.line}", file=stream,
                  flush=True)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
