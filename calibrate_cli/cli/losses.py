"""``calibrate losses``: the loss registry as a table."""

from __future__ import annotations

from typing import Annotated

import typer

from ..losses import list_losses
from . import common as c

HELP = """Every loss the tool knows: parameters with defaults and valid ranges, literature presets with their sources, and δ_k = ∂L/∂z_k (p = σ_k, the softmax of the correct class).

[bold]Examples[/]

  calibrate losses

  calibrate losses --json
"""


def register(app: typer.Typer) -> None:
    app.command("losses", help=HELP)(losses)


def _records() -> list[dict]:
    out = []
    for s in list_losses():
        out.append({
            "name": s.name, "title": s.title, "aliases": list(s.aliases),
            "formula": s.formula, "delta": s.delta_formula, "bounded": s.bounded,
            "average": "exact" if s.sigma_only else "monte-carlo",
            "params": [{"name": p.name, "default": p.default, "range": p.range_text(),
                        "doc": p.doc} for p in s.params],
            "presets": {k: {"values": dict(v.values), "source": v.source}
                        for k, v in s.presets.items()},
            "notes": s.notes,
        })
    return out


def losses(
    json_: c.Json = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also the loss formulas, preset sources and notes.")] = False,
) -> None:
    recs = _records()
    if json_:
        c.emit_json("losses", {"losses": recs})
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Losses (δ_k = ∂L/∂z_k, p = σ_k)", show_lines=True, title_justify="left")
    for col in ("name", "parameters (default, range)", "presets", "δ_k", "<δ_k>"):
        t.add_column(col, overflow="fold")
    for r in recs:
        params = "\n".join(f"{p['name']}={p['default']:g} {p['range']}" for p in r["params"]) or "-"
        presets = "\n".join(
            f"{k}: " + ", ".join(f"{n}={v:g}" for n, v in p["values"].items())
            + (f" [{p['source']}]" if verbose else "")
            for k, p in r["presets"].items()) or "-"
        name = r["name"] + (f"\n({', '.join(r['aliases'])})" if r["aliases"] else "")
        delta = r["delta"] + (f"\nL = {r['formula']}" if verbose else "")
        if verbose and r["notes"]:
            delta += f"\n{r['notes']}"
        t.add_row(name, params, presets, delta, r["average"])
    Console(soft_wrap=False).print(t)
