"""The first hour, as a new user meets it: bare ``calibrate`` prints one short usage, help sent
to a pipe keeps every option name whole, help states the defaults the code uses, and
``tables --quick`` never writes over the full tables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import typer

from calibrate_cli.cli import app as A
from helpers import REPO, env, load_json, ok, one_line_error, run


def _plain_env(tmp_path):
    """A fresh process's environment with no width set: what a pipe gets."""
    e = env(tmp_path)
    for key in ("COLUMNS", "TERMINAL_WIDTH", "FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS"):
        e.pop(key, None)
    return e


def _calibrate(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "calibrate_cli", *args], cwd=tmp_path,
                          env=_plain_env(tmp_path), capture_output=True, text=True, timeout=300)


def _option_names(command: str) -> list[str]:
    group = typer.main.get_command(A.build_app(command))
    names = []
    for param in group.commands[command].params:
        names += [o for o in param.opts + param.secondary_opts if o.startswith("-")]
    return names


# ------------------------------------------------------------------ bare 'calibrate'

def test_bare_calibrate_prints_one_short_usage(tmp_path):
    r = _calibrate(tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert r.stdout.count("Usage:") == 1 and lines[0].startswith("Usage: calibrate")
    assert len(lines) <= 20 and max(len(ln) for ln in lines) <= 80
    shown = re.findall(r"^  calibrate (\w+)", r.stdout, re.M)
    assert len(shown) == len(set(shown)) == 5 and set(shown) <= set(A.COMMANDS)
    assert f"All {len(A.COMMANDS)} commands: calibrate --help" in r.stdout
    # --help is still the whole help, once
    full = _calibrate(tmp_path, "--help")
    assert full.returncode == 0 and full.stdout.count("Usage:") == 1
    assert all(re.search(rf"\b{c}\b", full.stdout) for c in A.COMMANDS)


def test_every_example_of_the_usage_parses():
    for example, _ in A.FIRST_COMMANDS:
        words = [w.strip("'") for w in example.split()]
        # the options exist for that command: its --help accepts them (nothing runs)
        r = run(*words, "--help")
        assert r.exit_code == 0, (example, r.stderr)
        names = _option_names(words[0])
        assert all(w in names for w in words[1:] if w.startswith("--")), example


# ------------------------------------------------------------------ help in a pipe

def test_train_help_in_a_pipe_holds_every_option_name_whole(tmp_path):
    r = _calibrate(tmp_path, "train", "--help")  # stdout is a pipe: 'calibrate train --help | cat'
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    names = _option_names("train")
    assert "--train-samples-per-class" in names and len(names) > 40
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", r.stdout), name


@pytest.mark.parametrize("command", A.COMMANDS)
def test_no_help_is_cut_off_a_terminal(command):
    h = ok(command, "--help").stdout  # CliRunner's stdout is not a terminal either
    assert "…" not in h, command
    for name in _option_names(command):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", h), (command, name)


def test_help_whose_reader_leaves_early_is_no_error(tmp_path):
    # 'calibrate train --help | head -3': the pipe closes; no message blames the user's code
    p = subprocess.Popen([sys.executable, "-m", "calibrate_cli", "train", "--help"],
                         cwd=tmp_path, env=_plain_env(tmp_path), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=120)
    assert "error" not in err and "sys.exit" not in err, err


# ------------------------------------------------------------------ defaults in the help

def _samples_help() -> tuple[int, int]:
    h = " ".join(ok("epsilon", "--help").stdout.replace("│", " ").split())
    builtin = re.search(r"Default (\d+) for the built-in ones \(([^)]*)\)", h)
    own = re.search(r"; (\d+) for your own losses", h)
    assert builtin and own, h
    return int(builtin.group(1)), int(own.group(1))


@pytest.mark.parametrize("loss,extra", [
    ("nce-mae", ["--criterion", "peak"]), ("nfl", ["--criterion", "peak"]),
    ("bitemp", ["--criterion", "peak"]), ("nf-mae", ["--criterion", "peak"]),
    ("sce", ["--preset", "cifar100"]),  # RCE's softmax clamp
])
def test_samples_help_states_the_default_the_solver_uses(loss, extra):
    builtin, _ = _samples_help()
    r = ok("epsilon", "--loss", loss, *extra, "--classes", "20", "--json")
    used = json.loads(r.stdout)["monte_carlo"]
    assert used is not None and used["samples"] == builtin, (loss, used)


def test_samples_help_states_the_default_for_your_own_losses(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    _, own = _samples_help()
    # a module name of its own: another test imports a 'mylosses' of other content
    (tmp_path / "samples_help_loss.py").write_text(
        "import torch\n\ndef mae(logits, target):\n"
        "    p = torch.softmax(logits, 1).gather(1, target[:, None])[:, 0]\n"
        "    return 2 * (1 - p)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = ok("epsilon", "--loss", "samples_help_loss:mae", "--classes", "20", "--criterion", "peak",
           "--json")
    assert json.loads(r.stdout)["monte_carlo"]["samples"] == own


# ------------------------------------------------------------------ tables --quick

def _snapshot(folder):
    return {p: (os.path.getmtime(os.path.join(folder, p)),
                open(os.path.join(folder, p), "rb").read()) for p in sorted(os.listdir(folder))}


def test_tables_quick_leaves_the_full_tables_untouched(tmp_path, monkeypatch):
    import shutil

    shutil.copytree(os.path.join(REPO, "tables"), tmp_path / "tables")
    before = _snapshot(tmp_path / "tables")
    monkeypatch.chdir(tmp_path)
    r = ok("tables", "--quick", "--only", "q")  # as in a clone: the default folder
    assert _snapshot(tmp_path / "tables") == before
    quick = load_json(tmp_path / "tables-quick" / "q.json")
    assert quick["header"]["command"] == "calibrate tables --quick" and len(quick["rows"]) == 3
    assert "tables-quick" in r.stderr
    # pointed at the full tables, it refuses and writes nothing
    one_line_error(run("tables", "--quick", "--out-dir", "tables"), 2, "full tables")
    one_line_error(run("tables", "--quick", "--only", "q", "-o", "tables"), 2, "(q)")
    assert _snapshot(tmp_path / "tables") == before
    # quick tables may be written over by quick ones
    ok("tables", "--quick", "--only", "q")
