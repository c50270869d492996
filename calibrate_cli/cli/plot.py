"""``calibrate plot``: the figures of the README (matplotlib, PNG/SVG/PDF by extension)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from ..utils.atomic import check_folder, make_folder
from ..errors import UsageError
from . import common as c
from .params import INT

NAMES = ("delta-mae", "losses", "q-calibration", "epsilon-vs-k", "logit-histogram", "accuracy")

HELP = """Draw one figure, or all of them.

[bold]delta-mae[/]: MAE's <δ_k> against z_k for K = 10 and 100 over the histogram of initial logits. [bold]losses[/]: several losses at K = 10 and 1000, histogram shifted by ε. [bold]q-calibration[/]: GCE's q from 100 to 1000 classes. [bold]epsilon-vs-k[/]: ε against K per criterion. [bold]logit-histogram[/]: measured logits and their Gaussian fit (--logits FILE, or measure --model on --dataset). [bold]accuracy[/]: accuracy against epoch from a 'calibrate validate' folder (--validate DIR). [bold]all[/]: every figure as PNG into --out-dir (accuracy only with --validate).

[bold]Examples[/]

  calibrate plot delta-mae --out delta.svg

  calibrate plot logit-histogram --logits logits.npz --out hist.png

  calibrate plot all --out-dir docs/figures
"""


def register(app: typer.Typer) -> None:
    app.command("plot", help=HELP)(plot)


def plot(
    name: Annotated[str, typer.Argument(help=f"One of {', '.join(NAMES)}, or all.")],
    out: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="Output file: .png, .svg or .pdf.")] = None,
    out_dir: Annotated[Optional[str], typer.Option(
        "--out-dir", help="Folder for 'all' (PNG files named after the figures).")] = None,
    logit_std: c.LogitStd = c.DEFAULTS["logit_std"],
    logits: c.Logits = None,
    model: Annotated[str, typer.Option(
        "--model", help="logit-histogram without --logits: the model to measure.")] = "mlp1024",
    dataset: Annotated[str, typer.Option(
        "--dataset", help="logit-histogram: inputs to measure with (glyphs: real embedded "
                          "images; another name without --data-dir: Gaussian inputs of its "
                          "shape).")] = "glyphs",
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset folder.")] = None,
    classes: Annotated[int, typer.Option(
        "--classes", "-k", click_type=INT, help="logit-histogram: K of the measured model.")] = 10,
    validate: Annotated[Optional[str], typer.Option(
        "--validate", metavar="DIR", help="accuracy: output folder of 'calibrate validate'.")] = None,
    dpi: Annotated[int, typer.Option("--dpi", click_type=INT, help="Resolution of PNG output.")] = 120,
) -> None:
    from .. import plots as P

    if name not in NAMES + ("all",):
        raise UsageError(f"unknown figure '{name}' (one of {', '.join(NAMES)}, or all)")
    if not 20 <= dpi <= 1200:
        raise UsageError(f"--dpi must be in [20, 1200], got {dpi}")
    for value, option in ((logits, "--logits"), (data_dir, "--data-dir")):
        c.not_empty(value, option)
    if logits and not os.path.isfile(logits):
        raise UsageError(f"logits file '{logits}' does not exist or is not a regular file "
                         "(expected .npy, .npz or .pt)")
    if name == "all":
        if out is not None:
            raise UsageError("'plot all' writes several files: give --out-dir DIR, not --out")
        folder = out_dir or os.path.join("docs", "figures")
        check_folder(folder, "--out-dir")
        targets = [(n, os.path.join(folder, f"{n}.png")) for n in NAMES
                   if n != "accuracy" or validate]
    else:
        if out is None:
            raise UsageError(f"give --out FILE (.png, .svg or .pdf) for figure '{name}'")
        if out_dir is not None:
            raise UsageError("--out-dir is only for 'plot all'")
        folder = None
        targets = [(name, out)]
    if any(n == "accuracy" for n, _ in targets) and not validate:
        raise UsageError("the accuracy figure needs --validate DIR (a 'calibrate validate' output)")
    if folder is None:
        for _, path in targets:
            P.check_output(path)
    P._plt()  # matplotlib: a missing package is reported before anything is drawn
    # every input is read and checked before the first figure is drawn, so a bad input
    # never leaves some of the figures written
    inputs = {}
    if any(n == "logit-histogram" for n, _ in targets):
        inputs["logit-histogram"] = _histogram_input(logits, model=model, dataset=dataset,
                                                     data_dir=data_dir, classes=classes)
    if any(n == "accuracy" for n, _ in targets):
        inputs["accuracy"] = P.read_validate(validate)
        if not P.accuracy_curves(inputs["accuracy"]):  # checks its contents too
            raise UsageError(f"--validate '{validate}': no run has any finished epoch yet")
    if folder is not None:
        make_folder(folder, "--out-dir", lock=True)  # one writer of a figure set at a time
    from ..engine.logits import Gaussian

    dist = Gaussian(0.0, logit_std)
    for n, path in targets:
        fig = _figure(P, n, dist, inputs.get(n))
        P.save_figure(fig, path, dpi=dpi)
        c.say(f"wrote {path}")


def _histogram_input(logits, *, model, dataset, data_dir, classes):
    """(array [N, K] of logits, title) for the logit-histogram figure."""
    if logits:
        from ..engine.logits import load_logits, read_logits_array

        emp = load_logits(logits)  # checks shape and values
        arr = read_logits_array(logits)
        return (arr if arr.ndim == 2 else emp.values[None, :],
                f"logits from {os.path.basename(logits)}")
    from ..measure import measure_logits
    from ..utils.progress import slow_step

    with slow_step(f"measuring {model} at initialisation"):
        m = measure_logits(model, classes, dataset=dataset, data_dir=data_dir, batches=2)
    inputs = (f"real {dataset} images" if m.stats["inputs"].startswith("real")
              else "Gaussian inputs")
    return m.logits, f"{model} at initialisation, K = {classes}, {inputs}"


def _figure(P, name, dist, data):
    if name == "delta-mae":
        return P.figure_delta_mae(dist)
    if name == "losses":
        return P.figure_losses(dist)
    if name == "q-calibration":
        return P.figure_q_calibration(dist)
    if name == "epsilon-vs-k":
        return P.figure_epsilon_vs_k(dist)
    if name == "logit-histogram":
        arr, title = data
        return P.figure_logit_histogram(arr, title=title)
    return P.figure_accuracy(data)
