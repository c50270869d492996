"""The committed tables/: headers, consistency of CSV/JSON/Markdown, and recomputed rows."""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from calibrate_cli.tables import build as T
from calibrate_cli._version import __version__
from calibrate_cli.cli.app import build_app
from calibrate_cli.losses import list_losses

ROOT = os.path.join(os.path.dirname(__file__), "..", "tables")
REGEN = "regenerate with 'calibrate tables'"
MC_MAX_CLASSES = 200  # recompute Monte Carlo rows only up to here (cost grows like K)


def load(name):
    path = os.path.join(ROOT, f"{name}.json")
    if not os.path.isfile(path):
        pytest.fail(f"{path} is missing: {REGEN}")
    return T.read_table(path)


def read_csv(name):
    with open(os.path.join(ROOT, f"{name}.csv"), encoding="utf-8") as f:
        text = f.read()
    header = {}
    body = []
    for line in text.splitlines(keepends=True):
        if line.startswith("# "):
            k, v = line[2:].rstrip("\n").split(": ", 1)
            header[k] = v
        else:
            body.append(line)
    rows = list(csv.DictReader(io.StringIO("".join(body))))
    return header, rows


def _close(a, b, tol):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol * max(1.0, abs(b))


@pytest.mark.parametrize("name", T.TABLE_NAMES)
def test_headers_and_formats_agree(name):
    t = load(name)
    h = t.header
    assert h["tool"] == "calibrate" and h["table"] == name
    assert h["version"] == __version__, REGEN
    for key in ("command", "criterion", "distribution", "grid", "engine"):
        assert h.get(key), key
    assert h["command"] == "calibrate tables", "committed tables must come from the full command"
    assert t.columns == T.COLUMNS[name]
    csv_header, csv_rows = read_csv(name)
    assert csv_header["version"] == h["version"] and csv_header["criterion"] == h["criterion"]
    assert len(csv_rows) == len(t.rows) > 0
    value = "epsilon" if name == "epsilon" else "value"
    for c_row, j_row in zip(csv_rows, t.rows):
        assert c_row["loss"] == j_row["loss"] and int(c_row["classes"]) == j_row["classes"]
        if j_row[value] is None:
            assert c_row[value] == "" and j_row["status"].startswith("no solution")
        else:
            assert float(c_row[value]) == pytest.approx(j_row[value], rel=1e-11, abs=1e-14)
            assert j_row["status"] == "ok" or j_row["status"].startswith("uncertain")
    with open(os.path.join(ROOT, f"{name}.md"), encoding="utf-8") as f:
        md = f.read()
    assert md.startswith(f"# {T.TITLES[name]}") and "calibrate tables" in md


def test_epsilon_grid_covers_the_issue():
    t = load("epsilon")
    bounded = {s.name for s in list_losses() if s.bounded}
    assert {r["loss"] for r in t.rows} == bounded
    exact = [r for r in t.rows if r["method"] == "exact"]
    ks = sorted({r["classes"] for r in exact})
    assert len(ks) >= 60 and ks[0] == 2 and ks[-1] == 10**6
    ratios = np.diff(np.log(ks))
    assert ratios.max() < 0.41  # a log grid without gaps (2 -> 3 is the largest step)
    assert {r["logit_std"] for r in exact} == set(T.STDS)
    assert {r["criterion"] for r in t.rows} == set(T.CRITERIA)
    for loss in bounded:
        for crit in T.CRITERIA:
            assert any(r["loss"] == loss and r["criterion"] == crit for r in t.rows)
    mc = [r for r in t.rows if r["method"] != "exact"]
    assert mc and all(r["samples"] and r["error"] is None or r["error"] >= 0 for r in mc)
    # an invariant: without bias the match criterion holds at K = K_ref, so ε = 0 there
    for r in t.rows:
        if r["criterion"] == "match" and r["classes"] == T.REFERENCE_CLASSES and r["status"] == "ok":
            assert abs(r["epsilon"]) < 1e-6 + 3 * (r["error"] or 0)


def test_every_loss_on_the_full_grid():
    """NCE, NFL, biTemp and their combinations reduce their draws, so every bounded loss has
    every K of the grid at every std, under both criteria."""
    t = load("epsilon")
    grid = set(T.class_grid())
    cells: dict = {}
    for r in t.rows:
        cells.setdefault((r["loss"], r["criterion"]), set()).add((r["classes"], r["logit_std"]))
    for key, got in cells.items():
        assert got == {(k, s) for k in grid for s in T.STDS}, key
    mc = [r for r in t.rows if r["method"] != "exact"]
    assert {r["loss"] for r in mc} >= {"nfl", "nf-mae", "nf-rce", "bitemp", "nce"}


