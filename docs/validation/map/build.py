"""The validity map: where each value ``calibrate`` computes is the right hyperparameter.

    python docs/validation/map/build.py collect    # runs/map/* -> docs/validation/map/data/
    python docs/validation/map/build.py missing    # validate commands of the transfer points
    python docs/validation/map/build.py            # map.json, map.md, map-*.png and the verdicts

A *cell* is one computed quantity (MAE's ε, GCE's q transferred from a reference K, ...) under
one training setting (optimizer, K, model, noise, budget), with a sweep of fixed values of the
quantity trained on the same data, model, noise and seeds. Its verdict compares the computed
value's accuracy with the sweep's best fixed value (``ratio``) and says how far the computed
value lies from the sweep's argmax in sweep steps (``steps``: the computed value's fractional
position among the sorted fixed values, minus the argmax's position; negative: the computed
value is below the best one). Status, from the ratio of last-epoch test accuracies:

- ``holds``: ratio >= 0.95 (the computed value is as good as the sweep's best, within 5 %);
- ``shifted``: 0.8 <= ratio < 0.95 (near the optimum, but a sweep finds a better value);
- ``fails``: ratio < 0.8;
- ``nothing learns``: no fixed value of the sweep reaches 5 × chance (1/K), so that there is
  no optimum to compare with.

The transfer cells test the transfer's premise as stated: GCE's q is swept at the reference
K_ref, its empirical best q_ref is transferred to K (``gce@calibrated:q:K_ref:q_ref``, solved per
run from the model's measured logit std), and that run is compared with the sweep at K. Under
"fixed epochs" both sweeps train 20 epochs; under "matched steps" the reference trains as many
optimizer steps as the run at K (200 epochs at K = 100 against 20 at K = 1000).

The CLI reads the verdicts from calibrate_cli/data/validity.json, which this script writes:
one source for the README, the docs, the figures and the commands' notes. The protocol (paths,
optimizers, the cells' settings) is in protocol.py, the tables, figures and summaries in
render.py.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # protocol.py and render.py

from protocol import (DATA, HERE, HOLDS, K1000, OPTIMIZERS, PACKAGE_VERDICTS,  # noqa: E402
                      PAIR, REPO, SECOND_MODELS, SHIFTED, SYM, TRANSFERS)
from render import QUANTITY_TITLES, figure, markdown, write_summary  # noqa: E402
# the summary's pieces, for the tests that check the README's table against the verdicts
from render import MARKS, SUMMARIES, _where, summary  # noqa: E402,F401


def _load(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _folder(name):
    """A sweep folder of the map (``sgd-k100``) or the headline experiment (``k1000``)."""
    return K1000 if name == "k1000" else os.path.join(DATA, name)


def points(folders, sweep, noise):
    """The points of ``sweep`` at ``noise`` from one or more folders (merged by label; the first
    folder holding a label wins), each {label, computed, value, last_mean, last_std, n}."""
    out = {}
    for name in folders:
        path = os.path.join(_folder(name), f"{sweep}.json")
        if not os.path.isfile(path):
            continue
        for p in _load(path)["points"]:
            if p["noise"] == noise and p["n"] and p["label"] not in out:
                out[p["label"]] = {k: p[k] for k in ("label", "computed", "value", "last_mean",
                                                     "last_std", "n")}
                out[p["label"]]["source"] = name
    return list(out.values())


def baseline(folders, noise, label="ce"):
    """CE's last-epoch top-1 at ``noise`` from the first of ``folders`` that trained it."""
    for folder in folders:
        path = os.path.join(_folder(folder), "results.json")
        if not os.path.isfile(path):
            continue
        for s in _load(path)["summary"]:
            if s["label"] == label and s["noise"] == noise and s["n"]:
                return {"last_mean": s["last_mean"], "last_std": s["last_std"], "n": s["n"]}
    return None


