"""Memorisation metrics, ``validate --jobs`` and ``validate --sweep`` on tiny glyph grids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from calibrate_cli.errors import UsageError  # noqa: E402
from calibrate_cli.train import loop  # noqa: E402
from calibrate_cli.train.config import resolve_config  # noqa: E402
from calibrate_cli.train.sweep import parse_sweep  # noqa: E402
from calibrate_cli.train.validate import grid_cells, parse_losses  # noqa: E402
from helpers import initial_predictions, load_json, ok, run  # noqa: E402

torch.set_num_threads(1)
GRID = ["--classes", "10", "--train-per-class", "6", "--test-per-class", "3", "--model", "mlp32",
        "--epochs", "2", "--threads", "1", "-q"]
VOLATILE = ("samples_per_s", "time_s")


def stable_runs(results):
    """Every run's per-epoch numbers, without timings and folder-dependent fields."""
    out = {}
    for r in results["runs"]:
        metrics = load_json_path(r)
        out[r["id"]] = [{k: v for k, v in row.items() if k not in VOLATILE}
                        for row in metrics["epochs"]]
    return out


_ROOT = {}


def load_json_path(run):
    return load_json(_ROOT["out"] / run["dir"] / "metrics.json")


# ------------------------------------------------------------------ memorisation

def test_memorisation_metrics_by_hand(tmp_path):
    """With a learning rate of 1e-30 the weights do not move, so every batch of the epoch is
    predicted by the initial model: memorised/recovered are then counted here by hand."""
    cfg = resolve_config(cli_values=dict(classes=10, train_samples_per_class=12,
                                         test_samples_per_class=4, model="mlp64", batch_size=32,
                                         epochs=1, lr=1e-30, noise="symmetric:0.5",
                                         out=str(tmp_path / "r")))
    res = loop.train(cfg, progress=False)
    row = res.history[0]
    pred, clean = initial_predictions("mlp64", 10, 12, 4, "train")
    noisy = np.load(tmp_path / "r" / "noisy_labels.npz")["labels"]
    moved = noisy != clean
    assert moved.sum() == 60  # half of 12 per class, 10 classes
    assert row["memorised"] == pytest.approx(np.mean(pred[moved] == noisy[moved]), abs=1e-12)
    assert row["recovered"] == pytest.approx(np.mean(pred[moved] == clean[moved]), abs=1e-12)
    assert row["train_acc_noisy"] == pytest.approx(np.mean(pred == noisy), abs=1e-12)
    metrics = load_json(tmp_path / "r" / "metrics.json")
    assert metrics["memorised"] == row["memorised"]
    assert metrics["best_minus_last"] == 0.0
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[5:7] == ["memorised", "recovered"]


def test_memorisation_is_empty_without_noise(tmp_path):
    cfg = resolve_config(cli_values=dict(classes=10, train_samples_per_class=6,
                                         test_samples_per_class=3, model="mlp32", epochs=1,
                                         out=str(tmp_path / "r")))
    res = loop.train(cfg, progress=False)
    assert res.history[0]["memorised"] is None and res.history[0]["recovered"] is None
    line = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[1].split(",")
    assert line[5:7] == ["", ""]


# ------------------------------------------------------------------------- --jobs

def test_jobs_give_the_same_results_as_one_process(tmp_path):
    args = [*GRID, "--losses", "ce,mae*", "--noise", "0,0.5", "--seeds", "0,1"]
    ok("validate", *args, "--out", tmp_path / "one")
    ok("validate", *args, "--jobs", "2", "--out", tmp_path / "two")
    one, two = load_json(tmp_path / "one" / "results.json"), load_json(tmp_path / "two" /
                                                                       "results.json")
    assert one["summary"] == two["summary"]
    _ROOT["out"] = tmp_path / "one"
    a = stable_runs(one)
    _ROOT["out"] = tmp_path / "two"
    b = stable_runs(two)
    assert a == b and len(a) == 8
    # memorisation reaches the results: summary fields for the noisy setting
    noisy = [s for s in one["summary"] if s["noise"] != "none"]
    assert all(s["memorised_mean"] is not None and s["drop_mean"] >= 0 for s in noisy)
    assert "Memorisation at the last epoch" in (tmp_path / "one" / "results.md").read_text()


def test_cells_go_seed_by_seed():
    v = parse_losses("ce,mae")
    cells = grid_cells(v, ["none", "symmetric:0.4"], [0, 1])
    assert [s for _, _, s in cells] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_variant_labels():
    v = {x.label: x for x in parse_losses("mae*,mae*peak,mae*above,mae@eps=2.5,gce@q=0.5")}
    assert (v["mae*"].logit_bias, v["mae*"].bias_criterion, v["mae*"].bias_branch) == \
        ("auto", "match", "below")
    assert v["mae*peak"].bias_criterion == "peak"
    assert v["mae*above"].bias_branch == "above"
    assert v["mae@eps=2.5"].logit_bias == "2.5" and v["mae@eps=2.5"].loss == "mae"
    with pytest.raises(UsageError):
        parse_losses("mae*@eps=2")
    with pytest.raises(UsageError):
        parse_losses("mae@eps=x")