def test_q_table_grid_and_anchor():
    t = load("q")
    assert len({r["classes"] for r in t.rows}) >= 60
    assert {r["logit_std"] for r in t.rows} == set(T.STDS)
    for r in t.rows:
        if r["classes"] == 100:
            assert r["value"] == pytest.approx(0.7, abs=1e-8)  # the transfer's fixed point


def _sample(rows, n, seed, mc_ok=True):
    rng = np.random.default_rng(seed)
    exact = [r for r in rows if r["method"] == "exact"]
    mc = [r for r in rows if r["method"] != "exact" and r["classes"] <= MC_MAX_CLASSES]
    picks = []
    if exact:
        picks += [exact[i] for i in rng.choice(len(exact), min(n, len(exact)), replace=False)]
    if mc and mc_ok:
        m = min(3 if exact else n, len(mc))
        picks += [mc[i] for i in rng.choice(len(mc), m, replace=False)]
    return picks


@pytest.mark.parametrize("name,seed", [("epsilon", 1), ("q", 2), ("transfer", 3), ("presets", 4)])
def test_recomputed_rows_match_the_committed_files(name, seed):
    t = load(name)
    value = "epsilon" if name == "epsilon" else "value"
    picks = _sample(t.rows, 8 if name == "epsilon" else 6, seed)
    assert len(picks) >= 6
    with np.errstate(all="ignore"):
        for row in picks:
            new = T.recompute_row(name, row)
            assert new["status"].split(":")[0] == row["status"].split(":")[0], (row, new["status"])
            if row[value] is None:
                continue
            if row["method"] == "exact":
                assert _close(new[value], row[value], 1e-6), (row, new[value])
            else:  # Monte Carlo: within the stated error (same seed: normally identical)
                err = row["error"] if row["error"] is not None and math.isfinite(row["error"]) else 0
                assert abs(new[value] - row[value]) <= max(err, 1e-9 * max(1, abs(row[value]))), (
                    row, new[value])


def test_presets_table_sits_literature_beside_computed():
    t = load("presets")
    with_presets = {s.name for s in list_losses() if "cifar100" in s.presets}
    assert {r["loss"] for r in t.rows} == with_presets
    assert {r["classes"] for r in t.rows} == set(T.PRESET_CLASSES)
    for r in t.rows:
        if r["classes"] == 100:  # the source preset itself
            assert r["literature"] == pytest.approx(r["value_from"])
            if r["value"] is not None:
                assert r["value"] == pytest.approx(r["value_from"], rel=1e-6)
        if r["classes"] == 1000:
            assert r["literature"] is None


def test_class_grid():
    g = T.class_grid()
    assert g[0] == 2 and g[-1] == 10**6 and len(g) >= 60 and g == sorted(set(g))


def test_params_round_trip():
    p = {"q": 0.7, "a": 1e-05, "alpha": 10.0}
    assert T.parse_params(T.format_params(p)) == p
    assert T.parse_params("") == {}


def test_cli_quick_writes_atomically(tmp_path):
    app = build_app("tables")
    r = CliRunner().invoke(app, ["tables", "--quick", "--only", "q", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.stderr
    names = sorted(os.listdir(tmp_path))
    assert names == ["q.csv", "q.json", "q.md"]
    t = T.read_table(str(tmp_path / "q.json"))
    assert t.header["command"] == "calibrate tables --quick" and len(t.rows) == 3
    again = T.recompute_row("q", t.rows[1])
    assert again["value"] == pytest.approx(t.rows[1]["value"], rel=1e-9)
    r = CliRunner().invoke(app, ["tables", "--only", "nope", "--out-dir", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "--only" in r.stderr


def test_cli_out_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    app = build_app("tables")
    r = CliRunner().invoke(app, ["tables", "--quick", "--only", "q", "--out-dir", str(blocker / "sub")])
    assert r.exit_code == 2 and r.stderr.startswith("error: --out-dir") and "\n" not in r.stderr.strip()
    assert blocker.read_text() == "keep"


def test_tables_sharing_one_pool_are_the_tables_built_alone():
    """build_tables deals the row groups of several tables to one pool (costliest first); each
    table comes back in its input order, as each would alone in one process."""
    with np.errstate(all="ignore"):  # as the CLI: scans may overflow at their far ends
        together = T.build_tables(["q", "transfer", "presets"], quick=True, jobs=2)
        alone_tables = {n: T.build_table(n, quick=True, jobs=1) for n in ("q", "transfer", "presets")}
    for t in together:
        alone = alone_tables[t.name]
        assert [r["classes"] for r in t.rows] == [r["classes"] for r in alone.rows]
        value = "value"
        for a, b in zip(t.rows, alone.rows):
            assert a["status"] == b["status"] and a[value] == b[value], (t.name, a, b)
        assert t.header["seconds"] >= 0
