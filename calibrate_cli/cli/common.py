"""Options and output shared by the calibration commands (epsilon, q, transfer, curve).

One definition per option, so every command spells, documents and checks it
the same way. Nothing here imports torch; ``--from-model`` imports it when used.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import sys
from typing import Annotated, Any, Optional

import typer

from .._version import __version__
from ..engine.average import (DEFAULT_SAMPLES, DEFAULT_SAMPLES_FULL, DRAW_BUDGET, MIN_SAMPLES,
                              Averager, default_samples)
from ..errors import NoSolutionError, UsageError
from ..engine.logits import (DEFAULT_ATOMS, DEFAULT_LOGIT_STD, MAX_STD, Gaussian, LogitDistribution,
                      load_logits)
from ..losses import get_loss, parse_assignments, resolve_params
from .params import INT, parse_int

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
LogitMean = Annotated[Optional[float], typer.Option(
    "--logit-mean", rich_help_panel=DIST_PANEL, show_default=False,
    help="Mean μ of the Gaussian logit distribution (default 0). ε and <δ_k> do not depend on "
         "it (softmax is shift invariant); z values are reported in its frame.")]
LogitStd = Annotated[Optional[float], typer.Option(
    "--logit-std", rich_help_panel=DIST_PANEL, show_default=False,
    help=f"Std of the Gaussian logit distribution, in (0, {MAX_STD:g}] (default "
         f"{DEFAULT_LOGIT_STD:g}, measured on common networks, see README).")]
Logits = Annotated[Optional[str], typer.Option(
    "--logits", rich_help_panel=DIST_PANEL, metavar="FILE",
    help="Measured logits (.npy, .npz array 'logits', .pt; shape [N, K] or flat): use their "
         "empirical distribution instead of the Gaussian.")]
Atoms = Annotated[Optional[int], typer.Option(
    "--atoms", rich_help_panel=DIST_PANEL, show_default=False, click_type=INT,
    help=f"Equal-mass atoms the exact engine uses for --logits / --from-model (default "
         f"{DEFAULT_ATOMS}; 0: every value, slower but in bounded memory).")]
FromModel = Annotated[Optional[str], typer.Option(
    "--from-model", rich_help_panel=DIST_PANEL, metavar="MODEL",
    help="Measure the logits of MODEL (mlp1024, cnn8, resnet18/34/50) at its default "
         "initialisation on Gaussian inputs of --input-shape, then calibrate with them "
         "(needs torch).")]
InputShape = Annotated[Optional[str], typer.Option(
    "--input-shape", rich_help_panel=DIST_PANEL, metavar="C,H,W", show_default=False,
    help="Input shape for --from-model (default 3,32,32).")]

# --------------------------------------------------------------- numerics
Samples = Annotated[Optional[int], typer.Option(
    "--samples", rich_help_panel=NUM_PANEL, show_default=False, click_type=INT,
    help="Monte Carlo logit vectors per K, for losses whose δ_k depends on more than σ_k. "
         f"Default {DEFAULT_SAMPLES} for the built-in ones (NCE, NFL, biTemp, RCE's clamp and "
         f"their combinations, which reduce each draw to a few numbers), fewer above "
         f"K ≈ {DRAW_BUDGET // DEFAULT_SAMPLES} (at most 2^{DRAW_BUDGET.bit_length() - 1} "
         f"logits per K, at least {MIN_SAMPLES} vectors); {DEFAULT_SAMPLES_FULL} for your own "
         "losses, which need whole vectors at every evaluation. A value given here is used "
         "at every K.")]
Seed = Annotated[int, typer.Option(
    "--seed", rich_help_panel=NUM_PANEL, click_type=INT,
    help="Seed of the Monte Carlo draws (an integer >= 0).")]
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


def not_empty(value: str | None, option: str) -> str | None:
    """An option's text, or None when not given; an empty text is refused, not taken for "not
    given" (``--logits "$FILE"`` with FILE unset must not silently fall back to the Gaussian)."""
    if value is not None and not str(value).strip():
        raise UsageError(f"{option} needs a value, got an empty one")
    return value


def make_loss(loss: str, preset: str | None, assignments: list[str] | None):
    """(LossSpec, params) from --loss, --preset and --set."""
    not_empty(preset, "--preset")
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


