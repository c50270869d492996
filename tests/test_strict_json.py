"""Every JSON the tool writes is strict JSON: parsed here with a parser that refuses NaN and
Infinity (as jq and JavaScript do), for every file a training run, a validate grid, tables and
measure write, and for every --json output; metrics.csv holds no 'nan' or 'inf' either.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from helpers import TINY, ok, run


def _refuse(constant):
    raise ValueError(f"{constant} is not JSON")


def strict(text: str):
    return json.loads(text, parse_constant=_refuse)


def _every_file(root):
    for d, _, names in os.walk(root):
        for n in names:
            yield os.path.join(d, n)


def _check_folder(root) -> int:
    """Parse every .json strictly and check every .csv; the number of JSON files."""
    seen = 0
    for path in _every_file(root):
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                strict(fh.read())
            seen += 1
        elif path.endswith(".csv"):
            with open(path, encoding="utf-8") as fh:
                cells = fh.read().replace("\n", ",").split(",")
            assert not {c.strip().lower() for c in cells} & {"nan", "inf", "-inf"}, path
    return seen


def test_the_strict_parser_refuses_what_json_dumps_writes_by_default():
    with pytest.raises(ValueError):
        strict(json.dumps({"x": math.nan}))
    from calibrate_cli.utils.strict_json import dumps

    assert strict(dumps({"x": math.nan, "y": [np.float64(math.inf), np.int64(2)]})) == {
        "x": None, "y": [None, 2]}


pytest.importorskip("torch")


@pytest.mark.parametrize("lr", [0.1, 1e10, 1e30], ids=["normal", "huge logits", "diverged"])
def test_every_file_of_a_run_is_strict(tmp_path, lr):
    out = tmp_path / "run"
    r = run("train", *TINY, "--epochs", 2, "--loss", "mae", "--lr", lr, "--out", out, "--json")
    assert r.exit_code in (0, 1), r.stderr
    if r.exit_code == 0:
        assert strict(r.stdout)["status"] == "complete"
    names = set(os.listdir(out))
    assert {"config.json", "noise.json", "metrics.json", "metrics.csv"} <= names
    assert _check_folder(out) == 3
    status = strict((out / "metrics.json").read_text())["status"]
    assert status == ("diverged" if lr == 1e30 else "complete")


def test_every_file_of_a_grid_is_strict(tmp_path):
    out = tmp_path / "grid"
    r = run("validate", "--losses", "ce,mae", "--noise", "0", "--seeds", "0", "--epochs", 1,
            "--classes", 4, "--train-per-class", 4, "--test-per-class", 2, "--model", "mlp8",
            "--threads", 1, "--out", out, "--json", "-q")
    assert r.exit_code == 0, r.stderr
    strict(r.stdout)
    assert _check_folder(out) >= 2 + 2 * 3  # results and grid, three per run


def test_tables_measure_and_every_json_output_are_strict(tmp_path):
    ok("tables", "--quick", "--only", "q", "--out-dir", tmp_path / "t")
    assert _check_folder(tmp_path / "t") == 1
    z = tmp_path / "z.npz"
    strict(ok("measure", "--model", "mlp8", "-k", 10, "--batches", 1, "--batch-size", 8, "--out",
              z, "--json").stdout)
    with np.load(z) as f:
        strict(str(f["meta"]))
    for args in (["epsilon", "-k", 10], ["q", "--from", 10, "--to", 100], ["losses"],
                 ["curve", "-k", 10, "--points", 5],
                 ["transfer", "--loss", "gce", "--param", "q", "--from", 10, "--to", 100]):
        strict(ok(*args, "--json").stdout)
    # a curve far out where <δ_k> underflows: numbers, never NaN
    d = strict(ok("curve", "-k", 10, "--points", 3, "--z-min", -400, "--z-max", 400,
                  "--json").stdout)
    assert all(v is None or math.isfinite(v) for row in d["delta"] for v in row)
