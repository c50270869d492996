"""What the command-line tests share: the app invoked in-process, the checks of an outcome
(success, or one line on stderr with its exit code and no traceback), reading a result file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from calibrate_cli.cli.app import build_app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = build_app()
#: a training run of a few seconds
TINY = ["--classes", "10", "--train-per-class", "12", "--test-per-class", "4",
        "--model", "mlp64", "--batch-size", "32", "-q"]


def run(*args):
    """``calibrate ARGS`` in this process (stdout and stderr apart)."""
    return CliRunner().invoke(APP, [str(a) for a in args])


def ok(*args):
    r = run(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return r


def one_line_error(r, code, needle=""):
    """``r`` failed with ``code`` and exactly one line on stderr, 'error: …' holding ``needle``."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    err = r.stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + r.stdout
    assert needle.lower() in err.lower(), err
    return err


def fails(code, pattern, *args):
    """``calibrate ARGS`` fails with ``code`` and one line holding ``pattern``; that line."""
    return one_line_error(run(*args), code, pattern).strip()


def load_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def env(tmp_path, **extra):
    """The environment of a fresh ``calibrate`` process: this checkout, one thread, a cache of
    its own under ``tmp_path``."""
    return dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1",
                CALIBRATE_CACHE_DIR=str(tmp_path / "cache"), **extra)


def cli(tmp_path, *args, **kw):
    """``calibrate ARGS`` in a fresh process, cwd ``tmp_path``."""
    return subprocess.run([sys.executable, "-m", "calibrate_cli", *map(str, args)], cwd=tmp_path,
                          env=env(tmp_path), capture_output=True, text=True, timeout=300, **kw)
