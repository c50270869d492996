"""``examples/slurm/array.sh``, run as a Slurm array task would run it: line
``$SLURM_ARRAY_TASK_ID`` of the file of ``calibrate validate --emit-commands``, with that line's
exit status; a line run again does nothing; a task id outside the file is one clear error."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from helpers import REPO, cli, env  # noqa: E402

SCRIPT = os.path.join(REPO, "examples", "slurm", "array.sh")
#: the smallest grid of test_grid_runs.py: two runs of a few seconds
GRID = ["--classes", "10", "--train-per-class", "6", "--test-per-class", "3", "--model", "mlp32",
        "--epochs", "2", "--threads", "1", "--noise", "0.4", "--seeds", "0", "--losses", "ce,mae*",
        "-q", "--out", "grid"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


def _env(tmp_path, task=None):
    """A node's environment: ``calibrate`` on the PATH (this checkout, this Python), no Slurm
    variables but the task id."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.is_dir():
        bin_dir.mkdir()
        exe = bin_dir / "calibrate"
        exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m calibrate_cli "$@"\n')
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    e = {k: v for k, v in env(tmp_path).items() if not k.startswith("SLURM_")}
    e["PATH"] = str(bin_dir) + os.pathsep + e.get("PATH", "")
    if task is not None:
        e["SLURM_ARRAY_TASK_ID"] = str(task)
    return e


def task(tmp_path, task_id, *args):
    return subprocess.run(["bash", SCRIPT, *args], cwd=tmp_path, env=_env(tmp_path, task_id),
                          capture_output=True, text=True, timeout=300)


def _metrics(tmp_path, line):
    args = shlex.split(line)
    out = args[args.index("--out") + 1]
    with open(tmp_path / out / "metrics.json", encoding="utf-8") as fh:
        return json.load(fh)


def test_array_tasks_run_their_lines_once(tmp_path):
    emitted = cli(tmp_path, "validate", *GRID, "--emit-commands")
    assert emitted.returncode == 0, emitted.stderr
    lines = emitted.stdout.splitlines()
    assert len(lines) == 2 and all(" --continue" in x for x in lines)
    (tmp_path / "commands.txt").write_text(emitted.stdout)
    assert not (tmp_path / "grid").exists()

    for i in (1, 2):
        r = task(tmp_path, i, "commands.txt")
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"task {i} of 2" in r.stderr and lines[i - 1] in r.stderr
        m = _metrics(tmp_path, lines[i - 1])
        assert (m["status"], m["epochs_done"]) == ("complete", 2)

    # line 1 again (a resubmitted array): nothing to do, exit 0, the run untouched
    first = tmp_path / shlex.split(lines[0])[shlex.split(lines[0]).index("--out") + 1]
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    r = task(tmp_path, 1)  # commands.txt is the default file
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nothing to do" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == before

    # the grid sees both runs: nothing left to emit, --report-only tabulates them
    assert cli(tmp_path, "validate", *GRID, "--emit-commands").stdout == ""
    report = cli(tmp_path, "validate", *GRID, "--report-only")
    assert report.returncode == 0 and "2 of 2 runs complete" in report.stderr, report.stderr
    with open(tmp_path / "grid" / "results.json", encoding="utf-8") as fh:
        assert [x["status"] for x in json.load(fh)["runs"]] == ["complete"] * 2

    # a task id outside the file, not a number, or missing: one line, non-zero, nothing run
    for bad, needle in ((3, "task 3 is beyond the 2 line(s) of 'commands.txt'"),
                        (0, "not a line number"), ("two", "not a line number"),
                        (None, "SLURM_ARRAY_TASK_ID is not set")):
        r = task(tmp_path, bad, "commands.txt")
        assert r.returncode == 2 and r.stdout == "", (bad, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert needle in r.stderr, r.stderr
    r = task(tmp_path, 1, "missing.txt")
    assert r.returncode == 2 and "cannot read the commands file 'missing.txt'" in r.stderr

    # the same grid with fewer epochs: its line cannot cut a 2-epoch run back to 1, so it fails
    # (exit 2, one line) and changes nothing; it used to print "nothing to train", exit 0 and
    # rewrite the run's records, and the grid emitted the line again and again
    # (the grid itself refuses to emit it; a line written by hand meets the same check)
    fewer = [("1" if a == "2" and GRID[i - 1] == "--epochs" else a) for i, a in enumerate(GRID)]
    emitted = cli(tmp_path, "validate", *fewer, "--emit-commands")
    assert emitted.returncode == 2 and "more than --epochs 1" in emitted.stderr, emitted.stderr
    assert " --epochs 2 " in lines[0]
    (tmp_path / "fewer.txt").write_text(lines[0].replace(" --epochs 2 ", " --epochs 1 ") + "\n")
    records = {p.name: p.read_bytes() for p in first.iterdir()}
    r = task(tmp_path, 1, "fewer.txt")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.splitlines()[-1] == (
        f"error: --continue: '{shlex.split(lines[0])[-3]}' holds this run with 2 epochs, more "
        "than --epochs 1; give another --out"), r.stderr
    assert {p.name: p.read_bytes() for p in first.iterdir()} == records


def test_array_task_exits_with_its_line_s_status(tmp_path):
    (tmp_path / "lines.txt").write_text("true\nexit 3\n")
    assert task(tmp_path, 1, "lines.txt").returncode == 0
    assert task(tmp_path, 2, "lines.txt").returncode == 3