def test_bias_criterion_without_auto_bias_is_a_usage_error(tmp_path):
    r = run("train", "--bias-criterion", "peak", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--logit-bias auto" in r.stderr


# ------------------------------------------------------------------------- --sweep

def test_sweep_parsing():
    s = parse_sweep("eps=0,2.5,match,peak", "mae")
    assert [p.variant.label for p in s.points] == ["mae@eps=0", "mae@eps=2.5", "mae*", "mae*peak"]
    assert [p.computed for p in s.points] == [None, None, "match", "peak"]
    s = parse_sweep("q=0.5,calibrated", "gce")
    assert [p.variant.label for p in s.points] == ["gce@q=0.5", "gce@calibrated"]
    s = parse_sweep("a=1,calibrated", "agce", calibrate_from=10)
    assert [p.variant.label for p in s.points] == ["agce@a=1", "agce@calibrated:a:10"]
    s = parse_sweep("q=0.5,calibrated,calibrated:10", "gce")
    assert [p.variant.label for p in s.points] == ["gce@q=0.5", "gce@calibrated",
                                                   "gce@calibrated:q:10"]
    assert s.points[2].computed == "calibrated:10"
    assert s.points[2].variant.calibrate_from == 10
    for bad, losses in [("eps=match", "mae"), ("eps=1,x", "mae"), ("zz=1", "mae"),
                        ("q=1", "mae,gce"), ("eps=1", "mae*"), ("eps", "mae")]:
        with pytest.raises(UsageError):
            parse_sweep(bad, losses)


def test_sweep_results_report_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    sweep = ["--classes", "20", *GRID[2:], "--losses", "mae", "--noise", "0.5", "--seeds", "0,1"]
    # a first, smaller sweep, as if interrupted after two of its values
    ok("validate", *sweep, "--sweep", "eps=0,match", "--out", out)
    done = {p.name for p in (out / "runs").iterdir()}
    assert done == {"mae-at-eps-0", "mae-star"}
    # one run of the full sweep half-trained (1 of 2 epochs): it must be resumed, not redone
    ok("train", "--classes", "20", "--train-per-class", "6", "--test-per-class", "3", "--model",
       "mlp32", "--threads", "1", "-q", "--epochs", "1", "--loss", "mae",
       "--logit-bias", "2", "--noise", "symmetric:0.5", "--seed", "0",
       "--out", out / "runs" / "mae-at-eps-2" / "symmetric-0.5" / "seed-0")
    r = ok("validate", *sweep, "--sweep", "eps=0,2,match,peak", "--out", out)
    assert r.stderr.count("complete, skipped") == 4
    assert "resuming" in r.stderr
    res = load_json(out / "sweep-mae-eps.json")
    # the same sweep from scratch gives the same numbers
    ok("validate", *sweep, "--sweep", "eps=0,2,match,peak", "--out", tmp_path / "fresh")
    fresh = load_json(tmp_path / "fresh" / "sweep-mae-eps.json")
    assert res["points"] == fresh["points"]
    pts = {p["label"]: p for p in res["points"]}
    assert pts["mae@eps=2"]["value"] == 2.0 and pts["mae@eps=2"]["computed"] is None
    eps = [r["logit_bias"] for r in res["runs"] if r["label"] == "mae*"]
    assert pts["mae*"]["value"] == pytest.approx(np.mean(eps)) and 0.5 < pts["mae*"]["value"] < 1.5  # ≈ ln(19/9)
    peak = [r["logit_bias"] for r in res["runs"] if r["label"] == "mae*peak"]
    assert np.mean(peak) > pts["mae*"]["value"]
    # the report: computed accuracy over the best fixed point, trainings of the fixed points
    fixed = [p for p in res["points"] if p["computed"] is None]
    best = max(fixed, key=lambda p: p["last_mean"])
    rep = {x["computed"]: x for x in res["report"]}
    assert set(rep) == {"match", "peak"}
    assert rep["match"]["sweep_trainings"] == 4 and rep["match"]["sweep_points"] == 2
    assert rep["match"]["best_fixed_mean"] == best["last_mean"]
    if best["last_mean"] > 0:
        assert rep["match"]["fraction_of_best"] == pytest.approx(pts["mae*"]["last_mean"] /
                                                                 best["last_mean"])
    for ext in ("md", "csv", "png"):
        assert (out / f"sweep-mae-eps.{ext}").stat().st_size > 0
    assert "computed (match)" in (out / "sweep-mae-eps.md").read_text()


def test_accuracy_figure_has_a_memorisation_panel():
    from calibrate_cli import plots as P

    runs = []
    for seed in (0, 1):
        runs.append({"label": "ce", "noise": "symmetric:0.4", "seed": seed, "status": "complete",
                     "epochs": [1, 2, 3], "test_top1": [0.1, 0.2, 0.15],
                     "memorised": [0.1 + 0.1 * seed, 0.5, 0.9]})
        runs.append({"label": "ce", "noise": "none", "seed": seed, "status": "complete",
                     "epochs": [1, 2, 3], "test_top1": [0.2, 0.3, 0.4],
                     "memorised": [None, None, None]})
    res = {"grid": {"dataset": "glyphs", "classes": 10, "model": "mlp32"}, "runs": runs}
    fig = P.figure_accuracy(res)
    assert len(fig.axes) == 4  # accuracy and memorisation, for each of the two noise settings
    noisy = [ax for ax in fig.axes if ax.get_title() == "noise symmetric:0.4"]
    acc_line, memo_line = noisy[0].get_lines()[0], noisy[1].get_lines()[0]
    np.testing.assert_allclose(acc_line.get_data()[1], [10, 20, 15])
    np.testing.assert_allclose(memo_line.get_data()[1], [15, 50, 90])
    assert P.accuracy_curves(res, "memorised").keys() == {("ce", "symmetric:0.4")}


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                    stat = fh.read()
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_workers_stop_when_validate_is_killed(tmp_path, sigint):
    """kill -9 of `validate --jobs 2`: each worker notices, saves its run's completed epochs and
    exits, so that no orphan trains on into the folders a re-run of the grid resumes; also when
    validate was started with SIGINT ignored (in the background: nohup, `&`)."""
    handler = signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL
    out = tmp_path / "grid"
    i = GRID.index("--epochs") + 1
    args = [*GRID[:i], "5000", *GRID[i + 1:]]  # runs that do not end by themselves
    proc = subprocess.Popen([sys.executable, "-m", "calibrate_cli", "validate", *args,
                             "--losses", "ce,mae", "--noise", "0", "--seeds", "0",
                             "--jobs", "2", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, handler))
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        runs = []
        while time.monotonic() < deadline:
            runs = [p for p in out.glob("runs/*/*/*/checkpoint.pt")]
            if len(runs) == 2:
                break
            assert proc.poll() is None, "validate ended before its runs started"
            time.sleep(0.5)
        assert len(runs) == 2
        workers = _children(proc.pid)
        assert len(workers) == 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30  # well within the grace of 60 s that ends an orphan
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:  # (orphans when the test fails: they are no longer proc's children)
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    for ckpt in runs:
        metrics = load_json(ckpt.parent / "metrics.json")
        assert metrics["status"] == "interrupted" and len(metrics["epochs"]) >= 1


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_missing_data_is_one_line_and_writes_nothing(tmp_path, jobs):
    out = tmp_path / "grid"
    r = run("validate", "--dataset", "cifar100", "--data-dir", tmp_path / "absent", "--losses",
            "ce,mae*", "--noise", "0,0.4", "--seeds", "0", "--jobs", jobs, "--out", out)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error: cifar100: --data-dir") and "\n" not in err, err
    assert not out.exists()


def test_report_only_tabulates_the_complete_runs_and_trains_nothing(tmp_path):
    args = [*GRID, "--losses", "ce,mae*", "--noise", "0", "--out", tmp_path / "g"]
    ok("validate", *args, "--seeds", "0")
    before = load_json(tmp_path / "g" / "results.json")
    r = ok("validate", *args, "--seeds", "0,1", "--report-only")
    assert "2 of 4 runs complete" in r.stderr
    after = load_json(tmp_path / "g" / "results.json")
    assert not list((tmp_path / "g").glob("runs/*/*/seed-1"))  # nothing trained
    assert [s["n"] for s in after["summary"]] == [1, 1]
    assert [s["last_mean"] for s in after["summary"]] == [s["last_mean"] for s in
                                                           before["summary"]]
    assert after["grid"]["seeds"] == [0, 1]
    r = run("validate", *GRID, "--losses", "ce", "--out", tmp_path / "empty", "--report-only")
    assert r.exit_code == 2 and "holds no runs" in r.stderr


def test_a_log_line_is_one_write_with_its_newline():
    """The workers' and the grid's lines go out in one write each: a worker killed between the
    text and its newline (``print`` writes them apart on unbuffered stderr) glued the grid's
    one-line error onto its half line."""
    from calibrate_cli.utils.progress import log_line

    writes = []

    class Stream:
        def write(self, text):
            writes.append(text)

        def flush(self):
            writes.append(None)

    log_line("epoch 3/20  loss 0.5", Stream())
    assert writes == ["epoch 3/20  loss 0.5\n", None]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_killed_worker_is_one_line_with_the_resume_hint(tmp_path):
    """kill -9 of one worker of `validate --jobs 2`: one line on stderr that says the epochs are
    saved and how to continue, a non-zero exit, no traceback; the same command then resumes."""
    out = tmp_path / "grid"
    i = GRID.index("--epochs") + 1
    args = [*GRID[:i], "5000", *GRID[i + 1:]]
    workers: list[int] = []
    proc = subprocess.Popen([sys.executable, "-m", "calibrate_cli", "validate", *args,
                             "--losses", "ce,mae", "--noise", "0", "--seeds", "0",
                             "--jobs", "2", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while len(list(out.glob("runs/*/*/*/checkpoint.pt"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:  # the other one, orphaned
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 1, err[-2000:]
    assert len(lines) == 1 and "worker process died" in lines[0], err[-2000:]
    assert "calibrate validate" in lines[0] and "Traceback" not in err