def _position(value, values):
    """The fractional index of ``value`` among the sorted ``values`` (clamped to the ends)."""
    if value <= values[0]:
        return 0.0
    for i in range(len(values) - 1):
        if values[i] <= value <= values[i + 1]:
            return i + (value - values[i]) / (values[i + 1] - values[i])
    return float(len(values) - 1)


LEARNS = 5  # a sweep whose best fixed value is below 5 × chance (1/K) has nothing to compare


def verdict(pts, computed, classes=None):
    """The verdict of the computed point labelled ``computed`` against the fixed points
    (status ``nothing learns`` where no fixed value reaches LEARNS × chance at ``classes``)."""
    fixed = sorted((p for p in pts if p["computed"] is None), key=lambda p: p["value"])
    c = next((p for p in pts if p["label"] == computed), None)
    if c is None or len(fixed) < 2:
        return None
    best_i = max(range(len(fixed)), key=lambda i: fixed[i]["last_mean"])
    best = fixed[best_i]
    values = [p["value"] for p in fixed]
    near = [v for v in values if c["value"] / 1.5 <= v <= c["value"] * 1.5]
    ratio = c["last_mean"] / best["last_mean"] if best["last_mean"] > 0 else None
    status = None if ratio is None else "holds" if ratio >= HOLDS else \
        "shifted" if ratio >= SHIFTED else "fails"
    if classes and best["last_mean"] < LEARNS / classes:
        status = "nothing learns"
    return {"computed_label": computed, "computed_value": c["value"],
            "computed_mean": c["last_mean"], "computed_std": c["last_std"], "n": c["n"],
            "best_value": best["value"], "best_mean": best["last_mean"],
            "best_std": best["last_std"], "ratio": ratio,
            "steps": _position(c["value"], values) - best_i,
            "below_within_1.5x": sum(v < c["value"] for v in near),
            "above_within_1.5x": sum(v > c["value"] for v in near),
            "fixed_points": len(fixed), "status": status}


# ------------------------------------------------------------------ the cells

def _model(model):
    """The folder names' suffix of a model (none for mlp1024)."""
    return "" if model == "mlp1024" else f"-{model}"


def _k10(opt, model="mlp1024"):
    """The K = 10 reference sweep: 100 test images per class where that sweep exists."""
    precise = f"{opt}-k10-t100{_model(model)}"
    return precise if os.path.isfile(os.path.join(DATA, precise, "sweep-gce-q.json")) else \
        f"{opt}-k10{_model(model)}"


def _target(opt, k, model="mlp1024"):
    if model != "mlp1024":
        return [f"{opt}-k{k}{_model(model)}"]
    return [f"{opt}-k{k}", "k1000"] if (opt, k) == ("sgd", 1000) else [f"{opt}-k{k}"]


def empirical_best(folder, sweep="sweep-gce-q", noise=SYM):
    fixed = [p for p in points([folder], sweep, noise) if p["computed"] is None]
    return max(fixed, key=lambda p: p["last_mean"]) if fixed else None


def _label_value(v):
    from calibrate_cli.utils.numbers import number_text

    return number_text(v)


