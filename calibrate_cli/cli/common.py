"""Options and output shared by the calibration commands (epsilon, q, transfer, curve).

One definition per option, so every command spells, documents and checks it
the same way. Nothing here imports torch; ``--from-model`` imports it when used.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from typing import Annotated, Any, Optional

import typer

from .._version import __version__
from ..average import DEFAULT_SAMPLES, DEFAULT_SAMPLES_FULL, DRAW_BUDGET, Averager, default_samples
from ..errors import UsageError
from ..logits import DEFAULT_ATOMS, DEFAULT_LOGIT_STD, Gaussian, LogitDistribution, load_logits
from ..losses import get_loss, parse_assignments, resolve_params

LOSS_PANEL = "Loss"
DIST_PANEL = "Logit distribution at initialisation"
NUM_PANEL = "Numerics"
OUT_PANEL = "Output"

# ------------------------------------------------------------------ loss
Loss = Annotated[str, typer.Option(
    "--loss", "-l", rich_help_panel=LOSS_PANEL,
    help="Loss name or alias (see 'calibrate losses'), or package.module:function for your "
         "own torch loss.")]
Preset = Annotated[Optional[str], typer.Option(
    "--preset", rich_help_panel=LOSS_PANEL,
    help="Literature hyperparameters of the loss for a dataset (e.g. cifar10, cifar100).")]
Set = Annotated[Optional[list[str]], typer.Option(
    "--set", rich_help_panel=LOSS_PANEL, metavar="NAME=VALUE",
    help="Set one loss parameter (repeatable); applied after --preset.")]

# ---------------------------------------------------------- distribution
LogitMean = Annotated[float, typer.Option(
    "--logit-mean", rich_help_panel=DIST_PANEL,
    help="Mean μ of the Gaussian logit distribution. ε and <δ_k> do not depend on it "
         "(softmax is shift invariant); z values are reported in its frame.")]
LogitStd = Annotated[float, typer.Option(
    "--logit-std", rich_help_panel=DIST_PANEL,
    help="Std of the Gaussian logit distribution (default measured on common networks, "
         "see README).")]
Logits = Annotated[Optional[str], typer.Option(
    "--logits", rich_help_panel=DIST_PANEL, metavar="FILE",
    help="Measured logits (.npy, .npz key 'logits', .pt; shape [N, K] or flat): use their "
         "empirical distribution instead of the Gaussian.")]
Atoms = Annotated[int, typer.Option(
    "--atoms", rich_help_panel=DIST_PANEL,
    help="Equal-mass atoms the exact engine uses for --logits (0: every value).")]
FromModel = Annotated[Optional[str], typer.Option(
    "--from-model", rich_help_panel=DIST_PANEL, metavar="MODEL",
    help="Measure the logits of MODEL (mlp1024, cnn8, resnet18/34/50) at its default "
         "initialisation on Gaussian inputs of --input-shape, then calibrate with them "
         "(needs torch).")]
InputShape = Annotated[str, typer.Option(
    "--input-shape", rich_help_panel=DIST_PANEL, metavar="C,H,W",
    help="Input shape for --from-model.")]

# --------------------------------------------------------------- numerics
Samples = Annotated[Optional[int], typer.Option(
    "--samples", rich_help_panel=NUM_PANEL, show_default=False,
    help="Monte Carlo logit vectors, for losses whose δ_k depends on more than σ_k "
         f"(default {DEFAULT_SAMPLES} for NCE and its combinations, {DEFAULT_SAMPLES_FULL} "
         "for NFL, biTemp and your own losses, whose cost grows with K).")]
Seed = Annotated[int, typer.Option(
    "--seed", rich_help_panel=NUM_PANEL, help="Seed of the Monte Carlo draws.")]
Device = Annotated[str, typer.Option(
    "--device", rich_help_panel=NUM_PANEL,
    help="Where the Monte Carlo draws are made and reduced: cpu (NumPy), cuda, cuda:N "
         "(torch on that GPU), torch-cpu, or auto (cuda if torch sees one, else cpu). "
         "Other devices draw other (equally valid) samples.")]

# ----------------------------------------------------------------- output
Json = Annotated[bool, typer.Option(
    "--json", rich_help_panel=OUT_PANEL,
    help="Print exactly one JSON object on stdout and nothing else.")]
Csv = Annotated[bool, typer.Option(
    "--csv", rich_help_panel=OUT_PANEL, help="Print CSV on stdout.")]

DEFAULTS = dict(logit_mean=0.0, logit_std=DEFAULT_LOGIT_STD, atoms=DEFAULT_ATOMS,
                samples=None, seed=0, input_shape="3,32,32", device="cpu")


def make_loss(loss: str, preset: str | None, assignments: list[str] | None):
    """(LossSpec, params) from --loss, --preset and --set."""
    spec = get_loss(loss)
    params = resolve_params(spec, preset, parse_assignments(assignments))
    return spec, params


def preset_record(spec, preset: str | None) -> dict | None:
    """The preset behind the parameters, with its source, for --json (None without --preset)."""
    if not preset:
        return None
    from ..losses.registry import get_preset

    p = get_preset(spec, preset)
    return {"dataset": p.dataset, "classes": p.classes, "values": dict(p.values), "source": p.source}


def make_distribution(*, logit_mean: float, logit_std: float, logits: str | None, atoms: int,
                      from_model: str | None = None, input_shape: str = "3,32,32",
                      classes: int = 10, quiet: bool = False) -> LogitDistribution:
    """The logit distribution chosen by the options (at most one source)."""
    if logits and from_model:
        raise UsageError("give either --logits FILE or --from-model MODEL, not both")
    if atoms < 0:
        raise UsageError(f"--atoms must be >= 0, got {atoms}")
    if logits:
        return load_logits(logits, atoms=atoms)
    if from_model:
        from ..logits import from_array
        from ..measure import measure_logits

        shape = parse_shape(input_shape)
        m = measure_logits(from_model, classes, input_shape=shape)
        if not quiet:
            say(f"measured {from_model} at initialisation (K = {classes}, inputs {shape}): "
                f"logit std {m.stats['std']:.4f} over {m.logits.shape[0]} inputs")
        return from_array(m.logits, source=f"{from_model} at init, input {input_shape}",
                          atoms=atoms)
    return Gaussian(logit_mean, logit_std)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise UsageError(f"--input-shape must be positive integers like 3,32,32, got '{text}'")
    return shape


def make_averager(dist: LogitDistribution, samples: int | None, seed: int, *specs,
                  device: str = "cpu") -> Averager:
    """The Averager of the options; ``samples`` None: the default for the losses ``specs``,
    within the default draw budget per K (fewer vectors at very large K). ``device`` other
    than cpu imports torch (only Monte Carlo losses use it)."""
    budget = DRAW_BUDGET if samples is None else None
    if samples is None:
        samples = default_samples(*specs)
    if samples < 16:
        raise UsageError(f"--samples must be >= 16, got {samples}")
    torch_device = None
    if device != "cpu":
        from ..mc_device import check_device_name, parse_device

        check_device_name(device)
        if not all(s.sigma_only for s in specs):  # exact losses draw nothing
            torch_device = parse_device(device)
    return Averager(dist, samples=samples, seed=seed, draw_budget=budget, device=torch_device)


def parse_int_list(text: str, option: str) -> list[int]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise UsageError(f"{option} expects integers separated by commas, got '{part}'") from None
        if not v.is_integer():
            raise UsageError(f"{option} must be an integer >= 2, got {part}")
        out.append(int(v))
    if not out:
        raise UsageError(f"{option} needs at least one value")
    return out


# ----------------------------------------------------------------- output
def say(text: str) -> None:
    """A message for the user: stderr, so stdout stays parseable."""
    typer.echo(text, err=True)


def _clean(x: Any) -> Any:
    """JSON-safe values: numpy scalars to floats, non-finite floats to null."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "tolist"):
        return _clean(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def emit_json(command: str, payload: dict) -> None:
    obj = {"tool": "calibrate", "version": __version__, "command": command}
    obj.update(payload)
    sys.stdout.write(json.dumps(_clean(obj), indent=2, ensure_ascii=False) + "\n")


def emit_csv(header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.12g}" if isinstance(v, float) else v for v in r])
    sys.stdout.write(buf.getvalue())


def describe_params(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items()) or "no parameters"


def describe_dist(d: dict) -> str:
    if d.get("kind") == "gaussian":
        return f"Gaussian, mean {d['mean']:g}, std {d['std']:g}"
    return (f"empirical, {d['n']} values from {d['source']} (centred per {d['centering']}, "
            f"std {d['std']:.4g}, {d['atoms']} atoms)")


def fmt(x: float | None, digits: int = 6) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """A title and aligned ``key  value`` lines on stdout (plain text: rich costs start-up)."""
    width = max(len(k) for k, _ in rows)
    lines = [title] + [f"  {k:<{width}}  {v}" for k, v in rows]
    sys.stdout.write("\n".join(lines) + "\n")
