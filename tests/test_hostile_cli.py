"""Every option of every command under hostile values (issue 18's property test).

Each option gets the values of its kind: numbers 0, -1, nan, inf, 1e300 and a huge integer;
text empty, unicode, a path that does not exist and a folder; files empty, truncated and of the
wrong format. Whatever the value, the outcome is a usage error (exit 2) or another documented
failure (exit 1: no solution) with exactly one line on stderr, no traceback, no internal error
and no new file; or success, whose --json output is strict JSON. The options are read from the
commands themselves, so a new option is covered when it is added.

Cheap by construction (about 800 invocations in this process): the calibration commands at
K = 10, ``measure`` on a tiny MLP, ``train --print-config`` and ``validate --emit-commands``
(which check every setting without training), ``tables --quick --only q``, ``plot delta-mae``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import typer

from helpers import APP, run

GROUP = typer.main.get_command(APP)
NUMBERS = ["0", "-1", "nan", "inf", "1e300", "99999999999999999999999"]
STRINGS = ["", "ü∂ñ‮z", "missing/no/such", "@DIR"]
FILES = ["@EMPTY.npy", "@TRUNC.npy", "@WRONG.npy", "@EMPTY.json", "@TRUNC.json", "@WRONG.yaml"]
#: options that name an input file or folder: they get FILES too
FILE_OPTIONS = {"--logits", "--config", "--data-dir", "--validate", "--imagenet-val-dir"}
TINY = ["--classes", "10", "--train-per-class", "4", "--test-per-class", "2", "--model", "mlp8"]
BASES = {
    "epsilon": ["epsilon", "--classes", "10", "--json"],
    "q": ["q", "--from", "10", "--to", "100", "--json"],
    "transfer": ["transfer", "--loss", "gce", "--param", "q", "--from", "10", "--to", "100",
                 "--json"],
    "curve": ["curve", "--classes", "10", "--points", "5", "--json"],
    "losses": ["losses", "--json"],
    "measure": ["measure", "--model", "mlp8", "-k", "10", "--batches", "1", "--batch-size", "8",
                "--json"],
    "tables": ["tables", "--quick", "--only", "q", "--out-dir", "t"],
    "plot": ["plot", "delta-mae", "--out", "f.png"],
    "train": ["train", *TINY, "--loss", "mae", "-q", "--print-config"],
    "validate": ["validate", "--losses", "mae", "--noise", "0", "--seeds", "0", "--epochs", "1",
                 *TINY, "--out", "v", "--emit-commands"],
}
#: what an option needs beside it to be used at all (else any value is refused for that)
CONTEXT = {
    "--atoms": ["--logits", "@GOOD.npy"],
    "--input-shape": ["--from-model", "mlp8"],
    "--target": ["--criterion", "target"],
    "--calibrate-from": ["--calibrate", "q", "--loss", "gce"],
    "--step-size": ["--schedule", "step"],
    "--gamma": ["--schedule", "step"],
    "--bias-criterion": ["--logit-bias", "auto"],
    "--bias-branch": ["--logit-bias", "auto"],
}
#: plot's options belong to figures other than its base's
HISTOGRAM = ["plot", "logit-histogram", "--out", "f.png"]
PLOT = {"--logits": HISTOGRAM, "--model": HISTOGRAM,
        "--dataset": HISTOGRAM, "--data-dir": HISTOGRAM, "--classes": HISTOGRAM,
        "--validate": ["plot", "accuracy", "--out", "f.png"]}
#: not tried: every text is a folder 'plot all' may create and fill (seconds per figure)
SKIP = {("plot", "--out-dir")}


def _options(command):
    for p in GROUP.commands[command].params:
        if p.param_type_name != "option" or getattr(p, "is_flag", False) or p.name == "help":
            continue
        yield p.opts[0], p.type.name


CASES = [(c, opt, kind) for c in BASES for opt, kind in _options(c) if (c, opt) not in SKIP]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The hostile files (and one good logits file) by placeholder."""
    root = tmp_path_factory.mktemp("inputs")
    good = root / "good.npy"
    np.save(good, np.random.default_rng(0).normal(0, 0.5, size=(20, 10)))
    whole = good.read_bytes()
    made = {"@GOOD.npy": good}
    for name, data in [("EMPTY.npy", b""), ("TRUNC.npy", whole[:len(whole) // 2]),
                       ("WRONG.npy", b"logits,1,2\n3,4\n"), ("EMPTY.json", b""),
                       ("TRUNC.json", b'{"epochs": 2, "lr": '), ("WRONG.yaml", b"\x00\xff\x00 [")]:
        (root / name).write_bytes(data)
        made["@" + name] = root / name
    return made


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, dirs, fs in os.walk(root) for f in fs + dirs)


def _args(command, option, value, files, folder):
    """The base invocation of ``command`` with ``option value`` (and what the option needs)."""
    base = list(PLOT.get(option, BASES[command]) if command == "plot" else BASES[command])
    if option in base:  # the base's own value is replaced
        i = base.index(option)
        del base[i:i + 2]
    extra = [] if command == "plot" else [x for x in CONTEXT.get(option, []) if x not in base]
    value = str(folder) if value == "@DIR" else value
    return [str(files.get(x, x)) for x in base + extra + [option, value]]


def _check(r, args, before, after):
    where = " ".join(args)
    out = (r.stdout or "") + (r.stderr or "")
    assert "Traceback" not in out and "internal error" not in out, where + "\n" + out
    if r.exit_code == 0:
        if "--json" in args or "--print-config" in args:
            json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{where}: {c} in JSON"))
        return
    assert r.exit_code in (1, 2), (where, r.exit_code, out)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (where, r.stderr)
    assert before == after, (where, sorted(set(after) - set(before)))


@pytest.mark.parametrize("command", sorted(BASES))
def test_each_base_invocation_works(command, tmp_path, monkeypatch):
    """The valid invocation every hostile one changes by one option."""
    monkeypatch.chdir(tmp_path)
    r = run(*BASES[command])
    assert r.exit_code == 0, (r.stdout, r.stderr)


@pytest.mark.parametrize("command,option,kind", CASES, ids=[f"{c} {o}" for c, o, _ in CASES])
def test_hostile_values(command, option, kind, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALIBRATE_CACHE_DIR", str(tmp_path.parent / "cache"))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    values = NUMBERS if kind in ("integer", "float") else STRINGS
    if option in FILE_OPTIONS:
        values = values + FILES
    if option == "--set":
        values = [f"{'q' if command in ('q', 'transfer') else 'scale'}={v}" for v in NUMBERS] \
            + STRINGS
    for value in values:
        args = _args(command, option, value, files, folder)
        before = _tree(tmp_path)
        r = run(*args)
        _check(r, args, before, _tree(tmp_path))


def test_cases_cover_every_command_and_kind():
    """The property test reads its options from the commands: each has some, and every kind."""
    assert {c for c, _, _ in CASES} == set(BASES) - {"losses"}
    assert {k for _, _, k in CASES} >= {"integer", "float", "str"}
    assert len(CASES) > 150


@pytest.mark.parametrize("args", [
    ["q", "--from", "10", "--to", "100", "--logits", ""],
    ["epsilon", "-k", "10", "--from-model", ""],
    ["transfer", "--loss", "gce", "--param", "q", "--from", "10", "--to", "100", "--preset", ""],
    ["curve", "-k", "10", "--device", " "],
    ["epsilon", "-k", "10", "--input-shape", ""],
    ["plot", "logit-histogram", "--logits", "", "--out", "f.png"],
])
def test_an_empty_value_is_refused_not_taken_for_absent(args, tmp_path, monkeypatch):
    """`--logits "$FILE"` with FILE unset gave the Gaussian's answer with exit 0."""
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    assert r.exit_code == 2 and "needs a value" in r.stderr and r.stderr.count("\n") == 1, (
        r.stdout, r.stderr)


@pytest.mark.parametrize("args", [
    ["train", *TINY, "--data-dir", "data", "--print-config"],
    ["measure", "--model", "mlp8", "-k", "10", "--data-dir", "data"],
    ["measure", "--model", "mlp8", "-k", "10", "--dataset", "glyphs", "--data-dir", "data"],
])
def test_a_data_folder_the_dataset_would_ignore_is_refused(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    r = run(*args)
    assert r.exit_code == 2 and "--data-dir" in r.stderr and r.stderr.count("\n") == 1, r.stderr
