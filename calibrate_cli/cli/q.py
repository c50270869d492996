"""``calibrate q``: GCE's q (or another loss's q) for a new number of classes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..losses import parse_assignments
from . import common as c
from .transfer import At, KFrom, KTo, run_transfer

HELP = """GCE's q at --to classes from its value --q-from at --from classes.

q at K_to makes <δ_k> at the logit mean (or --at Z) what it was at K_from with q = --q-from: the paper's recalibration of GCE (q = 0.7 works on CIFAR-100). Also for the q of agce, aul and nce-agce (--loss). Same as 'calibrate transfer --param q'.

In training, GCE's q carried this way from the best q of a sweep at K_from was off the optimum with SGD in every MLP1024 cell of the validity map (on cnn8, where every q of the sweep did about as well, it held); with AdamW it held from K = 100 to 1000, not from K = 10 (the 'in training' line says where; docs/validation.md). With SGD, sweep q at your K instead.

[bold]Examples[/]

  calibrate q --loss gce --from 100 --to 1000

  calibrate q --from 100 --to 1000 --q-from 0.5 --logit-std 0.3 --json
"""


def register(app: typer.Typer) -> None:
    app.command("q", help=HELP)(q)


def q(
    k_from: KFrom,
    k_to: KTo,
    loss: c.Loss = "gce",
    q_from: Annotated[Optional[float], typer.Option(
        "--q-from", show_default=False, rich_help_panel=c.LOSS_PANEL,
        help="q at --from classes (> 0; default: the q of --preset or --set q=..., else the "
             "loss's default, 0.7 for GCE).")] = None,
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
    if q_from is not None:
        if not q_from > 0:
            raise c.UsageError(f"--q-from must be > 0, got {q_from:g}")
        if "q" in parse_assignments(set_):
            raise c.UsageError("give q at --from once: --q-from or --set q=..., not both")
    run_transfer("q", loss=loss, preset=preset, set_=set_, param="q", k_from=k_from, k_to=k_to,
                 at=at, logit_mean=logit_mean, logit_std=logit_std, logits=logits, atoms=atoms,
                 from_model=from_model, input_shape=input_shape, samples=samples, seed=seed,
                 json_=json_, extra_params=None if q_from is None else {"q": q_from},
                 device=device)
