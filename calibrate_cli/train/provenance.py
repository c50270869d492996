"""Which run a grid cell is, and which commands made a grid's folder.

A grid (``calibrate validate``) names its runs by label, but what a run computes depends only
on its settings: :func:`run_key` is that in one canonical text, and :func:`share_runs` points
every cell at the one folder that trains it, so that two labels of the same thing (``mae`` and
``mae@eps=0``) are trained once. :func:`record_invocation` keeps every command that trained runs
into a folder (``grid.json``'s ``invocations``), not only the last one.
"""

from __future__ import annotations

import json
import os

from ..errors import UsageError
from .config import RESULT_FIELDS, TrainConfig


def read_metrics(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "metrics.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def refuse_longer_run(cfg, done, prefix: str = "") -> None:
    """A run is extended, never cut back: a folder whose run has more epochs than ``cfg.epochs``
    is refused (reported as done, it would be tabulated as this grid's result, and a grid would
    emit its line again and again)."""
    if isinstance(done, int) and isinstance(cfg.epochs, int) and done > cfg.epochs:
        raise UsageError(f"{prefix}'{cfg.out}' holds this run with {done} epochs, more than "
                         f"--epochs {cfg.epochs}; give another --out")


def run_key(config: dict) -> str:
    """What a run's result depends on, in one canonical text: two configurations with the
    same key train the same thing (``gce`` under ``--preset cifar100`` and ``gce@q=0.7``,
    ``mae`` and ``mae@eps=0``), whatever their labels and raw settings."""
    from ..losses import get_loss, resolve_params

    key = {k: config.get(k) for k in RESULT_FIELDS}
    key["epochs"] = config.get("epochs")
    try:
        spec = get_loss(str(config.get("loss")))
        preset = config.get("loss_preset")
        preset = preset if preset and str(preset).strip().lower() in spec.presets else None
        key["loss_params"] = resolve_params(spec, preset, config.get("loss_params") or {})
        key["loss"], key["loss_preset"] = spec.name, None
    except UsageError:  # a user loss that is gone: compare the raw settings
        pass
    if str(key.get("logit_bias")) != "auto":
        try:
            key["logit_bias"] = float(key["logit_bias"])
        except (TypeError, ValueError):
            pass
        key["bias_criterion"] = key["bias_branch"] = None  # only used when ε is solved
    if not key.get("calibrate"):
        key["calibrate"] = key["calibrate_from"] = None
    return json.dumps(key, sort_keys=True, default=str)


def _saved_config(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            old = json.load(fh).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return old if isinstance(old, dict) else None


def share_runs(out: str, configs: list[TrainConfig]) -> list[TrainConfig]:
    """Point every cell whose run another label already trains (in this grid, or in a run
    folder of an earlier grid with the same ``out``) at that run's folder, so that it is
    trained once. A cell whose own folder holds a run keeps it."""
    import dataclasses
    import glob

    known: dict[str, tuple[str, dict]] = {}  # key -> (folder, its saved raw settings)
    for path in sorted(glob.glob(os.path.join(glob.escape(out), "runs", "*", "*", "seed-*"))):
        saved = _saved_config(path)
        if saved is not None:
            complete = (read_metrics(path) or {}).get("status") == "complete"
            k = run_key(saved)
            if k not in known or complete:
                known[k] = (path, saved)
    result = []
    for cfg in configs:
        k = run_key(cfg.to_dict())
        own = _saved_config(cfg.out)
        if own is None and k in known and os.path.normpath(known[k][0]) != \
                os.path.normpath(cfg.out):
            path, saved = known[k]
            cfg = dataclasses.replace(cfg, out=path, **{f: saved[f] for f in RESULT_FIELDS
                                                        if f in saved})
        known.setdefault(k, (cfg.out, cfg.to_dict()))
        result.append(cfg)
    return result


def record_invocation(path: str, entry: dict, **fields) -> None:
    """Append ``entry`` to the ``invocations`` of the JSON file ``path`` (made if missing),
    and set ``fields``: every command that trained runs into a folder stays on record."""
    from .records import write_json

    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        if not isinstance(old, dict):
            old = {}
    except (OSError, ValueError):
        old = {}
    history = [e for e in old.get("invocations", []) if isinstance(e, dict)]
    if not history and old.get("command"):  # a file written before the history was kept
        history.append({"command": old["command"], "version": old.get("version"),
                        "note": "recorded before invocations were kept"})
    old.update(fields)
    old["invocations"] = history + [entry]
    write_json(path, old)


def continue_state(cfg: TrainConfig) -> str:
    """For ``calibrate train --continue``: ``"complete"`` (nothing to do), ``"resume"`` (a
    checkpoint to continue) or ``"start"``. UsageError if ``cfg.out`` holds a run made with
    other settings or with more epochs done than ``cfg.epochs``, or no ``--out`` is given."""
    from .records import CHECKPOINT

    if not cfg.out:
        raise UsageError("--continue needs --out, the run's folder")
    saved = _saved_config(cfg.out)
    if saved is not None and run_key(saved) != run_key({**cfg.to_dict(),
                                                          "epochs": saved.get("epochs")}):
        raise UsageError(f"--continue: '{cfg.out}' holds a run made with other settings; "
                         "give another --out")
    metrics = read_metrics(cfg.out) or {}
    done = metrics.get("epochs_done")
    refuse_longer_run(cfg, done, "--continue: ")
    if metrics.get("status") == "complete" and done == cfg.epochs:
        return "complete"
    return "resume" if os.path.isfile(os.path.join(cfg.out, CHECKPOINT)) else "start"


#: ``calibrate train`` options whose name is not the config field's.
_OPTION_NAMES = {"train_samples_per_class": "--train-per-class",
                 "test_samples_per_class": "--test-per-class", "loss_preset": "--preset"}
#: Fields always written on an emitted line (the rest only where they differ from the
#: dataset's protocol): what a reader of the line wants to see.
_ALWAYS = ("dataset", "classes", "loss", "noise", "seed", "epochs")


def train_command(cfg: TrainConfig) -> str:
    """One self-contained, idempotent ``calibrate train --continue ...`` line that trains
    ``cfg`` into ``cfg.out`` (the same run, folder and settings as the grid would use)."""
    import shlex

    from ..utils.numbers import number_text
    from .config import resolve_config

    d = cfg.to_dict()
    default = resolve_config(cli_values={"dataset": cfg.dataset}).to_dict()
    fields = [f for f in RESULT_FIELDS + ("epochs", "data_dir", "device", "threads", "workers",
                                          "imagenet_val_dir", "compile", "eval_batch_size")
              if f != "loss_params"]
    args = ["calibrate", "train"]
    for f in fields:
        v = d.get(f)
        if v is None or (f not in _ALWAYS and v == default.get(f)):
            continue
        name = _OPTION_NAMES.get(f, "--" + f.replace("_", "-"))
        if isinstance(v, bool):
            args.append(name if v else "--no-" + name[2:])
        elif isinstance(v, float):
            args += [name, number_text(v)]
        else:
            args += [name, str(v)]
    for k, v in sorted((d.get("loss_params") or {}).items()):
        args += ["--set", f"{k}={number_text(v)}"]
    args += ["--out", d["out"], "--continue", "--quiet"]
    return " ".join(shlex.quote(a) for a in args)