def cells():
    """Every cell of the map, measured or not (``verdict`` None: not measured)."""
    out = []
    for opt in OPTIMIZERS:
        for k, noises in ((100, (SYM, PAIR)), (1000, (SYM,))):
            for noise in noises:
                folders = _target(opt, k)
                pts = points(folders, "sweep-mae-eps", noise)
                out.append(dict(quantity="mae-eps", loss="mae", parameter="eps",
                                criterion="match", optimizer=opt, classes=k, model="mlp1024",
                                noise=noise, budget="20 epochs", points=pts,
                                baseline=baseline(folders, noise),
                                verdict=verdict(pts, "mae*"),
                                contrast=verdict(pts, "mae*peak")))
    for opt, k, model, why in SECOND_MODELS:
        folders = [f"{opt}-k{k}-{model}"]
        pts = points(folders, "sweep-mae-eps", SYM)
        out.append(dict(quantity="mae-eps", loss="mae", parameter="eps", criterion="match",
                        optimizer=opt, classes=k, model=model, noise=SYM,
                        budget="20 epochs", points=pts, baseline=baseline(folders, SYM),
                        verdict=verdict(pts, "mae*"), why=why,
                        candidate=verdict(pts, "mae@eps=3.454") if k == 1000 else None))
    for opt, k_ref, k, budget, model, why in TRANSFERS:
        ref_folder = _k10(opt, model) if k_ref == 10 else \
            f"{opt}-k100" + ("-200ep" if budget == "matched steps" else "")
        best = empirical_best(ref_folder)
        folders = _target(opt, k, model)
        pts = points(folders, "sweep-gce-q", SYM)
        label = None if best is None else \
            f"gce@calibrated:q:{k_ref}:{_label_value(best['value'])}"
        out.append(dict(quantity="gce-q-transfer", loss="gce", parameter="q",
                        optimizer=opt, classes=k, reference_classes=k_ref, model=model,
                        noise=SYM, budget=budget, reference_folder=ref_folder,
                        reference_best=best, points=pts, baseline=baseline(folders, SYM),
                        verdict=None if label is None else verdict(pts, label), why=why))
    for quantity, loss, param, sweep, computed in (
            ("gce-eps", "gce", "eps", "sweep-gce-eps", "gce*"),
            ("nce-agce-alpha", "nce-agce", "alpha", "sweep-nce-agce-alpha",
             "nce-agce@calibrated:alpha:100"),
            ("nf-mae-alpha", "nf-mae", "alpha", "sweep-nf-mae-alpha",
             "nf-mae@calibrated:alpha:100")):
        folders = _target("sgd", 1000)
        pts = points(folders, sweep, SYM)
        out.append(dict(quantity=quantity, loss=loss, parameter=param, optimizer="sgd",
                        classes=1000, model="mlp1024", noise=SYM, budget="20 epochs",
                        points=pts, baseline=baseline(folders, SYM),
                        verdict=verdict(pts, computed, classes=1000)))
    return out


# ------------------------------------------------------------------ commands

def collect(src=os.path.join(REPO, "runs", "map")):
    """Copy each grid folder's result files and its runs' config.json + metrics.csv."""
    for folder in sorted(glob.glob(os.path.join(src, "*"))):
        name = os.path.basename(folder)
        dst = os.path.join(DATA, name)
        for f in glob.glob(os.path.join(folder, "*")):
            if os.path.isfile(f) and f.rsplit(".", 1)[-1] in ("json", "md", "csv", "png"):
                os.makedirs(dst, exist_ok=True)
                shutil.copy2(f, dst)
        for run in glob.glob(os.path.join(folder, "runs", "*", "*", "seed-*")):
            if (_load_status(run)) != "complete":
                continue
            rel = os.path.relpath(run, folder)
            os.makedirs(os.path.join(dst, rel), exist_ok=True)
            for f in ("config.json", "metrics.csv"):
                shutil.copy2(os.path.join(run, f), os.path.join(dst, rel, f))
        print(f"collected {name}")


def _load_status(run):
    try:
        return _load(os.path.join(run, "metrics.json")).get("status")
    except (OSError, ValueError):
        return None


COMMON = ("--train-per-class 50 --test-per-class 10 --epochs 20 --preset cifar100 --threads 1 "
          "--jobs 2 -q")
OPT_ARGS = {"sgd": "--optimizer sgd --lr 0.1", "adamw": "--optimizer adamw --lr 1e-3 "
            "--weight-decay 0"}


