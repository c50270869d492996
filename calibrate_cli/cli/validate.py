"""``calibrate validate``: losses × noise × seeds, resumable, with a results table."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ..utils import strict_json
from .params import INT

GRID, DATA, OPT, RUN = "Grid", "Data", "Training (every run)", "Run"

HELP = """Train a grid of losses × noise levels × seeds and tabulate test accuracy (mean ± std over seeds, last and best epoch).

--losses takes loss names and variants: NAME* adds --logit-bias auto (mae* is MAE*), NAME@P=V sets a parameter, NAME@calibrated:P:K transfers P from its current value at K classes to the dataset's K and NAME@calibrated:P:K:V from the value V (NAME@calibrated: q from K = 100). Which computed values held in training: docs/validation.md (the GCE q transfer did not with SGD). --noise takes rates (0.4 = symmetric:0.4) or any 'calibrate train --noise' spec.

NAME*peak solves ε with the peak criterion and NAME*above takes the match root above the peak; NAME@eps=V fixes ε.

--sweep QUANTITY=V1,V2,... trains the one loss of --losses over a list of values of ε (eps=0,2,4,match,peak,above: numbers are fixed biases, the words are computed per run) or of a loss parameter (q=0.3,0.5,calibrated), and reports where the computed values land against the best fixed value.

Runs go to OUT/runs/<loss>/<noise>/seed-<s>/, seed by seed; completed runs are skipped and interrupted ones resumed, so the same command continues a grid. --jobs N trains N runs at once in separate processes (same results as --jobs 1 at the same --threads). Results: OUT/results.md, results.csv, results.json and accuracy.png; a sweep writes OUT/sweep-<loss>-<quantity>.md, .csv, .json and .png.

Output: the results table (or with --json the summary) goes to stdout; the progress of the runs goes to stderr, plain, one line per run and per epoch.

[bold]Examples[/]

  calibrate validate --classes 1000 --losses ce,mae,mae*,gce --noise 0,0.4 --seeds 0,1,2 --out runs/val

  calibrate validate --classes 1000 --losses mae --sweep eps=0,2,4,match,6,peak,8 --noise 0.4 --seeds 0,1 --jobs 2 --threads 1 --out runs/val

  calibrate validate --dataset cifar100 --data-dir ~/data/cifar-100-python --losses ce,mae,mae* --noise 0.4 --seeds 0-4 --out runs/c100
