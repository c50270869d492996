"""``calibrate epsilon``: the logit bias ε for a loss at K classes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..engine.solve import BRANCHES, CRITERIA, check_k, solve_epsilon
from . import common as c
from .params import INT

HELP = """The logit bias ε to add to the correct-class logit during training.

Criteria: [bold]match[/] (default) makes <δ_k> at the mean of the initial logits equal to its value at --reference-classes without bias (the root below the peak of <δ_k>(z)); [bold]peak[/] puts the extremum of <δ_k>(z) at the mean; [bold]target[/] makes <δ_k> at the mean equal --target.

[bold]Examples[/]

  calibrate epsilon --classes 1000

  calibrate epsilon --classes 1000 --criterion peak --logit-std 0.5 --json

  calibrate epsilon --loss gce --preset cifar100 --classes 1000
"""


def register(app: typer.Typer) -> None:
    app.command("epsilon", help=HELP, no_args_is_help=False)(epsilon)


def epsilon(
    classes: Annotated[int, typer.Option("--classes", "-k", click_type=INT,
                                         help="Number of classes K (>= 2; 1e6 is accepted).")],
    loss: c.Loss = "mae",
    preset: c.Preset = None,
    set_: c.Set = None,
    criterion: Annotated[str, typer.Option(
        "--criterion", help=f"One of {', '.join(CRITERIA)}.")] = "match",
    reference_classes: Annotated[Optional[int], typer.Option(
        "--reference-classes", show_default=False, click_type=INT,
        help="K_ref of the match criterion (default 10).")] = None,
    target: Annotated[Optional[float], typer.Option(
        "--target", help="<δ_k> to reach at the logit mean (criterion target).")] = None,
    branch: Annotated[Optional[str], typer.Option(
        "--branch", show_default=False,
        help="Which root of match/target: below (default) the peak of <δ_k>(z) or above it.")
    ] = None,
    logit_mean: c.LogitMean = None,
    logit_std: c.LogitStd = None,
    logits: c.Logits = None,
    atoms: c.Atoms = None,
    from_model: c.FromModel = None,
    input_shape: c.InputShape = None,
    samples: c.Samples = c.DEFAULTS["samples"],
    seed: c.Seed = c.DEFAULTS["seed"],
    device: c.Device = c.DEFAULTS["device"],
    json_: c.Json = False,
) -> None:
    if criterion not in CRITERIA:
        raise c.UsageError(f"--criterion must be one of {', '.join(CRITERIA)}, got '{criterion}'")
    if branch is not None and branch not in BRANCHES:
        raise c.UsageError(f"--branch must be one of {', '.join(BRANCHES)}, got '{branch}'")
    if target is not None and criterion != "target":
        raise c.UsageError("--target is only used with --criterion target")
    if reference_classes is not None and criterion != "match":
        raise c.UsageError("--reference-classes is only used with --criterion match")
    if branch is not None and criterion == "peak":
        raise c.UsageError("--branch is only used with --criterion match or target "
                           "(peak has one answer)")
    reference_classes = 10 if reference_classes is None else check_k(reference_classes,
                                                                      "--reference-classes")
    branch = branch or "below"
    spec, params = c.make_loss(loss, preset, set_)
    dist = c.make_distribution(logit_mean=logit_mean, logit_std=logit_std, logits=logits,
                               atoms=atoms, from_model=from_model, input_shape=input_shape,
                               classes=classes, quiet=json_)
    av = c.make_averager(dist, samples, seed, spec, device=device)
    from ..engine.cost import epsilon_evaluations

    with c.monte_carlo_work(av, [(spec, params, lambda: epsilon_evaluations(
            av, check_k(classes), criterion, reference_classes))]):
        r = solve_epsilon(spec, params, classes, dist, criterion=criterion,
                          reference_classes=reference_classes, target=target, branch=branch,
                          averager=av)
    c.trusted(r.epsilon, r.error, "ε")
    d = dist.describe()
    from ..validity import note, quantity_of

    verdict = note(quantity_of("epsilon", spec.name, criterion=r.criterion,
                               reference_classes=r.reference_classes))
    if json_:
        c.emit_json("epsilon", {
            "loss": spec.name, "params": params, "preset": c.preset_record(spec, preset),
            "classes": r.classes,
            "criterion": r.criterion, "reference_classes": r.reference_classes,
            "target": r.target, "branch": r.branch, "distribution": d,
            "epsilon": r.epsilon, "error": r.error,
            "delta_before": r.delta_before, "delta_after": r.delta_after,
            "peak_z": r.peak_z, "peak_delta": r.peak_delta, "other_root": r.other_root,
            "method": r.method, "note": r.note or None,
            "monte_carlo": None if r.method == "exact" else {"samples": av.samples_at(r.classes),
                                                             "seed": seed},
            "validation": verdict.record(),
        })
        return
    if r.criterion == "match":
        crit = (f"match: <δ_k>_K(μ+ε) = <δ_k>_{r.reference_classes}(μ) = {c.fmt(r.target)}, "
                f"root {r.branch} the peak")
    elif r.criterion == "target":
        crit = f"target: <δ_k>_K(μ+ε) = {c.fmt(r.target)}, root {r.branch} the peak"
    else:
        crit = "peak: the extremum of <δ_k>(z) at the logit mean"
    rows = [
        ("loss", f"{spec.name} ({c.describe_params(params)})"),
        ("classes", f"K = {r.classes}"),
        ("criterion", crit),
        ("logits", c.describe_dist(d)),
        ("ε", f"{r.epsilon:.6f}  (± {r.error:.1g}, {r.method})"),
        ("<δ_k>(μ)", f"{c.fmt(r.delta_before)} without bias, {c.fmt(r.delta_after)} with ε"),
    ]
    if r.peak_z is not None:
        rows.append(("peak", f"<δ_k> = {c.fmt(r.peak_delta)} at z = μ + {r.peak_z - dist.mean:.4f}"))
    if r.other_root is not None:
        rows.append(("other root", f"ε = {r.other_root:.6f} ({'above' if r.branch == 'below' else 'below'} the peak)"))
    if r.note:
        rows.append(("note", r.note))
    rows.append(("in training", verdict.line))
    c.print_rows(f"logit bias ε for {spec.name} at K = {r.classes}", rows)
