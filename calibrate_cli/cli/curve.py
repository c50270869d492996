"""``calibrate curve``: <δ_k>(z) on a grid, for one or several losses and class counts."""

from __future__ import annotations

import math
from typing import Annotated, Optional

import numpy as np
import typer

from ..engine.average import Z_LIMIT, check_classes
from ..engine.solve import CRITERIA, check_k, solve_epsilon
from . import common as c
from .params import INT

HELP = """The average backpropagation error <δ_k>(z) of the correct class against its logit z.

<δ_k>(z) averages δ_k = ∂L/∂z_k over the other K - 1 logits drawn from the initial logit distribution. With --epsilon the curve is the one training sees: <δ_k>(z + ε). Several losses and class counts: repeat --loss, or separate values with commas.

[bold]Examples[/]

  calibrate curve --loss mae --classes 1000 --epsilon auto --csv

  calibrate curve --loss nce-agce --preset cifar100 --classes 1000 --json

  calibrate curve --loss mae,gce,ce --classes 10,1000 --points 21
"""


def register(app: typer.Typer) -> None:
    app.command("curve", help=HELP)(curve)


def _parse_epsilon(text: str) -> float | str:
    t = text.strip().lower()
    if t in ("auto", "none"):
        return t
    try:
        v = float(t)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise c.UsageError(f"--epsilon must be 'auto', 'none' or a finite number, got '{text}'")
    return v


