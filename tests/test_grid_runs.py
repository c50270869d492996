"""A grid's runs: one canonical value per point, one folder per distinct run, every invocation
on record, no ± with one seed, and ``--emit-commands`` lines that a cluster runs in any order
(``xargs -P 2`` here) with the same results as ``--jobs 2``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from calibrate_cli.train.config import resolve_config  # noqa: E402
from calibrate_cli.train.provenance import run_key, train_command  # noqa: E402
from calibrate_cli.train.sweep import parse_sweep  # noqa: E402
from calibrate_cli.train.validate import parse_losses, run_config  # noqa: E402
from calibrate_cli.utils.numbers import number_text  # noqa: E402
from helpers import env, load_json, one_line_error, run  # noqa: E402

GRID = ["--classes", "10", "--train-per-class", "6", "--test-per-class", "3", "--model", "mlp32",
        "--epochs", "2", "--threads", "1", "--noise", "0.4", "-q"]


def test_number_text_reads_back_exactly():
    for x in (4.0, 0.1, 0.1234567, 1 / 3, 1e-5, 1234567.0, 1e16, -2.5, 4.7103):
        assert float(number_text(x)) == x
    assert number_text(4.0) == "4" and number_text(-0.0) == "0" and number_text(0.1) == "0.1"


def test_a_sweep_trains_the_value_it_reports(tmp_path):
    """q = 0.1234567 was trained as 0.123457 (six digits) while the report said 0.1234567."""
    sweep = parse_sweep("q=0.1234567,0.5", "gce")
    point = sweep.points[0]
    assert point.value == 0.1234567 and point.variant.label == "gce@q=0.1234567"
    cfg = run_config({}, point.variant, "symmetric:0.4", 0, str(tmp_path))
    assert cfg.loss_params == {"q": 0.1234567}
    # the same for a fixed ε and a noise rate
    (eps,) = parse_losses("mae@eps=1.23456789")
    assert run_config({}, eps, "none", 0, str(tmp_path)).logit_bias == "1.23456789"
    assert resolve_config(cli_values={"logit_bias": "1.23456789"}).logit_bias == "1.23456789"
    from calibrate_cli.train.validate import parse_noise_list

    assert parse_noise_list("0.1234567") == ["symmetric:0.1234567"]


def test_calibrated_from_a_value():
    (v,) = parse_losses("gce@calibrated:q:10:0.1")
    assert (v.calibrate, v.calibrate_from, v.params) == ("q", 10, (("q", 0.1),))
    sweep = parse_sweep("q=0.2,calibrated:10:0.1", "gce")
    assert sweep.points[1].computed == "calibrated:10:0.1"
    for bad, needle in (("gce@calibrated:q:10:5", "outside its valid range"),
                        ("gce@calibrated:q:1", "[2, 10^9]"),
                        ("gce@calibrated:q:99999999999", "[2, 10^9]"),
                        ("gce@q=nan", "not a finite number")):
        with pytest.raises(ValueError, match=None) as e:
            parse_losses(bad)
        assert needle in str(e.value)


def test_run_key_sees_through_labels():
    base = {"loss_preset": "cifar100", "classes": 10}
    key = {}
    for label in ("gce", "gce@q=0.7", "gce@q=0.5", "mae", "mae@eps=0", "mae*"):
        (v,) = parse_losses(label)
        key[label] = run_key(run_config(base, v, "symmetric:0.4", 0, "x").to_dict())
    assert key["gce"] == key["gce@q=0.7"] != key["gce@q=0.5"]
    assert key["mae"] == key["mae@eps=0"] != key["mae*"]


def test_a_run_under_two_names_is_trained_once_and_every_invocation_recorded(tmp_path):
    out = tmp_path / "g"
    r = run("validate", *GRID, "--seeds", "0", "--losses", "mae", "--out", out)
    assert r.exit_code == 0, r.stderr
    r = run("validate", *GRID, "--seeds", "0", "--losses", "mae", "--sweep", "eps=0,1.5",
            "--out", out)
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(out / "runs")) == ["mae", "mae-at-eps-1.5"]  # eps=0 is mae
    sweep = load_json(out / "sweep-mae-eps.json")
    zero = next(x for x in sweep["runs"] if x["label"] == "mae@eps=0")
    assert zero["alias_of"] == "runs/mae/symmetric-0.4/seed-0" and zero["status"] == "complete"
    grid = load_json(out / "grid.json")
    inv = grid["invocations"]  # (in-process, "command" is the test's own argv)
    assert [(e["kind"], e["trains"]) for e in inv] == [
        ("grid", ["runs/mae/symmetric-0.4/seed-0"]),
        ("sweep", ["runs/mae-at-eps-1.5/symmetric-0.4/seed-0"])]
    assert len(sweep["invocations"]) == 1 and sweep["invocations"][0]["complete_runs"] == 2
    # one seed: the mean alone, no ± 0.00
    r = run("validate", *GRID, "--seeds", "0", "--losses", "mae", "--out", out)
    assert "±" not in r.stdout.split("\n\n")[1].split("\n")[2], r.stdout


def test_a_failed_check_trains_and_writes_nothing(tmp_path):
    out = tmp_path / "g"
    one_line_error(run("validate", *GRID, "--seeds", "0", "--losses", "ce,gce", "--preset",
                       "cifar1000", "--out", out, "--emit-commands"), 2, "none of the grid")
    assert not out.exists()
    for sweep in ("q=0.5,calibrated:99999999999", "q=0.5,calibrated:10:9", "q=0.5,inf"):
        one_line_error(run("validate", *GRID, "--seeds", "0", "--losses", "gce", "--sweep",
                           sweep, "--out", out), 2)
        assert not out.exists()


def test_emitted_commands_resolve_to_the_grid_s_runs(tmp_path):
    base = {"classes": 10, "train_samples_per_class": 6, "loss_preset": "cifar100",
            "optimizer": "adamw", "lr": 1e-3, "epochs": 3, "threads": 1}
    for label in ("gce@calibrated:q:10:0.1", "mae*peak", "mae@eps=4.7103", "nce-agce"):
        (v,) = parse_losses(label)
        cfg = run_config(base, v, "pairflip:0.4", 1, str(tmp_path / "r"))
        line = train_command(cfg)
        args = line.split()[2:]
        assert args[-2:] == ["--continue", "--quiet"]
        r = run("train", *args[:-2], "--print-config")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout) == cfg.to_dict(), label


def test_emit_commands_run_by_xargs_equal_jobs_2(tmp_path):
    """The emitted lines, run two at a time by xargs (and then once more: nothing to do), give
    the runs of ``--jobs 2`` to the last digit; ``--report-only`` collects them."""
    grid = [*GRID, "--seeds", "0", "--losses", "ce,mae*,gce@q=0.7,gce", "--preset", "cifar100"]
    emitted = run("validate", *grid, "--out", tmp_path / "e", "--emit-commands")
    assert emitted.exit_code == 0, emitted.stderr
    lines = emitted.stdout.strip().split("\n")
    assert len(lines) == 3 and not (tmp_path / "e").exists()  # gce is gce@q=0.7: 3 runs
    (tmp_path / "cmds.txt").write_text(emitted.stdout)
    e = env(tmp_path)
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e["PATH"]
    for _ in range(2):  # the second pass finds every run complete
        p = subprocess.run(["xargs", "-P", "2", "-I{}", "sh", "-c", "{}"], stdin=open(
            tmp_path / "cmds.txt"), cwd=tmp_path, env=e, capture_output=True, text=True,
            timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("nothing to do") == 3
    again = run("validate", *grid, "--out", tmp_path / "e", "--emit-commands")
    assert again.exit_code == 0 and again.stdout == ""
    collected = run("validate", *grid, "--out", tmp_path / "e", "--report-only")
    assert collected.exit_code == 0, collected.stderr
    jobs = run("validate", *grid, "--out", tmp_path / "j", "--jobs", "2")
    assert jobs.exit_code == 0, jobs.stderr
    a, b = (load_json(tmp_path / d / "results.json") for d in ("e", "j"))
    assert [r["test_top1"] for r in a["runs"]] == [r["test_top1"] for r in b["runs"]]
    assert [r["status"] for r in a["runs"]] == ["complete"] * 4


def test_report_only_beside_a_running_grid_writes_nothing(tmp_path):
    """While a grid holds its folder's lock, --report-only prints the tables and writes none of
    the files that grid writes when it ends; once the folder is free it writes them."""
    from calibrate_cli.utils.lock import lock_folder

    out = tmp_path / "g"
    grid = [*GRID, "--seeds", "0", "--losses", "mae", "--out", out]
    assert run("validate", *grid).exit_code == 0
    (out / "results.md").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    with lock_folder(out):  # a grid training there
        r = run("validate", *grid, "--report-only")
        assert r.exit_code == 0, r.stderr
        assert "| mae |" in r.stdout and "printed, not written" in r.stderr
        r = run("validate", *grid[:-4], "--losses", "mae", "--sweep", "eps=0,1", "--out", out,
                "--report-only")
        assert r.exit_code == 0 and "printed, not written" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert run("validate", *grid, "--report-only").exit_code == 0
    assert (out / "results.md").is_file()


def test_a_grid_of_fewer_epochs_neither_reports_nor_reemits_a_longer_run(tmp_path):
    """A run of 2 epochs in a grid asked for 1: emitted forever and tabulated as a 1-epoch
    result before; now the grid says which run and exits 2, and the report counts it not."""
    out = str(tmp_path / "g")
    assert run("validate", *GRID, "--losses", "ce", "--seeds", "0", "--out", out).exit_code == 0
    fewer = [a if a != "2" or GRID[i - 1] != "--epochs" else "1" for i, a in enumerate(GRID)]
    r = run("validate", *fewer, "--losses", "ce", "--seeds", "0", "--out", out,
            "--emit-commands")
    one_line_error(r, 2, "more than --epochs 1")
    before = load_json(os.path.join(out, "results.json"))
    for extra in (["--report-only"], []):  # neither reports nor trains it as 1 epoch
        r = run("validate", *fewer, "--losses", "ce", "--seeds", "0", "--out", out, *extra)
        one_line_error(r, 2, "more than --epochs 1")
    assert load_json(os.path.join(out, "results.json")) == before
    # the report's own guard: a run with other epochs than the grid's is not counted
    from calibrate_cli.train.validate import collect_results, run_dir

    cells = [(v, "symmetric:0.4", 0) for v in parse_losses("ce")]
    cfg = run_config({"epochs": 1}, cells[0][0], "symmetric:0.4", 0,
                     run_dir(out, cells[0][0], "symmetric:0.4", 0))
    res = collect_results(out, cells, [cfg], {"losses": ["ce"], "noise": ["symmetric:0.4"]}, "")
    assert res["summary"][0]["n"] == 0
    assert res["runs"][0]["status"] == "complete with 2 epochs, not 1"
