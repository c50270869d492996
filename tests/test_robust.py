"""Robustness: one writer per folder, nothing lost or left behind, exit codes and one-line
messages for bad input, plain output when not a terminal, threads, optional packages."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from calibrate_cli.utils.atomic import clean_temporaries, write_atomic  # noqa: E402
from calibrate_cli.errors import StorageError, UsageError  # noqa: E402
from calibrate_cli.utils.lock import FolderLock, lock_folder  # noqa: E402
from calibrate_cli.train import records  # noqa: E402
from helpers import TINY, cli, env, load_json, one_line_error, run  # noqa: E402

def wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


# ------------------------------------------------------------------ one writer per folder

def test_folder_lock_excludes_a_second_holder_and_is_released(tmp_path):
    with lock_folder(tmp_path, "--out"):
        with pytest.raises(UsageError, match="in use by another calibrate process"):
            FolderLock(tmp_path, "--out").acquire()
    with lock_folder(tmp_path):  # released: free again
        pass
    # held by another process: refused here; that process killed (-9): free again
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from calibrate_cli.utils.lock import lock_folder; "
                               f"lock_folder({str(tmp_path)!r}); print('locked', flush=True); "
                               "time.sleep(600)"], env=env(tmp_path), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match="in use"):
            lock_folder(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    lock_folder(tmp_path).release()
    assert os.listdir(tmp_path) == []  # the lock leaves no file behind


def _blocking_loss(folder):
    (folder / "blockloss.py").write_text(
        "import os, time, torch\n"
        "def ce(logits, target):\n"
        "    if logits.shape[0] == 7:  # a training batch, not the 4-sample probe\n"
        "        while not os.path.exists(os.environ['RELEASE']):\n"
        "            time.sleep(0.02)\n"
        "    return torch.nn.functional.cross_entropy(logits, target, reduction='none')\n")


def test_two_train_runs_into_one_folder_the_second_is_refused(tmp_path):
    _blocking_loss(tmp_path)
    out = tmp_path / "run"
    release = tmp_path / "release"
    args = [sys.executable, "-m", "calibrate_cli", "train", "--classes", "10",
            "--train-per-class", "7", "--test-per-class", "2", "--model", "mlp32",
            "--batch-size", "7", "--epochs", "1", "--loss", "blockloss:ce", "--out", str(out), "-q"]
    first = subprocess.Popen(args, cwd=tmp_path, env=env(tmp_path, RELEASE=str(release)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "config.json", first)  # the first run is in its first epoch, no checkpoint
        second = subprocess.run(args + ["--eval-batch-size", "512"], cwd=tmp_path,
                                env=env(tmp_path, RELEASE=str(release)), capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith("error: --out") and "in use" in second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        release.write_text("")
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    m = load_json(out / "metrics.json")
    assert m["status"] == "complete" and m["epochs_done"] == 1
    assert load_json(out / "config.json")["config"]["eval_batch_size"] == 1024  # the first's


def test_validate_tables_and_plot_all_refuse_a_folder_in_use(tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    with lock_folder(folder):
        one_line_error(run("validate", "--classes", "10", "--train-per-class", "3",
                           "--test-per-class", "2", "--model", "mlp32", "--epochs", "1",
                           "--losses", "ce", "--noise", "0", "--seeds", "0", "--out", folder,
                           "-q"), 2, "in use")
        one_line_error(run("tables", "--only", "q", "--quick", "--out-dir", folder), 2, "in use")
        np.save(tmp_path / "l.npy", np.random.default_rng(0).standard_normal((8, 10)))
        one_line_error(run("plot", "all", "--logits", tmp_path / "l.npy", "--out-dir", folder),
                       2, "in use")
    assert os.listdir(folder) == []


# ------------------------------------------------------------------ nothing left behind

def test_kill_during_the_checkpoint_write_then_resume_cleans_up(tmp_path):
    """kill -9 while the checkpoint of epoch 2 is half written: the checkpoint of epoch 1
    stays valid, the temporary is left, and the next start removes it and finishes."""
    out = tmp_path / "run"
    marker = tmp_path / "writing"
    driver = (
        "import os, sys, time\n"
        "from calibrate_cli.train import records\n"
        "real = records.write_atomic\n"
        "seen = []\n"
        "def slow(path, data, **kw):\n"
        "    if str(path).endswith('checkpoint.pt'):\n"
        "        seen.append(path)\n"
        "        if len(seen) == 2:\n"
        "            def half(fh):\n"
        "                fh.write(data[:len(data) // 2]); fh.flush()\n"
        f"                open({str(marker)!r}, 'w').close()\n"
        "                time.sleep(600)\n"
        "            return real(path, half, **kw)\n"
        "    return real(path, data, **kw)\n"
        "records.write_atomic = slow\n"
        "from calibrate_cli.cli.app import main\n"
        "sys.argv = ['calibrate'] + sys.argv[1:]\n"
        "main()\n")
    p = subprocess.Popen([sys.executable, "-c", driver, "train", *TINY, "--epochs", "3",
                          "--out", str(out)], cwd=tmp_path, env=env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(marker, p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    left = [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert left and left[0].endswith("-checkpoint.pt")  # what the kill leaves
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    r = run("train", "--resume", "--out", out, "-q")
    assert r.exit_code == 0, r.stderr
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    m = load_json(out / "metrics.json")
    assert m["status"] == "complete" and m["epochs_done"] == 3


def test_clean_temporaries_removes_only_the_writers_temporaries(tmp_path):
    (tmp_path / ".tmp-abc-checkpoint.pt").write_bytes(b"half")
    (tmp_path / "checkpoint.pt").write_bytes(b"keep")
    (tmp_path / ".hidden").write_text("keep")
    assert clean_temporaries(tmp_path) == [".tmp-abc-checkpoint.pt"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "checkpoint.pt"]


@pytest.mark.parametrize("args", [
    ["--dataset", "cifar10", "--data-dir", "/nonexistent/dir"],
    ["--dataset", "imagefolder"],
    ["--classes", "5000"],  # more than the glyph set holds
])
def test_a_failed_start_creates_nothing(tmp_path, args):
    out = tmp_path / "deep" / "run"
    one_line_error(run("train", *args, "--out", out, "-q"), 2)
    assert not (tmp_path / "deep").exists()


def test_a_failed_resume_changes_nothing(tmp_path):
    out = tmp_path / "run"
    assert run("train", *TINY, "--epochs", "1", "--out", out).exit_code == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    (out / "checkpoint.pt").write_bytes(b"")
    one_line_error(run("train", "--resume", "--epochs", "2", "--out", out, "-q"), 2,
                   "cannot be read")
    after = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert after == {**before, "checkpoint.pt": b""}


def test_disk_full_during_the_checkpoint_keeps_metrics_and_checkpoint_in_step(tmp_path,
                                                                               monkeypatch):
    real = records.write_atomic
    calls = []

    def full(path, data, **kw):
        if str(path).endswith("checkpoint.pt"):
            calls.append(path)
            if len(calls) == 2:
                def payload(fh):
                    fh.write(data[:100])
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(path, payload, **kw)
        return real(path, data, **kw)

    monkeypatch.setattr(records, "write_atomic", full)
    out = tmp_path / "run"
    err = one_line_error(run("train", *TINY, "--epochs", "3", "--out", out), 4, "disk is full")
    assert "internal error" not in err
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    m = load_json(out / "metrics.json")
    assert ckpt["epoch"] == 1 and m["epochs_done"] == 1 and m["status"] == "failed"
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 1
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_write_atomic_says_the_disk_is_full(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def payload(fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match="disk is full") as info:
        write_atomic(path, payload)
    assert info.value.exit_code == 4
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_plot_all_checks_every_input_before_drawing(tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"garbage, not an array")
    figs = tmp_path / "figs"
    one_line_error(run("plot", "all", "--logits", bad, "--out-dir", figs), 2)
    assert not figs.exists() or os.listdir(figs) == []
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": [{"label": "ce", "noise": "none", "epochs": []}]}))
    one_line_error(run("plot", "all", "--validate", results, "--out-dir", figs), 2,
                   "no run has any finished epoch")
    assert not figs.exists() or os.listdir(figs) == []


# ------------------------------------------------------------------ exit codes, messages

def _checkpoint_variants(out):
    good = (out / "checkpoint.pt").read_bytes()
    other = out.parent / "other"  # the same run with another model
    assert run("train", *TINY, "--model", "mlp32", "--epochs", "1", "--out", other).exit_code == 0
    return {"empty": b"", "garbage": os.urandom(300), "truncated": good[: len(good) // 2],
            "another model": (other / "checkpoint.pt").read_bytes(),
            "not a checkpoint": _torch_bytes({"weights": 1})}


def _torch_bytes(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_resume_with_an_unusable_checkpoint_or_config_is_a_usage_error(tmp_path):
    out = tmp_path / "run"
    assert run("train", *TINY, "--epochs", "1", "--out", out).exit_code == 0
    good = (out / "checkpoint.pt").read_bytes()
    for what, data in _checkpoint_variants(out).items():
        (out / "checkpoint.pt").write_bytes(data)
        err = one_line_error(run("train", "--resume", "--epochs", "2", "--out", out, "-q"), 2,
                             "--resume")
        assert "checkpoint" in err, (what, err)
    (out / "checkpoint.pt").write_bytes(good)
    config = (out / "config.json").read_bytes()
    for text in ("{", "[1, 2]", '{"config": 3}'):
        (out / "config.json").write_text(text)
        one_line_error(run("train", "--resume", "--epochs", "2", "--out", out, "-q"), 2,
                       "config.json")
    (out / "config.json").write_bytes(config)
    assert run("train", "--resume", "--epochs", "2", "--out", out, "-q").exit_code == 0


def test_plot_accuracy_of_results_that_are_not_validate_results(tmp_path):
    for content in ("[1, 2, 3]", '{"runs": [3]}', '{"runs": [{"epochs": [1]}]}'):
        path = tmp_path / "results.json"
        path.write_text(content)
        one_line_error(run("plot", "accuracy", "--validate", path, "--out", tmp_path / "a.png"),
                       2, "results")


def test_corrupt_image_with_workers_is_one_line_naming_the_file(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in range(2):
            d = tmp_path / "data" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((20, 24, 3)) * 200).astype(np.uint8)).save(d / f"{i}.png")
    bad = tmp_path / "data" / "train" / "c1" / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "run"
    r = cli(tmp_path, "train", "--dataset", "imagefolder", "--data-dir", tmp_path / "data",
            "--image-size", "16", "--model", "mlp32", "--batch-size", "4", "--epochs", "1",
            "--workers", "2", "--out", out, "-q")
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"error: cannot read image '{bad}' (UnidentifiedImageError)\n"
    m = load_json(out / "metrics.json")
    assert m["status"] == "failed" and str(bad) in m["error"]


def test_seed_ranges_messages_and_size():
    from calibrate_cli.train.validate import parse_seeds

    with pytest.raises(UsageError, match="range '5-1' is empty"):
        parse_seeds("5-1")
    with pytest.raises(UsageError, match="more than 10000 seeds"):
        parse_seeds("0-1000000")  # refused at once, not after a quadratic de-duplication
    assert parse_seeds("0-9999") == list(range(10000))
    assert parse_seeds("3,1-4,0") == [3, 1, 2, 4, 0]
    one_line_error(run("validate", "--seeds", "0-1000000"), 2, "more than 10000")


def sigint_default():
    """In the child: Ctrl-C as a terminal delivers it, even when this suite runs with SIGINT
    ignored (started in the background by a shell), which the child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_validate_says_to_run_validate_again(tmp_path):
    out = tmp_path / "grid"
    p = subprocess.Popen([sys.executable, "-m", "calibrate_cli", "validate", "--classes", "10",
                          "--train-per-class", "20", "--test-per-class", "2", "--model", "mlp32",
                          "--batch-size", "8", "--epochs", "400", "--losses", "ce", "--noise", "0",
                          "--seeds", "0", "--out", str(out), "-q"], cwd=tmp_path,
                         env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=sigint_default)
    wait_for(out / "runs" / "ce" / "noise-0" / "seed-0" / "checkpoint.pt", p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "run the same 'calibrate validate' command again" in err and "--resume" not in err


# ------------------------------------------------------------------ user code, NaN

def _user_losses(folder):
    (folder / "userloss.py").write_text(
        "import sys, torch\n"
        "calls = [0]\n"
        "def leaves(logits, target):\n"
        "    if logits.shape[0] == 32:\n"
        "        calls[0] += 1\n"
        "        if calls[0] == 6:  # step 3 of epoch 2 (3 batches of 32 and one of 24)\n"
        "            sys.exit(0)\n"
        "    return torch.nn.functional.cross_entropy(logits, target, reduction='none')\n"
        "def nan_later(logits, target):\n"
        "    loss = torch.nn.functional.cross_entropy(logits, target, reduction='none')\n"
        "    if logits.shape[0] == 32:\n"
        "        calls[0] += 1\n"
        "        if calls[0] == 6:\n"
        "            return loss * float('nan')\n"
        "    return loss\n")


def test_user_loss_that_calls_sys_exit_cannot_end_train_silently(tmp_path):
    _user_losses(tmp_path)
    out = tmp_path / "run"
    r = cli(tmp_path, "train", *TINY, "--epochs", "3", "--loss", "userloss:leaves", "--out", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "called sys.exit(0)" in r.stderr
    assert r.stderr.count("\n") == 1
    m = load_json(out / "metrics.json")
    assert m["status"] == "failed" and m["epochs_done"] == 1
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_user_loss_that_calls_sys_exit_in_a_calibration_command(tmp_path, monkeypatch):
    (tmp_path / "exitloss.py").write_text("import sys\n"
                                          "def leave(logits, target):\n"
                                          "    sys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    r = run("epsilon", "--classes", "10", "--loss", "exitloss:leave", "--json")
    assert r.stdout == ""
    one_line_error(r, 2, "called sys.exit(0)")


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    _user_losses(tmp_path)
    out = tmp_path / "run"
    r = cli(tmp_path, "train", *TINY, "--epochs", "3", "--loss", "userloss:nan_later",
            "--out", out)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: training diverged: the loss is nan at step 3 of epoch 2")
    assert "the checkpoint of epoch 1 is kept" in r.stderr and r.stderr.count("\n") == 1
    m = load_json(out / "metrics.json")
    assert m["status"] == "diverged" and m["epochs_done"] == 1
    assert len((out / "metrics.csv").read_text().splitlines()) == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    # the example: a learning rate that blows the weights up
    r = run("train", *TINY, "--epochs", "2", "--lr", "1e8", "--out", tmp_path / "lr")
    one_line_error(r, 1, "training diverged")
    assert load_json(tmp_path / "lr" / "metrics.json")["status"] == "diverged"
