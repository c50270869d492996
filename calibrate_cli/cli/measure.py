"""``calibrate measure``: logits of a model at initialisation and their statistics."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import UsageError
from . import common as c
from .params import INT

HELP = """Measure the logits of a freshly initialised model and how Gaussian they are.

Builds --model at its default initialisation (seeded), feeds --batches batches of inputs and reports the logits' mean, std (per-row centred: what --logit-std means), skewness, excess kurtosis, spread across classes and inputs, and the Kolmogorov–Smirnov distance to the fitted Gaussian. Inputs: real images with --dataset glyphs (embedded) or --dataset NAME --data-dir DIR; otherwise Gaussian N(0, 1) per pixel, i.e. inputs normalised as the dataset (or --input-shape) would be -- the output says which. --out writes the logits for --logits FILE. Runs on CUDA when available (--device auto).

[bold]Examples[/]

  calibrate measure --model resnet34 --classes 100 --out logits.npz

  calibrate measure --model mlp1024 --dataset glyphs --classes 10 --seeds 0,1,2 --json

  calibrate epsilon --classes 100 --logits logits.npz
"""


def register(app: typer.Typer) -> None:
    app.command("measure", help=HELP)(measure)


def measure(
    model: Annotated[str, typer.Option(
        "--model", "-m", help="mlp1024, cnn8, resnet18, resnet34, resnet50 (see 'calibrate train').")],
    classes: Annotated[int, typer.Option("--classes", "-k", click_type=INT,
                                         help="Number of classes K (>= 2).")],
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="Inputs like this dataset: real images for glyphs or with --data-dir, "
                          "else Gaussian inputs of its shape.")] = None,
    data_dir: Annotated[Optional[str], typer.Option(
        "--data-dir", help="Folder of --dataset (real images).")] = None,
    input_shape: Annotated[Optional[str], typer.Option(
        "--input-shape", metavar="C,H,W",
        help="Shape of Gaussian inputs without --dataset (default 3,32,32).")] = None,
    batches: Annotated[int, typer.Option("--batches", click_type=INT,
                                         help="Batches per seed.")] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", click_type=INT,
                                            help="Inputs per batch.")] = 128,
    seeds: Annotated[str, typer.Option(
        "--seeds", help="Initialisation seeds, comma separated; logits of all are pooled.")] = "0",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(
        "--threads", click_type=INT, show_default=False,
        help="CPU threads of torch (default: the free physical cores, as for 'calibrate "
             "train'; printed).")] = None,
    out: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="Write the logits [N, K] here (.npz with key 'logits', or .npy).")] = None,
    json_: c.Json = False,
) -> None:
    import os

    from ..measure import check_output, measure_logits
    from ..utils.progress import slow_step

    if data_dir and not dataset:
        raise UsageError("--data-dir needs --dataset NAME")
    if data_dir and not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir '{data_dir}' is not a folder")
    if out is not None:
        check_output(out, "--out")  # writable before the measurement, not after it
    seed_list = c.parse_int_list(seeds, "--seeds") if seeds.strip() else []
    if any(s < 0 for s in seed_list):
        raise UsageError(f"--seeds must be integers >= 0, got '{seeds}'")
    shape = c.parse_shape(input_shape) if input_shape is not None else None
    with slow_step(f"measuring {model} at initialisation ({len(seed_list)} seed"
                   f"{'s' if len(seed_list) != 1 else ''} × {batches} batches of {batch_size})"):
        m = measure_logits(model, classes, dataset=dataset, data_dir=data_dir,
                           input_shape=shape, batches=batches, batch_size=batch_size,
                           seeds=seed_list, device=device, threads=threads)
    if out is not None:
        m.to_npz(out)
    s = m.stats
    if json_:
        c.emit_json("measure", {"model": model, "classes": classes, "meta": m.meta,
                                "stats": s, "out": out})
        return
    rows = [
        ("inputs", s["inputs"]),
        ("logits", f"{s['n_inputs']} inputs × {s['classes']} classes, seeds "
                   f"{', '.join(map(str, m.meta['seeds']))}, device {m.meta['device']}"),
        ("threads", f"{m.meta['threads']} ({m.meta['threads_reason']})"),
        ("mean", f"{s['mean']:.5f}  (softmax ignores it)"),
        ("std", f"{s['std']:.5f}  per-row centred (--logit-std); raw {s['std_raw']:.5f}"),
        ("std per seed", ", ".join(f"{v:.5f}" for v in s["per_seed_std"])),
        ("skewness", f"{s['skewness']:+.4f}  (Gaussian: 0)"),
        ("excess kurtosis", f"{s['excess_kurtosis']:+.4f}  (Gaussian: 0)"),
        ("class spread", f"{s['class_spread']:.5f}  std over classes of the per-class means"),
        ("input spread", f"{s['input_spread']:.5f}  std over inputs of the per-input means"),
        ("Gaussian fit", f"N(0, {s['std']:.4f}²), Kolmogorov–Smirnov distance {s['ks_distance']:.4f}"),
    ]
    if out is not None:
        rows.append(("written", f"{out}  (use with --logits {out})"))
    c.print_rows(f"logits of {model} at initialisation, K = {classes}", rows)