def curve(
    loss: Annotated[list[str], typer.Option(
        "--loss", "-l", rich_help_panel=c.LOSS_PANEL,
        help="Loss name(s); repeat or separate with commas.")] = ["mae"],
    classes: Annotated[list[str], typer.Option(
        "--classes", "-k", help="Class count(s) K; repeat or separate with commas.")] = ["10"],
    preset: c.Preset = None,
    set_: c.Set = None,
    epsilon: Annotated[str, typer.Option(
        "--epsilon", help="Logit bias: none (default), auto (solved per loss and K with "
                          "--criterion) or a number.")] = "none",
    criterion: Annotated[Optional[str], typer.Option(
        "--criterion", show_default=False,
        help=f"Criterion of --epsilon auto: {', '.join(CRITERIA[:2])} (default match).")] = None,
    reference_classes: Annotated[Optional[int], typer.Option(
        "--reference-classes", show_default=False, click_type=INT,
        help="K_ref of the match criterion of --epsilon auto (default 10).")] = None,
    z_min: Annotated[Optional[float], typer.Option(
        "--z-min", help="Grid start (default: logit mean - 3).")] = None,
    z_max: Annotated[Optional[float], typer.Option(
        "--z-max", help="Grid end (default: logit mean + ln(K_max - 1) + 6, or further for a "
                        "wide logit distribution, so that the peak is shown).")] = None,
    points: Annotated[int, typer.Option("--points", click_type=INT,
                                        help="Grid points (2 to 100000).")] = 41,
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
    csv_: c.Csv = False,
) -> None:
    if json_ and csv_:
        raise c.UsageError("give either --json or --csv, not both")
    if not 2 <= points <= 100_000:
        raise c.UsageError(f"--points must be in [2, 100000], got {points}")
    eps_opt = _parse_epsilon(epsilon)
    if eps_opt != "auto":
        given = [o for o, v in (("--criterion", criterion), ("--reference-classes", reference_classes))
                 if v is not None]
        if given:
            raise c.UsageError(f"{' and '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} "
                               "to --epsilon auto")
    criterion = criterion or "match"
    if criterion not in ("match", "peak"):
        raise c.UsageError(f"--criterion of --epsilon auto must be match or peak, got '{criterion}'")
    if reference_classes is not None and criterion != "match":
        raise c.UsageError("--reference-classes is only used with --criterion match")
    reference_classes = 10 if reference_classes is None else check_k(reference_classes,
                                                                      "--reference-classes")
    names = [n.strip() for item in loss for n in item.split(",") if n.strip()]
    if not names:
        raise c.UsageError("--loss needs at least one loss name")
    ks = [check_classes(k) for item in classes for k in c.parse_int_list(item, "--classes")]
    losses = [c.make_loss(n, preset, set_) for n in names]
    dist = c.make_distribution(logit_mean=logit_mean, logit_std=logit_std, logits=logits,
                               atoms=atoms, from_model=from_model, input_shape=input_shape,
                               classes=max(ks), quiet=json_ or csv_)
    av = c.make_averager(dist, samples, seed, *(spec for spec, _ in losses), device=device)
    mu = dist.mean
    lo = mu - 3.0 if z_min is None else z_min
    if z_max is None:  # past the peak: ln S reaches beyond ln(K - 1) when the logits are wide
        hi = max(mu + math.log(max(ks) - 1) + 6.0,
                 mu + max(av.log_sum_range(k, alpha=1e-3)[1] for k in ks) + 3.0)
    else:
        hi = z_max
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise c.UsageError(f"need finite --z-min < --z-max, got {lo:g} and {hi:g}")
    for name, v in (("--z-min", lo), ("--z-max", hi)):
        if abs(v - mu) > Z_LIMIT:
            raise c.UsageError(f"{name} must lie within ±{Z_LIMIT:g} of the logit mean {mu:g} "
                               f"(beyond, p = σ_k or 1 - p underflows in float64), got {v:g}")
    if isinstance(eps_opt, float) and max(abs(lo + eps_opt - mu), abs(hi + eps_opt - mu)) > Z_LIMIT:
        raise c.UsageError(f"--epsilon {eps_opt:g} moves the grid [{lo:g}, {hi:g}] beyond "
                           f"±{Z_LIMIT:g} of the logit mean {mu:g}, where p = σ_k or 1 - p "
                           "underflows in float64; give a smaller --epsilon")
    z = np.linspace(lo, hi, points)

    from ..engine.cost import epsilon_evaluations

    def evaluations() -> dict[int, int]:  # per loss: the grid, μ and μ + ε, and the solve
        evals: dict[int, int] = {}
        for k in ks:
            evals[k] = evals.get(k, 0) + points + 2
            if eps_opt == "auto":
                for kk, n in epsilon_evaluations(av, k, criterion, reference_classes).items():
                    evals[kk] = evals.get(kk, 0) + n
        return evals

    work = [(spec, params, evaluations) for spec, params in losses]
    curves = []
    with c.monte_carlo_work(av, work):
        for spec, params in losses:
            for k in ks:
                if eps_opt == "auto":
                    eps = solve_epsilon(spec, params, k, dist, criterion=criterion,
                                        reference_classes=reference_classes, averager=av).epsilon
                else:
                    eps = 0.0 if eps_opt == "none" else float(eps_opt)
                a = av.mean_delta(spec, params, k, z + eps)
                bad = ~np.isfinite(a.error)
                if bad.any():
                    c.trusted(float(a.value[bad][0]), math.inf, f"<δ_k> of {spec.name} at K = {k}")
                at_mu = av.mean_delta(spec, params, k, np.array([mu, mu + eps]))
                curves.append({
                    "loss": spec.name, "params": params, "preset": c.preset_record(spec, preset),
                    "classes": k, "epsilon": eps,
                    "delta_before": float(at_mu.value[0]), "delta_after": float(at_mu.value[1]),
                    "method": a.method, "note": a.note or None, "delta": a.value, "error": a.error,
                })
                if a.note and not json_:  # (JSON carries it as "note")
                    c.say(f"note: {a.note}")

    labels = [f"{cv['loss']} K={cv['classes']}" + (f" eps={cv['epsilon']:.4g}" if cv["epsilon"]
                                                   else "") for cv in curves]
    if json_:
        c.emit_json("curve", {
            "z": z, "delta": [cv["delta"] for cv in curves],
            "error": [cv["error"] for cv in curves],
            "curves": [{k: v for k, v in cv.items() if k not in ("delta", "error")}
                       for cv in curves],
            "epsilon_mode": eps_opt if isinstance(eps_opt, str) else "value",
            "criterion": criterion if eps_opt == "auto" else None,
            "reference_classes": reference_classes if eps_opt == "auto" else None,
            "distribution": dist.describe(),
            "monte_carlo": {"samples": av.samples, "seed": seed}
            if any(cv["method"] != "exact" for cv in curves) else None,
        })
        return
    if csv_:
        header = ["z"] + [f"delta[{lab}]" for lab in labels]
        rows = [[float(z[i])] + [float(cv["delta"][i]) for cv in curves] for i in range(points)]
        c.emit_csv(header, rows)
        return
    width = max(12, *(len(lab) for lab in labels))
    out = [f"<δ_k>(z{' + ε' if eps_opt != 'none' else ''}) with logits {c.describe_dist(dist.describe())}",
           f"{'z':>9}  " + "  ".join(f"{lab:>{width}}" for lab in labels)]
    for i in range(points):
        out.append(f"{z[i]:9.4f}  " + "  ".join(f"{cv['delta'][i]:>{width}.6g}" for cv in curves))
    typer.echo("\n".join(out))
