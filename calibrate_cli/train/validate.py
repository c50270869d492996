r"""``calibrate validate``: a grid of losses × noise levels × seeds, and its table.

Labels in ``--losses`` (comma separated):

``NAME``
    the loss with its defaults (``--preset``/``--set`` of the grid apply when the
    loss has the parameters);
``NAME*``
    the loss with ``--logit-bias auto`` (``mae*`` is the paper's MAE*), criterion
    ``match``, root below the peak; ``NAME*peak`` with criterion ``peak``;
    ``NAME*above`` with ``match``'s other root, above the peak;
``NAME@eps=V``
    the loss with the fixed logit bias ε = V (``--logit-bias V``);
``NAME@calibrated``
    the loss with its q recalibrated from K = 100 at its current value (GCE:
    q = 0.7, the CIFAR-100 value) to the dataset's K (``--calibrate q
    --calibrate-from 100``); ``NAME@calibrated:P:K`` names another parameter P and
    reference class count K; ``NAME@calibrated:P:K:V`` transfers P from the value V
    at K classes (e.g. the best q of a sweep at K = 10: ``gce@calibrated:q:10:0.1``);
``NAME@P=V``
    the loss with parameter P set to V (e.g. ``gce@q=0.5``).

Noise levels (``--noise``, comma separated): a bare rate R means ``symmetric:R``;
any spec of ``calibrate train --noise`` is accepted.

Every run is a ``calibrate train`` run in ``OUT/runs/<label>/<noise>/seed-<s>/``. Two
labels that train the same thing (``mae`` and ``mae@eps=0``; ``gce`` and ``gce@q=0.7``
under ``--preset cifar100``) share one run: the folder of the first one trained, in this
grid or an earlier one with the same ``--out`` (``alias_of`` in ``results.json``).
A run whose ``metrics.json`` says ``complete`` with the planned epochs is
skipped; a run with a checkpoint is resumed. The dataset is loaded once (per
process). Runs go seed by seed (all of seed 0 first), so an interrupted grid
already has a complete first seed. ``jobs`` > 1 trains that many runs at once in
worker processes (:mod:`calibrate_cli.train.parallel`); every run is seeded by its
own settings, so the results equal those of ``jobs = 1`` at the same ``--threads``.

Results (``OUT/results.{json,csv,md}``, ``OUT/accuracy.png``): per label and
noise level, the mean and the sample standard deviation (ddof = 1; 0 for one
seed) over seeds of the last-epoch and of the best-epoch test top-1 accuracy,
of best − last (how much a run lost after its best epoch), and of the
memorisation at the last epoch: among the training samples whose label the noise
changed, the fraction predicted as the noisy label (``memorised``) and as the
true label (``recovered``).
Last-epoch accuracy is the literature's convention (APL, ALFs, ANL); best-epoch
accuracy peeks at the test set and is shown for comparison only.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

from .._version import __version__
from ..utils.atomic import check_folder, clean_temporaries, make_folder
from ..errors import UsageError
from ..utils.lock import lock_folder
from ..utils.numbers import number_text
from .config import TrainConfig, changed_result_fields, resolve_config, slugify
from .provenance import read_metrics, record_invocation, refuse_longer_run, run_key, share_runs
from .report import SUMMARY_FIELDS, _mean, _std, markdown_table, write_results  # noqa: F401

RESULTS_VERSION = 1
#: The largest grid ``validate`` accepts (losses × noise levels × seeds).
MAX_RUNS = 10_000


@dataclass(frozen=True)
class LossVariant:
    """One entry of ``--losses``: a label and the settings it changes."""

    label: str
    loss: str
    logit_bias: str = "0"
    bias_criterion: str = "match"
    bias_branch: str = "below"
    calibrate: str | None = None
    calibrate_from: int | None = None
    params: tuple = ()


def parse_losses(text: str) -> list[LossVariant]:
    """Parse ``ce,mae,mae*,gce,gce@calibrated,gce@q=0.5`` (see the module docstring)."""
    from ..losses import get_loss

    out: list[LossVariant] = []
    for raw in [t.strip() for t in str(text).split(",")]:
        if not raw:
            continue
        label, rest = raw, None
        name = raw
        if "@" in raw:
            name, _, rest = raw.partition("@")
        kw: dict = {"logit_bias": "0"}
        star = re.fullmatch(r"(.+)\*(peak|above|match)?", name)
        if star:
            name, how = star.group(1), star.group(2) or "match"
            kw["logit_bias"] = "auto"
            kw["bias_criterion"] = "peak" if how == "peak" else "match"
            kw["bias_branch"] = "above" if how == "above" else "below"
        spec = get_loss(name)  # UsageError for an unknown loss
        if rest is not None and re.fullmatch(r"(eps|epsilon)=.+", rest):
            if star:
                raise UsageError(f"--losses {raw}: give either * (ε solved) or @eps=V (ε fixed)")
            value = rest.partition("=")[2]
            kw["logit_bias"] = number_text(_number(raw, value))
            rest = None
        if rest is not None:
            m = re.fullmatch(r"calibrated(?::([A-Za-z_]\w*):(\d+)(?::([^:]+))?)?", rest)
            a = re.fullmatch(r"([A-Za-z_]\w*)=(.+)", rest)
            if m:
                param = m.group(1) or "q"
                spec.param(param)
                kw["calibrate"], kw["calibrate_from"] = param, int(m.group(2) or 100)
                if not 2 <= kw["calibrate_from"] <= 10**9:
                    raise UsageError(f"--losses {raw}: the reference K must be an integer in "
                                     "[2, 10^9]")
                if m.group(3) is not None:
                    kw["params"] = ((param, _number(raw, m.group(3))),)
            elif a:
                spec.param(a.group(1))
                kw["params"] = ((a.group(1), _number(raw, a.group(2))),)
            else:
                raise UsageError(f"--losses {raw}: after '@' expected 'calibrated', "
                                 "'calibrated:PARAM:K', 'calibrated:PARAM:K:VALUE', 'eps=VALUE' "
                                 "or 'PARAM=VALUE'")
            if kw.get("params"):
                from ..losses import check_params

                check_params(spec, {**spec.defaults(), **dict(kw["params"])})
        if any(v.label == label for v in out):
            raise UsageError(f"--losses: '{label}' is listed twice")
        out.append(LossVariant(label=label, loss=spec.name, **kw))
    if not out:
        raise UsageError("--losses: give at least one loss (e.g. ce,mae,mae*)")
    return out


def _number(raw: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--losses {raw}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"--losses {raw}: '{text}' is not a finite number")
    return value


def parse_noise_list(text: str) -> list[str]:
    """``0,0.4`` -> ``["none", "symmetric:0.4"]``; other specs pass through (checked)."""
    from .noise import canonical_spec, parse_noise

    out = []
    for raw in [t.strip() for t in str(text).split(",") if t.strip()]:
        kind, arg = parse_noise(raw)
        spec = "none" if kind != "matrix" and (kind == "none" or float(arg) == 0) else \
            canonical_spec(kind, arg)
        if spec in out:
            raise UsageError(f"--noise: '{raw}' is listed twice")
        out.append(spec)
    if not out:
        raise UsageError("--noise: give at least one noise level (e.g. 0,0.4)")
    return out


def parse_seeds(text: str, limit: int = MAX_RUNS) -> list[int]:
    """``0,1,2`` or ranges ``0-4`` (first occurrence kept); at most ``limit`` seeds."""
    seeds: dict[int, None] = {}
    for raw in [t.strip() for t in str(text).split(",") if t.strip()]:
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", raw)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise UsageError(f"--seeds: the range '{raw}' is empty (a-b needs a <= b)")
        else:
            try:
                lo = hi = int(raw)
            except ValueError:
                raise UsageError(f"--seeds: '{raw}' is not a non-negative integer or a range "
                                 "a-b") from None
            if lo < 0:
                raise UsageError(f"--seeds must be >= 0, got {lo}")
        if hi - lo + 1 + len(seeds) > limit:  # checked before the range is expanded
            raise UsageError(f"--seeds: '{text}' holds more than {limit} seeds; a grid of that "
                             "size would run for months: split it")
        for v in range(lo, hi + 1):
            seeds.setdefault(v, None)
    if not seeds:
        raise UsageError("--seeds: give at least one seed (e.g. 0,1,2)")
    return list(seeds)


def noise_slug(spec: str) -> str:
    return slugify(spec.replace(":", "-")) if spec != "none" else "noise-0"


def run_config(base: dict, variant: LossVariant, noise: str, seed: int, out: str) -> TrainConfig:
    """The TrainConfig of one grid cell: the grid's settings plus the variant's."""
    values = dict(base)
    params = dict(values.get("loss_params") or {})
    from ..losses import get_loss

    spec = get_loss(variant.loss)
    params = {k: v for k, v in params.items() if k in spec.param_names}
    params.update(dict(variant.params))
    preset = values.get("loss_preset")
    if preset and preset.strip().lower() not in spec.presets:
        preset = None
    values.update(loss=variant.loss, loss_params=params, loss_preset=preset,
                  logit_bias=variant.logit_bias, bias_criterion=variant.bias_criterion,
                  bias_branch=variant.bias_branch, calibrate=variant.calibrate,
                  calibrate_from=variant.calibrate_from, noise=noise, seed=seed, out=out)
    return resolve_config(cli_values=values)


def run_dir(out: str, variant: LossVariant, noise: str, seed: int) -> str:
    return os.path.join(out, "runs", slugify(variant.label), noise_slug(noise), f"seed-{seed}")


def grid_cells(variants: list[LossVariant], noises: list[str], seeds: list[int]) -> list[tuple]:
    """(variant, noise, seed) in the order they are trained: seed by seed."""
    return [(v, n, s) for s in seeds for v in variants for n in noises]


def run_grid(base: dict, variants: list[LossVariant], noises: list[str], seeds: list[int],
             out: str, *, progress: bool = True, command: str | None = None,
             log=print, bundle=None, jobs: int = 1, record: str | None = "grid.json",
             train: bool = True, emit=None) -> dict:
    """Train every cell not yet complete (``jobs`` at a time), then write and return the
    results. ``record``: the file that records the grid and the command (None: none).
    ``train=False`` (``--report-only``): train nothing, tabulate the runs already complete.
    ``emit`` (``--emit-commands``): train nothing, write nothing, and pass ``emit`` one
    ``calibrate train`` line per run that is not complete (see :func:`_emit`)."""
    from . import threads as T

    runs = len(variants) * len(noises) * len(seeds)
    if runs > MAX_RUNS:
        raise UsageError(f"the grid has {runs} runs ({len(variants)} losses × {len(noises)} noise "
                         f"levels × {len(seeds)} seeds), more than {MAX_RUNS}: split it")
    _check_preset(base.get("loss_preset"), variants)
    cells = grid_cells(variants, noises, seeds)
    configs = share_runs(out, [run_config(base, v, n, s, run_dir(out, v, n, s))
                               for v, n, s in cells])
    first = configs[0]
    check_folder(out, "--out")
    if emit is not None:
        return _emit(configs, emit)
    if not train:
        return _report_only(out, variants, noises, seeds, cells, configs, command=command,
                            log=log, record=record)
    if first.threads is None and jobs == 1:  # chosen once, before the grid's own load counts
        T.default_threads()
    if bundle is None and any(not _complete(c) for c in configs):
        # loaded here before anything is written, also with several jobs (then each worker
        # loads its own copy and this one is dropped): missing or malformed data is one
        # line and an untouched --out, not a broken pool of workers
        from ..utils.progress import slow_step
        from .data import load_dataset

        with slow_step(f"loading {first.dataset}"):
            bundle = load_dataset(first.dataset, first.data_dir, classes=first.classes,
                                  train_per_class=first.train_samples_per_class,
                                  test_per_class=first.test_samples_per_class,
                                  image_size=first.image_size, seed=first.data_seed)
        if jobs > 1:
            bundle = None
    make_folder(out, "--out")  # every input checked: now the grid's folder is made and locked
    with lock_folder(out, "--out"):  # one grid writer at a time
        clean_temporaries(out)
        if first.threads is None and jobs == 1:
            n, why = T.default_threads()
            log(f"threads: {n} ({why})")
        return _run_cells(out, base, variants, noises, seeds, cells, configs, bundle,
                          progress=progress, command=command, log=log, jobs=jobs, record=record)


def _check_preset(preset, variants) -> None:
    """--preset applies to the losses that have it; one that none of them has is a typo."""
    if not preset:
        return
    from ..losses import get_loss

    specs = [get_loss(v.loss) for v in variants]
    if not any(str(preset).strip().lower() in s.presets for s in specs):
        known = sorted({p for s in specs for p in s.presets})
        raise UsageError(f"--preset {preset}: none of the grid's losses has it (their presets: "
                         f"{', '.join(known) or 'none'})")


def _emit(configs: list[TrainConfig], emit) -> dict:
    """One self-contained ``calibrate train --continue`` line per missing run, each into the
    run's own folder under ``OUT/runs``: run them anywhere (a job array, GNU parallel, Ray)
    in any order, any number of times, then tabulate with ``--report-only``."""
    from .provenance import train_command

    lines, seen = [], set()
    for cfg in configs:
        if cfg.out in seen or _complete(cfg):
            continue
        seen.add(cfg.out)
        lines.append(train_command(cfg))
    for line in lines:
        emit(line)
    return {"commands": lines}


def _grid_record(configs, variants, noises, seeds) -> dict:
    first = configs[0]
    return {"dataset": first.dataset, "classes": first.classes, "model": first.model,
            "epochs": first.epochs, "losses": [v.label for v in variants], "noise": noises,
            "seeds": seeds, "train_per_class": first.train_samples_per_class,
            "test_per_class": first.test_samples_per_class, "batch_size": first.batch_size,
            "lr": first.lr, "optimizer": first.optimizer}


def _report_only(out, variants, noises, seeds, cells, configs, *, command, log, record) -> dict:
    """The results of the runs of this grid that are complete; nothing is trained."""
    if not os.path.isdir(os.path.join(out, "runs")):
        raise UsageError(f"--report-only: '{out}' holds no runs of a grid")
    # the runs' files are only read (each is replaced atomically by its writer); the results
    # files are written under the grid's lock, and not at all while a grid holds it: that grid
    # writes them when it ends, and two writers must not race
    done = sum(_complete(cfg) for cfg in configs)
    log(f"{done} of {len(configs)} runs complete; the tables count only those (n per cell)")
    results = collect_results(out, cells, configs,
                              _grid_record(configs, variants, noises, seeds), command)
    try:
        lock = lock_folder(out, "--out")
    except UsageError:
        log(f"a grid is training in '{out}' (its folder is locked): the tables are printed, not "
            "written; it writes them when it ends")
        results["written"] = False
        return results
    with lock:
        if record:
            write_results(out, results)
    results["written"] = True
    return results


def _run_cells(out, base, variants, noises, seeds, cells, configs, bundle, *, progress,
               command, log, jobs, record) -> dict:

    grid = _grid_record(configs, variants, noises, seeds)
    todo, planned = [], set()
    for i, ((v, n, s), cfg) in enumerate(zip(cells, configs), 1):
        tag = f"[{i}/{len(cells)}] {v.label}, noise {n}, seed {s}"
        own = run_dir(out, v, n, s)
        shared = "" if os.path.normpath(cfg.out) == os.path.normpath(own) else \
            f" (the run of {os.path.relpath(cfg.out, out)})"
        if _complete(cfg):
            log(f"{tag}: complete{shared}, skipped")
        elif cfg.out in planned:
            log(f"{tag}: trained once, as {os.path.relpath(cfg.out, out)}")
        else:
            planned.add(cfg.out)
            todo.append((tag, cfg))
    import datetime

    entry = {"command": command, "version": __version__,
             "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "kind": "grid" if record else "sweep",
             "trains": [os.path.relpath(cfg.out, out) for _, cfg in todo]}
    fields = {"version": __version__, "command": command, "grid": grid, "base": base} \
        if record else {}
    if todo or record:
        record_invocation(os.path.join(out, "grid.json"), entry, **fields)
    if todo:
        from .parallel import train_runs

        train_runs(todo, jobs=jobs, bundle=bundle, progress=progress, command=command, log=log,
                   resume_hint="run the same 'calibrate validate' command again to continue "
                               "the grid")
    results = collect_results(out, cells, configs, grid, command)
    if record:
        write_results(out, results)
    return results


def _complete(cfg: TrainConfig) -> bool:
    """Whether the run in ``cfg.out`` is done; UsageError if it was made with other settings."""
    m = read_metrics(cfg.out)
    if not m:
        return False
    try:
        with open(os.path.join(cfg.out, "config.json"), encoding="utf-8") as fh:
            old = json.load(fh).get("config", {})
    except (OSError, ValueError, AttributeError):
        old = {}
    refuse_longer_run(cfg, m.get("epochs_done"))
    changed = changed_result_fields(old, cfg)
    if changed and run_key(old) != run_key(cfg.to_dict()):
        raise UsageError(f"'{cfg.out}' holds a run made with other settings ({', '.join(changed)}); "
                         "give the grid another --out or remove that folder")
    return m.get("status") == "complete" and m.get("epochs_done") == cfg.epochs


def collect_results(out, cells, configs, grid, command) -> dict:
    runs = []
    for (v, n, s), cfg in zip(cells, configs):
        m = read_metrics(cfg.out) or {}
        hist = m.get("epochs", [])
        derived = m.get("derived") or {}
        status = m.get("status", "missing")
        if status == "complete" and m.get("epochs_done") != cfg.epochs:  # not this grid's
            status = f"complete with {m.get('epochs_done')} epochs, not {cfg.epochs}"
        top1 = [r["test_top1"] for r in hist]
        runs.append({
            "id": f"{slugify(v.label)}/{noise_slug(n)}/seed-{s}", "label": v.label,
            "alias_of": None if os.path.normpath(cfg.out) == os.path.normpath(
                run_dir(out, v, n, s)) else os.path.relpath(cfg.out, out),
            "loss": v.loss, "params": derived.get("params", {}),
            "logit_bias": derived.get("epsilon", 0.0), "logit_std": derived.get("logit_std"),
            "noise": n, "noise_rate": (m.get("noise") or {}).get("rate"), "seed": s,
            "status": status, "dir": os.path.relpath(cfg.out, out),
            "epochs": [r["epoch"] for r in hist], "test_top1": top1,
            "train_acc_clean": [r["train_acc_clean"] for r in hist],
            "train_acc_noisy": [r["train_acc_noisy"] for r in hist],
            "memorised": [r.get("memorised") for r in hist],
            "recovered": [r.get("recovered") for r in hist],
            "last_top1": top1[-1] if top1 else None, "best_top1": max(top1) if top1 else None,
            "best_minus_last": max(top1) - top1[-1] if top1 else None,
            "last_memorised": hist[-1].get("memorised") if hist else None,
            "last_recovered": hist[-1].get("recovered") if hist else None,
            "last_train_acc_noisy": hist[-1]["train_acc_noisy"] if hist else None,
        })
    summary = []
    for label in grid["losses"]:
        for n in grid["noise"]:
            done = [r for r in runs if r["label"] == label and r["noise"] == n
                    and r["status"] == "complete"]
            row = {"label": label, "noise": n, "n": len(done)}
            for key, name in SUMMARY_FIELDS:
                xs = [r[key] for r in done if r[key] is not None]
                row[f"{name}_mean"], row[f"{name}_std"] = _mean(xs), _std(xs)
            summary.append(row)
    return {"version": __version__, "command": command, "grid": grid, "runs": runs,
            "summary": summary}
