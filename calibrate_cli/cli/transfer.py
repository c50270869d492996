"""``calibrate transfer``: carry one loss parameter from K_from classes to K_to classes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..engine.solve import TransferResult, check_k, solve_transfer
from . import common as c
from .params import INT

HELP = """Recalibrate one parameter of a loss for a new number of classes.

Finds θ at --to classes such that <δ_k> at the logit mean (or --at Z) equals its value at --from classes with the parameter's current value (from --preset / --set / the default). The other parameters stay fixed. The 'in training' line says whether the validity map measured the carried value in training (docs/validation.md).

[bold]Examples[/]

  calibrate transfer --loss nce-agce --param alpha --from 100 --to 1000 --preset cifar100

  calibrate transfer --loss nce-agce --param q --from 100 --to 1000 --preset cifar100 --json

  calibrate transfer --loss agce --param a --from 10 --to 100 --set q=2
"""

KFrom = Annotated[int, typer.Option("--from", click_type=INT,
                                    help="K where the parameter value is known to work.")]
KTo = Annotated[int, typer.Option("--to", click_type=INT, help="K to recalibrate for.")]
At = Annotated[Optional[float], typer.Option(
    "--at", metavar="Z", help="Match <δ_k> at this logit value instead of the logit mean.")]


def register(app: typer.Typer) -> None:
    app.command("transfer", help=HELP)(transfer)


def run_transfer(command: str, *, loss: str, preset, set_, param: str, k_from: int, k_to: int,
                 at, logit_mean, logit_std, logits, atoms, from_model, input_shape, samples,
                 seed, json_, extra_params: dict | None = None, device: str = "cpu") -> TransferResult:
    """Shared by ``transfer`` and ``q``: parse, solve, print."""
    k_from = check_k(k_from, "--from")
    k_to = check_k(k_to, "--to")
    if k_from == k_to:
        raise c.UsageError(f"--from and --to are both {k_from}; give two different class counts")
    spec, params = c.make_loss(loss, preset, list(set_ or []) +
                               [f"{k}={v!r}" for k, v in (extra_params or {}).items()])
    spec.param(param)  # unknown parameter: one clear line
    dist = c.make_distribution(logit_mean=logit_mean, logit_std=logit_std, logits=logits,
                               atoms=atoms, from_model=from_model, input_shape=input_shape,
                               classes=k_to, quiet=json_)
    av = c.make_averager(dist, samples, seed, spec, device=device)
    from ..engine.cost import transfer_evaluations

    with c.monte_carlo_work(av, [(spec, params, lambda: transfer_evaluations(
            spec, params, param, k_from, k_to))]):
        r = solve_transfer(spec, params, param, k_from, k_to, dist, at=at, averager=av)
    c.trusted(r.value, r.error, r.param)
    d = dist.describe()
    from ..validity import note, quantity_of

    verdict = note(quantity_of("transfer", spec.name, param=r.param, reference_classes=r.k_from),
                   reference_classes=r.k_from)
    if json_:
        payload = {}
        if command == "q":
            payload["q"] = r.value
        payload.update({
            "loss": spec.name, "preset": c.preset_record(spec, preset),
            "param": r.param, "value": r.value, "error": r.error,
            "value_from": r.value_from, "from": r.k_from, "to": r.k_to,
            "params_from": params, "params_to": {**params, r.param: r.value},
            "criterion": "match", "at": r.at, "distribution": d, "target": r.target,
            "delta_before": r.delta_before, "delta_after": r.delta_after,
            "other_roots": r.other_roots, "method": r.method, "note": r.note or None,
            "monte_carlo": None if r.method == "exact" else {"samples": av.samples_at(r.k_to),
                                                             "seed": seed},
            "validation": verdict.record(),
        })
        c.emit_json(command, payload)
        return r
    where = "the logit mean" if at is None else f"z = {r.at:g}"
    rows = [
        ("loss", f"{spec.name} ({c.describe_params(params)})"),
        ("criterion", f"<δ_k> at {where}: K = {r.k_to} with {r.param} equals K = {r.k_from} "
                      f"with {r.param} = {r.value_from:g}, i.e. {c.fmt(r.target)}"),
        ("logits", c.describe_dist(d)),
        (r.param, f"{r.value:.6g}  (± {r.error:.1g}, {r.method}; was {r.value_from:g} at "
                  f"K = {r.k_from})"),
        ("<δ_k>", f"{c.fmt(r.delta_before)} at K = {r.k_to} with {r.param} = {r.value_from:g}, "
                  f"{c.fmt(r.delta_after)} with {r.param} = {r.value:.6g}"),
    ]
    if r.other_roots:
        rows.append(("other roots", ", ".join(f"{x:.6g}" for x in r.other_roots)))
    if r.note:
        rows.append(("note", r.note))
    rows.append(("in training", verdict.line))
    c.print_rows(f"{spec.name}: {r.param} from K = {r.k_from} to K = {r.k_to}", rows)
    return r


def transfer(
    loss: Annotated[str, typer.Option("--loss", "-l", help="Loss name or alias.",
                                      rich_help_panel=c.LOSS_PANEL)],
    param: Annotated[str, typer.Option("--param", "-p", help="The parameter to recalibrate.",
                                       rich_help_panel=c.LOSS_PANEL)],
    k_from: KFrom,
    k_to: KTo,
    preset: c.Preset = None,
    set_: c.Set = None,
    at: At = None,
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
    run_transfer("transfer", loss=loss, preset=preset, set_=set_, param=param, k_from=k_from,
                 k_to=k_to, at=at, logit_mean=logit_mean, logit_std=logit_std, logits=logits,
                 atoms=atoms, from_model=from_model, input_shape=input_shape, samples=samples,
                 seed=seed, json_=json_, device=device)
