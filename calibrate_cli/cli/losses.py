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
        "--verbose", "-v", help="Also the loss formulas, parameter meanings, preset sources "
                                "and notes.")] = False,
) -> None:
    recs = _records()
    if json_:
        c.emit_json("losses", {"losses": recs})
        return
    import shutil
    import sys

    # plain lines: wrapped between words at the terminal's width, not wrapped when piped
    width = shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else None
    sys.stdout.write("\n".join(_lines(recs, verbose=verbose, width=width)) + "\n")


def _lines(recs: list[dict], *, verbose: bool, width: int | None) -> list[str]:
    """The text of ``calibrate losses``: a head line per loss, then indented details."""
    import textwrap

    def wrap(text: str, first: str = "    ", rest: str = "      ") -> list[str]:
        if width is None:
            return [first + text]
        return textwrap.wrap(text, max(width, 40), initial_indent=first, subsequent_indent=rest,
                             break_long_words=False, break_on_hyphens=False) or [first]

    out = wrap("Losses. δ_k = ∂L/∂z_k with p = σ_k, the softmax of the correct class; <δ_k> is "
               "averaged exactly (quadrature) or by Monte Carlo, as marked. 'calibrate losses "
               "-v' adds formulas, sources and notes; --json gives everything.", "", "")
    for r in recs:
        out.append("")
        aliases = f" (also {', '.join(r['aliases'])})" if r["aliases"] else ""
        out += wrap(f"{r['name']}  {r['title']}{aliases}  [{r['average']}]", "", "    ")
        if verbose:
            out += wrap(f"L = {r['formula']}")
        out += wrap(f"δ_k = {r['delta']}")
        for p in r["params"]:
            doc = f"; {p['doc']}" if verbose and p["doc"] else ""
            out += wrap(f"{p['name']} = {p['default']:g}, in {p['range']}{doc}")
        if r["presets"]:
            items = [f"{k} " + ", ".join(f"{n}={v:g}" for n, v in p["values"].items())
                     for k, p in r["presets"].items()]
            if verbose:  # presets from one source together, the source once
                by_source: dict[str, list[str]] = {}
                for item, p in zip(items, r["presets"].values()):
                    by_source.setdefault(p["source"], []).append(item)
                out += wrap("presets: " + "; ".join(f"{'; '.join(group)} (source: {src})"
                                                    for src, group in by_source.items()))
            else:
                out += wrap(f"presets: {'; '.join(items)}")
        if verbose and r["notes"]:
            out += wrap(r["notes"])
    return out