"""


def register(app: typer.Typer) -> None:
    app.command("validate", help=HELP)(validate)


def _opt(*names, panel, help, **kw):
    return typer.Option(*names, rich_help_panel=panel, help=help, **kw)


def validate(
    losses: Annotated[str, _opt("--losses", panel=GRID, help="Comma-separated losses and variants (NAME, NAME*, NAME@P=V, NAME@calibrated:P:K[:V]).")] = "ce,mae,mae*,gce",
    noise: Annotated[str, _opt("--noise", panel=GRID, help="Comma-separated noise levels (rates mean symmetric noise).")] = "0,0.4",
    seeds: Annotated[str, _opt("--seeds", panel=GRID, help="Comma-separated seeds or ranges a-b (a <= b).")] = "0,1,2",
    sweep: Annotated[Optional[str], _opt("--sweep", panel=GRID, metavar="Q=V1,V2,...", help="Sweep ε (eps=0,2,match,peak,above) or a parameter of the one loss in --losses (q=0.3,0.5,calibrated,calibrated:10: transferred from K = 100 or 10).")] = None,
    jobs: Annotated[int, _opt("--jobs", "-j", panel=RUN, min=1, click_type=INT, help="Runs trained at once, each in its own process (threads: the physical cores divided among them).")] = 1,
    out: Annotated[str, _opt("--out", "-o", panel=RUN, help="Folder of the grid (runs and results).")] = "runs/validate",
    dataset: Annotated[Optional[str], _opt("--dataset", panel=DATA, help="Dataset (see 'calibrate train --help').")] = None,
    data_dir: Annotated[Optional[str], _opt("--data-dir", panel=DATA, help="Folder with the dataset's files.")] = None,
    classes: Annotated[Optional[int], _opt("--classes", panel=DATA, help="Keep the first K classes (glyphs: draw K characters).", click_type=INT)] = None,
    train_per_class: Annotated[Optional[int], _opt("--train-per-class", "--train-samples-per-class", panel=DATA, help="At most this many training images per class.", click_type=INT)] = None,
    test_per_class: Annotated[Optional[int], _opt("--test-per-class", "--test-samples-per-class", panel=DATA, help="At most this many test images per class.", click_type=INT)] = None,
    image_size: Annotated[Optional[int], _opt("--image-size", panel=DATA, help="Image side.", click_type=INT)] = None,
    data_seed: Annotated[Optional[int], _opt("--data-seed", panel=DATA, help="Seed of the glyph draws and subsets.", click_type=INT)] = None,
    model: Annotated[Optional[str], _opt("--model", panel=OPT, help="Model (see 'calibrate train --help').")] = None,
    preset: Annotated[Optional[str], _opt("--preset", panel=OPT, help="Literature parameters, for the losses that have this preset.")] = None,
    set_: Annotated[Optional[list[str]], _opt("--set", panel=OPT, metavar="NAME=VALUE", help="A loss parameter, for the losses that have it (repeatable).")] = None,
    epochs: Annotated[Optional[int], _opt("--epochs", panel=OPT, help="Epochs of every run.", click_type=INT)] = None,
    batch_size: Annotated[Optional[int], _opt("--batch-size", panel=OPT, help="Global batch size.", click_type=INT)] = None,
    optimizer: Annotated[Optional[str], _opt("--optimizer", panel=OPT, help="sgd, adam or adamw.")] = None,
    lr: Annotated[Optional[float], _opt("--lr", panel=OPT, help="Peak learning rate.")] = None,
    weight_decay: Annotated[Optional[float], _opt("--weight-decay", panel=OPT, help="Weight decay.")] = None,
    schedule: Annotated[Optional[str], _opt("--schedule", panel=OPT, help="cosine, step or constant.")] = None,
    device: Annotated[Optional[str], _opt("--device", panel=RUN, help="auto, cuda, mps or cpu.")] = None,
    precision: Annotated[Optional[str], _opt("--precision", panel=RUN, help="auto, fp32, bf16, fp16.")] = None,
    threads: Annotated[Optional[int], _opt("--threads", panel=RUN, help="CPU threads of torch (default: the free physical cores, chosen once for the grid).", click_type=INT)] = None,
    config: Annotated[Optional[str], _opt("--config", panel=RUN, metavar="FILE", help="Settings of every run from a YAML or JSON file; options given here win.")] = None,
    report_only: Annotated[bool, _opt("--report-only", panel=RUN, help="Train nothing: tabulate the runs of the grid that are complete (a grid still running, or one stopped early); n per cell says how many seeds each holds.")] = False,
    emit_commands: Annotated[bool, _opt("--emit-commands", panel=RUN, help="Train nothing, write nothing: print one self-contained 'calibrate train --continue' line per run that is not complete (each into its own folder under OUT/runs; safe to run twice, in any order), for a job array, GNU parallel or Ray; then collect with --report-only.")] = False,
    quiet: Annotated[bool, _opt("--quiet", "-q", panel=RUN, help="No progress bars.")] = False,
    json_: Annotated[bool, _opt("--json", panel=RUN, help="Print results.json's summary as one JSON object on stdout.")] = False,
) -> None:
    from ..losses import parse_assignments
    from ..train import threads as T
    from ..train.config import load_config_file
    from ..train.validate import markdown_table, parse_losses, parse_noise_list, parse_seeds, run_grid

    T.before_torch()

    sweep_spec = None
    if sweep is not None:
        from ..train.sweep import parse_sweep

        sweep_spec = parse_sweep(sweep, losses)
    variants = parse_losses(losses)
    noises = parse_noise_list(noise)
    seed_list = parse_seeds(seeds)
    base = load_config_file(config) if config else {}
    given = dict(dataset=dataset, data_dir=data_dir, classes=classes,
                 train_samples_per_class=train_per_class, test_samples_per_class=test_per_class,
                 image_size=image_size, data_seed=data_seed, model=model, loss_preset=preset,
                 epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                 weight_decay=weight_decay, schedule=schedule, device=device, precision=precision,
                 threads=threads)
    base.update({k: v for k, v in given.items() if v is not None})
    if set_:
        base["loss_params"] = {**(base.get("loss_params") or {}), **parse_assignments(set_)}
    for k in ("loss", "logit_bias", "calibrate", "calibrate_from", "noise", "seed", "out"):
        base.pop(k, None)  # set per run by the grid
    command = "calibrate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    from ..utils.progress import log_line as log

    if emit_commands and report_only:
        raise UsageError("give --emit-commands or --report-only, not both")
    emit = typer.echo if emit_commands else None
    if sweep_spec is not None:
        from ..train.sweep import run_sweep, sweep_markdown

        res = run_sweep(sweep_spec, base, noises, seed_list, out, jobs=jobs, progress=not quiet,
                        command=command, log=log, train=not report_only, emit=emit)
        if emit_commands:
            return
        if json_:
            typer.echo(strict_json.dumps({"out": out, "points": res["points"],
                                          "report": res["report"]}))
        else:
            typer.echo(sweep_markdown(res), nl=False)
        return
    results = run_grid(base, variants, noises, seed_list, out, progress=not quiet,
                       command=command, log=log, jobs=jobs, train=not report_only, emit=emit)
    if emit_commands:
        return
    if json_:
        typer.echo(strict_json.dumps({"out": out, "summary": results["summary"]}))
    else:
        typer.echo(markdown_table(results), nl=False)