def missing(src=os.path.join(REPO, "runs", "map")):
    """One validate command per target folder that adds the transfer points whose reference
    sweep is done to that folder's GCE sweep (its fixed points are complete and skipped)."""
    by_folder = {}
    for c in cells():
        if c["quantity"] != "gce-q-transfer" or c["reference_best"] is None:
            continue
        folder = f"{c['optimizer']}-k{c['classes']}{_model(c['model'])}"
        q = _label_value(c["reference_best"]["value"])
        by_folder.setdefault(folder, (c, []))[1].append(f"calibrated:{c['reference_classes']}:{q}")
    for folder, (c, computed) in sorted(by_folder.items()):
        path = os.path.join(src, folder, "sweep-gce-q.json")
        if not os.path.isfile(path):
            continue  # its sweep comes first
        sweep = _load(path)
        fixed = [_label_value(p["value"]) for p in sweep["points"] if p["computed"] is None]
        done = [p["computed"] for p in sweep["points"] if p["computed"] is not None]
        new = [x for x in dict.fromkeys(computed) if x not in done]
        if not new:
            continue
        seeds = ",".join(map(str, sweep["grid"]["seeds"]))
        print(f"calibrate validate {COMMON} {OPT_ARGS[c['optimizer']]} --classes {c['classes']} "
              f"--noise 0.4 --seeds {seeds} --losses gce --sweep "
              f"q={','.join(fixed + done + new)} --out runs/map/{folder}")


def package_verdicts(all_cells):
    """The compact verdicts the CLI prints (calibrate_cli/data/validity.json)."""
    entries = []
    contrasts = [dict(c, quantity="mae-eps-peak", criterion="peak", verdict=c["contrast"])
                 for c in all_cells if c["quantity"] == "mae-eps" and "contrast" in c]
    for c in all_cells + contrasts:
        v = c["verdict"]
        e = {k: c.get(k) for k in ("quantity", "loss", "parameter", "criterion", "optimizer",
                                   "classes", "reference_classes", "model", "noise", "budget")}
        e = {k: x for k, x in e.items() if x is not None}
        if v is None:
            e["status"] = "not measured"
            fixed = [p for p in c.get("points") or [] if p["computed"] is None]
            if fixed:  # the sweep is there, its computed point not (yet)
                best = max(fixed, key=lambda p: p["last_mean"])
                e.update(best_fixed=round(best["value"], 4),
                         best_top1=round(100 * best["last_mean"], 2))
        else:
            e.update(status=v["status"], computed=round(v["computed_value"], 4),
                     best_fixed=round(v["best_value"], 4), ratio=round(v["ratio"], 3),
                     steps=round(v["steps"], 1),
                     computed_top1=round(100 * v["computed_mean"], 2),
                     best_top1=round(100 * v["best_mean"], 2))
            if c.get("baseline"):
                e["ce_top1"] = round(100 * c["baseline"]["last_mean"], 2)
        entries.append(e)
    return {"about": "Where a computed value was the best hyperparameter in training: glyphs "
                     "(embedded), 50/10 images per class, 20 epochs, batch 256, cosine schedule, "
                     "40 % noise, last-epoch test top-1 against a sweep of fixed values. "
                     "Written by docs/validation/map/build.py.",
            "docs": "docs/validation.md",
            "thresholds": {"holds": HOLDS, "shifted": SHIFTED}, "entries": entries}


def build():
    all_cells = cells()
    with open(os.path.join(HERE, "map.json"), "w", encoding="utf-8") as fh:
        json.dump({"cells": all_cells}, fh, indent=1, allow_nan=False)
        fh.write("\n")
    with open(os.path.join(HERE, "map.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(all_cells))
    for q in QUANTITY_TITLES:
        figure(all_cells, q, os.path.join(HERE, f"map-{q}.png"))
    verdicts = package_verdicts(all_cells)
    with open(PACKAGE_VERDICTS, "w", encoding="utf-8") as fh:
        json.dump(verdicts, fh, indent=1, allow_nan=False)
        fh.write("\n")
    write_summary(verdicts)
    print(markdown(all_cells))


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    what = sys.argv[1] if len(sys.argv) > 1 else "build"
    {"collect": collect, "missing": missing, "build": build}[what]()