def make_distribution(*, logit_mean: float | None, logit_std: float | None, logits: str | None,
                      atoms: int | None, from_model: str | None = None,
                      input_shape: str | None = None, classes: int = 10,
                      quiet: bool = False) -> LogitDistribution:
    """The logit distribution chosen by the options (at most one source).

    None means "not given": an option that does not apply to the chosen source (--logit-std
    with --logits, --atoms with the Gaussian, --input-shape without --from-model) is a usage
    error rather than silently ignored.
    """
    for value, name in ((logits, "--logits"), (from_model, "--from-model"),
                        (input_shape, "--input-shape")):
        not_empty(value, name)
    if logits and from_model:
        raise UsageError("give either --logits FILE or --from-model MODEL, not both")
    measured = "--logits" if logits else ("--from-model" if from_model else None)
    if measured:
        given = [o for o, v in (("--logit-std", logit_std), ("--logit-mean", logit_mean)) if v is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} describe{'' if len(given) > 1 else 's'} the "
                             "Gaussian logit distribution; "
                             f"with {measured} the measured logits are used instead, so drop "
                             f"{' and '.join(given)}")
    elif atoms is not None:
        raise UsageError("--atoms applies to measured logits (--logits or --from-model) only")
    if input_shape is not None and not from_model:
        raise UsageError("--input-shape applies to --from-model only")
    atoms = DEFAULT_ATOMS if atoms is None else atoms
    if atoms < 0:
        raise UsageError(f"--atoms must be >= 0, got {atoms}")
    if logits:
        return load_logits(logits, atoms=atoms)
    if from_model:
        from ..engine.logits import from_array
        from ..measure import measure_logits

        from ..utils.progress import slow_step

        input_shape = input_shape or DEFAULTS["input_shape"]
        shape = parse_shape(input_shape)
        with slow_step(f"measuring {from_model} at initialisation"):
            m = measure_logits(from_model, classes, input_shape=shape)
        if not quiet:
            say(f"measured {from_model} at initialisation (K = {classes}, inputs {shape}, "
                f"{m.meta['threads']} thread{'s' if m.meta['threads'] != 1 else ''}): logit std {m.stats['std']:.4f} over "
                f"{m.logits.shape[0]} inputs")
        return from_array(m.logits, source=f"{from_model} at init, input {input_shape}",
                          atoms=atoms)
    return Gaussian(DEFAULTS["logit_mean"] if logit_mean is None else logit_mean,
                    DEFAULT_LOGIT_STD if logit_std is None else logit_std)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(parse_int(s) for s in text.split(","))
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
    not_empty(device, "--device")
    budget = DRAW_BUDGET if samples is None else None
    if samples is None:
        samples = default_samples(*specs)
    if samples < 16:
        raise UsageError(f"--samples must be >= 16, got {samples}")
    check_seed(seed)
    torch_device = None
    if device != "cpu":
        from ..engine.mc_device import check_device_name, parse_device

        check_device_name(device)
        if not all(s.sigma_only for s in specs):  # exact losses draw nothing
            torch_device = parse_device(device)
    return Averager(dist, samples=samples, seed=seed, draw_budget=budget, device=torch_device)


def check_seed(seed: int) -> int:
    """The Monte Carlo seed: an integer >= 0 (numpy's generators take no negative seed)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be an integer >= 0, got {seed}")
    return seed


#: Monte Carlo work estimated above this many seconds is announced (a line on stderr when it
#: is not a terminal; on a terminal the progress line shows the estimate from the start).
LONG_WORK = 60.0


@contextlib.contextmanager
def monte_carlo_work(av: Averager, work) -> Any:
    """Around a command's computation: estimate its Monte Carlo work up front
    (:func:`calibrate_cli.engine.cost.monte_carlo_cost`; ``work`` lists (loss spec, params,
    {K: evaluations})) and show it. Over :data:`LONG_WORK` seconds: on a terminal a progress
    line with the estimate and the part done at once, else one line on stderr saying the
    estimate; shorter work shows the progress line after 2 s on a terminal only."""
    from ..engine.cost import monte_carlo_cost

    cost = monte_carlo_cost(av, work)
    if cost is None:
        yield None
        return
    from ..utils.progress import _seconds, interactive, slow_step

    long = cost.seconds > LONG_WORK
    if long and not interactive():
        say(f"note: {cost.describe()}: about {_seconds(cost.seconds)} on this machine "
            "(timed on one chunk); a smaller --samples is proportionally faster")
    drawn = [0]

    def count(n):
        drawn[0] += n

    av.on_draws = count
    try:
        with slow_step(cost.describe(), after=0.0 if long else 2.0, estimate=cost.seconds,
                       fraction=lambda: drawn[0] / max(cost.draws, 1)):
            yield cost
    finally:
        av.on_draws = None


def parse_int_list(text: str, option: str) -> list[int]:
    """Integers separated by commas, each written as the single-valued integer options take
    them (:data:`~calibrate_cli.cli.params.INT`: '1e3' and '1000.0' are 1000, '2.5' is
    refused)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = parse_int(part)
        except ValueError:
            raise UsageError(f"{option} expects integers separated by commas (like 10,100,1000 "
                             f"or 1e3), got '{part}'") from None
        out.append(v)
    if not out:
        raise UsageError(f"{option} needs at least one value")
    return out


# ----------------------------------------------------------------- output
def say(text: str) -> None:
    """A message for the user: stderr, so stdout stays parseable."""
    typer.echo(text, err=True)


def emit_json(command: str, payload: dict) -> None:
    """One strict JSON object on stdout (:mod:`calibrate_cli.utils.strict_json`)."""
    from ..utils.strict_json import dumps

    obj = {"tool": "calibrate", "version": __version__, "command": command}
    obj.update(payload)
    sys.stdout.write(dumps(obj, indent=2) + "\n")


def trusted(value: float, error: float, what: str) -> None:
    """A result whose error estimate is not finite is no result (exit 1), not "± inf"."""
    if not math.isfinite(error):
        raise NoSolutionError(
            f"{what} = {value:.6g} was found, but its error estimate is not finite (<δ_k> is "
            "flat at the root, or its Monte Carlo standard error overflows), so the value is "
            "not determined; try other parameters, fewer classes or more --samples")


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
