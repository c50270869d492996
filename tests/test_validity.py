"""The validity map's verdicts: recomputed from the committed sweeps, summarised in one line,
and carried by the commands' output and JSON."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from calibrate_cli import validity
from helpers import REPO, ok, run

BUILD = os.path.join(REPO, "docs", "validation", "map", "build.py")


def _build():
    spec = importlib.util.spec_from_file_location("map_build", BUILD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_verdicts_recompute_from_the_committed_runs():
    build = _build()
    with open(build.PACKAGE_VERDICTS, encoding="utf-8") as fh:
        shipped = json.load(fh)
    assert build.package_verdicts(build.cells()) == shipped
    for path, link in build.SUMMARIES:  # the README's and the docs' tables: the same verdicts
        with open(path, encoding="utf-8") as fh:
            block = fh.read().split(build.MARKS[0])[1].split(build.MARKS[1])[0]
        assert block == "\n" + build.summary(shipped, link)
        for e in shipped["entries"]:  # every measured cell's ratio is in the table
            if e["status"] != "not measured" and e["quantity"] != "mae-eps-peak":
                assert f"{build._where(e)}: {e['ratio']:.2f}" in block


def test_verdict_arithmetic():
    build = _build()
    pts = [dict(label=f"mae@eps={v}", computed=None, value=v, last_mean=m, last_std=0.01, n=2)
           for v, m in ((2, 0.10), (3, 0.40), (4, 0.30), (6, 0.10))]
    pts.append(dict(label="mae*", computed="match", value=3.5, last_mean=0.34, last_std=0.0, n=2))
    v = build.verdict(pts, "mae*")
    assert v["best_value"] == 3 and v["ratio"] == pytest.approx(0.85)
    assert v["steps"] == pytest.approx(0.5) and v["status"] == "shifted"
    assert (v["below_within_1.5x"], v["above_within_1.5x"]) == (1, 1)  # 3 and 4 (2 < 3.5/1.5)
    pts[-1]["last_mean"] = 0.2
    assert build.verdict(pts, "mae*")["status"] == "fails"
    # at K = 100 chance is 1 %: a sweep whose best is 4.9 % has nothing to compare
    low = [dict(p, last_mean=p["last_mean"] / 8.1) for p in pts]
    assert build.verdict(low, "mae*", classes=100)["status"] == "nothing learns"
    assert build.verdict(pts, "mae*", classes=100)["status"] == "fails"


def _entry(opt, status, ratio, k=1000):
    return dict(quantity="mae-eps", loss="mae", parameter="eps", optimizer=opt, classes=k,
                model="mlp1024", noise="symmetric:0.4", status=status, ratio=ratio,
                computed=4.71, best_fixed=3.0 if status != "holds" else 4.0)


def test_note_says_where_it_holds_and_where_not(monkeypatch):
    monkeypatch.setattr(validity, "_entries", lambda: [
        _entry("sgd", "holds", 1.06), _entry("sgd", "holds", 1.01, k=100),
        _entry("adamw", "shifted", 0.84)])
    n = validity.note("mae-eps")
    assert n.status == "caution" and len(n.cells) == 3
    assert "SGD holds at K = 1000 (1.06×), K = 100 (1.01×); AdamW off the optimum at " \
        "K = 1000 (0.84×: ε = 3 beat 4.71)" in n.line
    assert validity.note("mae-eps", optimizer="sgd").status == "validated"
    assert validity.note("mae-eps", optimizer="adam").status == "caution"  # Adam: AdamW's cells
    assert validity.note(None).status == "not validated"
    assert validity.note("gce-eps").status == "not validated"
    assert "\n" not in n.line
    dead = dict(_entry("sgd", "nothing learns", 0.5), best_top1=0.9, computed_top1=0.45)
    monkeypatch.setattr(validity, "_entries", lambda: [dead])
    n = validity.note("mae-eps")
    assert n.status == "caution" and "nothing in the sweep learned at K = 1000 (best 0.9 %, " \
        "the computed value 0.45 %)" in n.line


def test_quantities():
    q = validity.quantity_of
    assert q("epsilon", "mae") == "mae-eps" and q("epsilon", "mae", criterion="peak") == \
        "mae-eps-peak"
    assert q("epsilon", "mae", reference_classes=20) is None  # the map used K_ref = 10
    assert q("epsilon", "nce") is None and q("epsilon", "gce") == "gce-eps"
    assert q("transfer", "gce", param="q", reference_classes=10) == "gce-q-transfer"
    assert q("transfer", "nce-agce", param="alpha", reference_classes=100) == "nce-agce-alpha"


def test_commands_carry_the_verdict():
    r = ok("epsilon", "--classes", "1000", "--json")
    got = json.loads(r.stdout)["validation"]
    want = validity.note("mae-eps").record()
    assert got == json.loads(json.dumps(want))
    text = ok("epsilon", "--classes", "1000").stdout
    assert f"in training  {want['note']}" in " ".join(text.split("\n"))
    r = ok("q", "--from", "100", "--to", "1000", "--json")
    assert json.loads(r.stdout)["validation"]["status"] == \
        validity.note("gce-q-transfer", reference_classes=100).status
    r = ok("epsilon", "--classes", "1000", "--loss", "agce", "--json")
    assert json.loads(r.stdout)["validation"]["status"] == "not validated"
    assert run("epsilon", "--classes", "1000").exit_code == 0


def test_nn_modules_carry_the_verdict():
    pytest.importorskip("torch")
    import calibrate_cli as cal

    crit = cal.nn.loss("mae", classes=1000, logit_bias="auto")
    assert crit.to_dict()["validation"] == {
        "epsilon": {"status": validity.note("mae-eps").status,
                    "note": validity.note("mae-eps").line}}
    gce = cal.nn.loss("gce", classes=1000, calibrate={"q": 10})
    want = validity.note("gce-q-transfer", reference_classes=10)
    assert gce.to_dict()["validation"] == {"q": {"status": want.status, "note": want.line}}
    assert want.status == "caution"  # the transfer from K = 10 is off the optimum in the map
    assert cal.nn.loss("mae", classes=1000).to_dict()["validation"] == {}
