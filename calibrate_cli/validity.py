"""How far a computed value is known to be the right hyperparameter: the validity map's verdicts.

Every value ``calibrate`` computes is exact for its criterion; whether it is the best value to
*train* with is an empirical question. The validity map (docs/validation.md) trains a sweep of
fixed values around each computed one, per optimizer, K and noise, and gives each cell a status
(``holds``: the computed value reaches at least 0.95 of the sweep's best accuracy; ``shifted``:
0.8 to 0.95; ``fails``: below 0.8; ``nothing learns``: no value of the sweep reaches
5 × chance). Its verdicts ship in ``data/validity.json`` (written by
docs/validation/map/build.py from the committed runs). :func:`note` turns the cells that match a
computed quantity into one line for the commands' output and a record for their JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

DOCS = "docs/validation.md"
_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "validity.json")
OPTIMIZER_NAMES = {"sgd": "SGD", "adamw": "AdamW", "adam": "Adam"}
_SYMBOLS = {"eps": "ε"}


@dataclass(frozen=True)
class Note:
    """The map's word on one computed quantity: ``status`` is ``validated`` (every measured cell
    holds), ``caution`` (some cell is shifted or fails) or ``not validated`` (no cell measured);
    ``line`` says it in one line, ``cells`` are the map's entries behind it."""

    status: str
    line: str
    cells: list = field(default_factory=list)

    def record(self) -> dict:
        return {"status": self.status, "note": self.line, "docs": DOCS, "cells": self.cells}


@lru_cache(maxsize=1)
def _entries() -> list[dict]:
    try:
        with open(_PATH, encoding="utf-8") as fh:
            return json.load(fh)["entries"]
    except (OSError, ValueError, KeyError):  # an install without the map: say so, don't fail
        return []


def quantity_of(command: str, loss: str, *, criterion: str = "match", param: str | None = None,
                reference_classes: int | None = None) -> str | None:
    """The map's quantity for a computed value, or None where the map has no such quantity."""
    if command == "epsilon":
        if loss == "mae":
            return {"match": "mae-eps", "peak": "mae-eps-peak"}.get(criterion) \
                if reference_classes in (None, 10) else None
        if loss == "gce" and criterion == "match" and reference_classes in (None, 10):
            return "gce-eps"
        return None
    if command == "transfer":
        if loss == "gce" and param == "q":
            return "gce-q-transfer"
        if loss in ("nce-agce", "nf-mae") and param == "alpha" and reference_classes == 100:
            return f"{loss}-alpha"
    return None


def cell_text(e: dict) -> str:
    """Where a cell of the map is: ``K = 1000 from 100 (matched steps) cnn8``."""
    where = f"K = {e['classes']}"
    if e.get("reference_classes"):
        where += f" from {e['reference_classes']}"
    if e.get("budget") == "matched steps":
        where += " (matched steps)"
    if e.get("noise", "").startswith("pairflip"):
        where += " pairflip"
    if e.get("model", "mlp1024") != "mlp1024":
        where += f" {e['model']}"
    return where


def note(quantity: str | None, *, optimizer: str | None = None,
         reference_classes: int | None = None) -> Note:
    """The one-line verdict on ``quantity`` (see :func:`quantity_of`), over every optimizer or
    the given one; for a transfer, over the cells with the given reference K."""
    sym = "the computed value"
    if quantity is None:
        return Note("not validated", "not validated: no training sweep of this quantity in the "
                    f"validity map; check it on your data ({DOCS})")
    cells = [e for e in _entries() if e["quantity"] == quantity
             and (optimizer is None or e["optimizer"] == ("adamw" if optimizer == "adam"
                                                          else optimizer))
             and (reference_classes is None or e.get("reference_classes") in
                  (None, reference_classes))]
    measured = [e for e in cells if e["status"] != "not measured"]
    if not measured:
        return Note("not validated", "not validated: no cell of the validity map measured "
                    f"{'for this reference K ' if reference_classes else ''}yet; check it on "
                    f"your data ({DOCS})", cells)
    sym = _SYMBOLS.get(measured[0].get("parameter", ""), measured[0].get("parameter", "value"))
    parts, bad = [], False
    for opt in dict.fromkeys(e["optimizer"] for e in measured):
        rows = [e for e in measured if e["optimizer"] == opt]
        held = [e for e in rows if e["status"] == "holds"]
        dead = [e for e in rows if e["status"] == "nothing learns"]
        off = [e for e in rows if e not in held and e not in dead]
        bad |= bool(off or dead)
        text = OPTIMIZER_NAMES.get(opt, opt)
        if held:
            text += " holds at " + ", ".join(f"{cell_text(e)} ({e['ratio']:.2f}×)"
                                             for e in held)
        if off:
            text += (";" if held else "") + " off the optimum at " + ", ".join(
                f"{cell_text(e)} ({e['ratio']:.2f}×: {sym} = {e['best_fixed']:g} beat "
                f"{e['computed']:.3g})" for e in off)
        if dead:
            text += (";" if held or off else "") + " nothing in the sweep learned at " + \
                ", ".join(f"{cell_text(e)} (best {e['best_top1']:g} %, the computed value "
                          f"{e['computed_top1']:g} %)" for e in dead)
        parts.append(text)
    status = "caution" if bad else "validated"
    line = (f"{status}: " + "; ".join(parts) + f" (ratio: the computed value's accuracy over "
            f"the best of a sweep; embedded glyphs, 40 % noise; {DOCS})")
    return Note(status, line, measured)
