"""calibrate train / validate: end to end on tiny glyphs, resume, DDP (gloo), bias, bad inputs."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")


from calibrate_cli.train import batches as B  # noqa: E402
from calibrate_cli.train import loop  # noqa: E402
from calibrate_cli.train.config import resolve_config  # noqa: E402
from calibrate_cli.train.data import load_dataset  # noqa: E402
from calibrate_cli.train.models import create_model  # noqa: E402
from helpers import REPO, TINY, initial_predictions, load_json, ok, run, two_ranks  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add spin-waiting on a busy CI machine
VOLATILE = ("samples_per_s", "time_s")


def stable(history):
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in history]


# ------------------------------------------------------------------ end to end

def test_end_to_end_files_and_metrics(tmp_path):
    out = tmp_path / "run"
    r = ok("train", *TINY, "--epochs", "1", "--loss", "mae", "--logit-bias", "auto",
           "--noise", "symmetric:0.5", "--out", out, "--json")
    summary = json.loads(r.stdout)
    for name in ("config.json", "metrics.csv", "metrics.json", "noise.json",
                 "noisy_labels.npz", "checkpoint.pt"):
        assert (out / name).is_file(), name
    metrics = load_json(out / "metrics.json")
    assert metrics["status"] == "complete" and metrics["epochs_done"] == 1
    row = metrics["epochs"][0]
    for k in ("train_acc_noisy", "train_acc_clean", "test_top1", "test_top5"):
        assert 0.0 <= row[k] <= 1.0
    assert row["test_top5"] >= row["test_top1"]
    # the noisy labels: exactly half of each class of 12 changed, and the file's hash checks
    from calibrate_cli.train.noise import load_noisy_labels

    labels, spec, digest = load_noisy_labels(out / "noisy_labels.npz")
    clean = load_dataset("glyphs", classes=10, train_per_class=12, test_per_class=4).train.labels
    assert spec == "symmetric:0.5" and np.mean(labels != clean) == 0.5
    assert digest == summary["noise_hash"] == metrics["noise"]["hash"]
    # CSV and JSON agree
    with open(out / "metrics.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and math.isclose(float(rows[0]["test_top1"]), row["test_top1"],
                                           rel_tol=1e-5)
    # the resolved config is saved with the derived numbers: ε > 0 at K = 10 is ~0 (match, K_ref 10)
    cfg = load_json(out / "config.json")
    assert cfg["config"]["loss"] == "mae" and cfg["config"]["noise"] == "symmetric:0.5"
    assert abs(cfg["derived"]["epsilon"]) < 1e-6 and cfg["derived"]["logit_std"] > 0
    # test top-1 recomputed independently from the saved weights
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    bundle = load_dataset("glyphs", classes=10, train_per_class=12, test_per_class=4)
    model = create_model("mlp64", num_classes=10, in_channels=1, image_size=bundle.image_size)
    model.load_state_dict(ckpt["model"])
    model.eval()
    x = torch.tensor(bundle.test.images, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    x = (x - bundle.mean[0]) / bundle.std[0]
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    assert row["test_top1"] == pytest.approx(np.mean(pred == bundle.test.labels), abs=1e-9)


def test_measured_logit_std_is_the_models(tmp_path):
    cfg = resolve_config(cli_values=dict(classes=10, train_samples_per_class=12,
                                         test_samples_per_class=4, model="mlp64", batch_size=32,
                                         epochs=1, loss="mae", logit_bias="auto",
                                         measure_batches=2, out=str(tmp_path / "r")))
    res = loop.train(cfg, progress=False)
    bundle = load_dataset("glyphs", classes=10, train_per_class=12, test_per_class=4)
    model = create_model("mlp64", num_classes=10, in_channels=1, image_size=bundle.image_size)
    x = torch.tensor(bundle.train.images[:64], dtype=torch.float32).permute(0, 3, 1, 2) / 255
    with torch.no_grad():
        z = model((x - bundle.mean[0]) / bundle.std[0]).double().numpy()
    z -= z.mean(axis=1, keepdims=True)
    assert res.derived["logit_std"] == pytest.approx(z.std(), rel=1e-5)


# ---------------------------------------------------------------------- resume

def test_resume_equals_straight_run(tmp_path):
    common = [*TINY, "--loss", "gce", "--noise", "0.3", "--grad-clip", "1", "--weight-decay",
              "1e-3", "--augment", "crop-flip"]
    ok("train", *common, "--epochs", "2", "--out", tmp_path / "a")
    ok("train", *common, "--epochs", "1", "--out", tmp_path / "b")
    ok("train", "--resume", "--epochs", "2", "--out", tmp_path / "b", "-q")
    ma, mb = load_json(tmp_path / "a" / "metrics.json"), load_json(tmp_path / "b" / "metrics.json")
    assert stable(ma["epochs"]) == stable(mb["epochs"])
    sa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    sb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_refuses_changed_settings_and_overwrites(tmp_path):
    ok("train", *TINY, "--epochs", "1", "--out", tmp_path / "a")
    r = run("train", "--resume", "--epochs", "2", "--lr", "0.5", "--out", tmp_path / "a", "-q")
    assert r.exit_code == 2 and "lr" in r.stderr
    r = run("train", *TINY, "--epochs", "1", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "--resume" in r.stderr
    r = run("train", "--resume", "--out", tmp_path / "nothing")
    assert r.exit_code == 2 and "no checkpoint" in r.stderr


def test_config_file_and_overrides(tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"classes": 10, "learning_rate": 0.05}))
    r = run("train", "--config", conf, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "unknown setting(s) learning_rate" in r.stderr
    conf.write_text(json.dumps({"classes": 10, "train-per-class": 3,
                                "test_samples_per_class": 2, "epochs": 1, "lr": 0.05,
                                "model": "mlp32", "loss": "gce", "loss_params": {"q": 0.5}}))
    ok("train", "--config", conf, "--lr", "0.02", "--out", tmp_path / "y", "-q")
    saved = load_json(tmp_path / "y" / "config.json")["config"]
    assert saved["lr"] == 0.02 and saved["epochs"] == 1 and saved["loss_params"] == {"q": 0.5}
    assert saved["train_samples_per_class"] == 3 and saved["model"] == "mlp32"
    # YAML too, and --set merges into the file's loss parameters
    yml = tmp_path / "c.yaml"
    yml.write_text("classes: 10\ntrain_per_class: 3\ntest_per_class: 2\nepochs: 1\n"
                   "model: mlp32\nloss: agce\nloss_params: {a: 2.0}\n")
    ok("train", "--config", yml, "--set", "q=0.9", "--out", tmp_path / "z", "-q")
    saved = load_json(tmp_path / "z" / "config.json")
    assert saved["config"]["loss_params"] == {"a": 2.0, "q": 0.9}
    assert saved["derived"]["params"]["a"] == 2.0 and saved["derived"]["params"]["q"] == 0.9


# ------------------------------------------------------------------------- DDP

def test_ddp_two_processes_equal_one(tmp_path):
    args = ["train", "--classes", "10", "--train-per-class", "10", "--test-per-class", "3",
            "--model", "mlp32", "--batch-size", "24", "--epochs", "2", "--loss", "mae",
            "--logit-bias", "2", "--grad-clip", "0.5", "--noise", "0.2", "--device", "cpu", "-q"]
    procs, outs, attempt = two_ranks(lambda a: [sys.executable, "-m", "calibrate_cli", *args,
                                                "--out", str(tmp_path / f"ddp{a}")], cwd=REPO)
    assert all(p.returncode == 0 for p in procs), outs
    os.replace(tmp_path / f"ddp{attempt}", tmp_path / "ddp")
    ok(*args, "--out", tmp_path / "one")
    md = load_json(tmp_path / "ddp" / "metrics.json")
    m1 = load_json(tmp_path / "one" / "metrics.json")
    assert load_json(tmp_path / "ddp" / "config.json")["world_size"] == 2
    # the processes sum gradients in another order, so weights agree to float rounding; an
    # accuracy may then differ by one sample whose two largest logits were tied that closely
    one = {"train_acc_noisy": 1.01 / 100, "train_acc_clean": 1.01 / 100,
           "test_top1": 1.01 / 30, "test_top5": 1.01 / 30}
    for a, b in zip(md["epochs"], m1["epochs"]):
        for k in ("train_loss", "logit_correct_mean", "logit_other_std"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a["epoch"], a[k], b[k])
        for k, tol in one.items():
            assert abs(a[k] - b[k]) <= tol, (k, a["epoch"], a[k], b[k])
    sd = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["model"]
    s1 = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["model"]
    for k in s1:
        assert torch.allclose(sd[k], s1[k], rtol=1e-4, atol=1e-6), (k, (sd[k] - s1[k]).abs().max())


def test_global_batches_cover_every_sample_once_per_epoch():
    batches = B.global_batches(103, 10, seed=3, epoch=2)
    idx = torch.cat(batches)
    assert sorted(idx.tolist()) == list(range(103)) and batches[-1].numel() == 3
    assert not torch.equal(idx, torch.cat(B.global_batches(103, 10, seed=3, epoch=3)))
    # two processes share each global batch without overlap
    halves = [b.tensor_split(2) for b in batches]
    assert all(torch.equal(torch.cat(h), b) for h, b in zip(halves, batches))


# ------------------------------------------------------------------- logit bias

def test_bias_does_not_enter_evaluation(tmp_path):
    cfg = resolve_config(cli_values=dict(classes=10, train_samples_per_class=6,
                                         test_samples_per_class=4, model="mlp32", epochs=1,
                                         loss="mae", logit_bias="5", lr=1e-9,
                                         out=str(tmp_path / "r")))
    res = loop.train(cfg, progress=False)
    row = res.history[0]
    # with lr ~ 0 the weights are the initial ones: accuracies are those of the raw logits
    pred, labels = initial_predictions("mlp32", 10, 6, 4, "test")
    assert row["test_top1"] == pytest.approx(np.mean(pred == labels))
    # a bias of 5 would make nearly every training prediction "correct"; the raw logits do not
    assert row["train_acc_noisy"] < 0.5
    # the recorded loss is the loss at the shifted logits: MAE 2(1-p) with p near 1
    assert row["train_loss"] < 0.5 * 2 * (1 - 1 / 10)


def test_learning_rate_schedules():
    c = resolve_config(cli_values=dict(epochs=10, lr=0.4, schedule="cosine"))
    assert loop.learning_rate(c, 0) == pytest.approx(0.4)
    assert loop.learning_rate(c, 5) == pytest.approx(0.2)
    s = resolve_config(cli_values=dict(epochs=10, lr=0.4, schedule="step", step_size=2, gamma=0.5))
    assert [loop.learning_rate(s, e) for e in range(5)] == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1])
    w = resolve_config(cli_values=dict(epochs=10, lr=0.4, warmup_epochs=3, schedule="constant"))
    assert [loop.learning_rate(w, e) for e in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4])


def test_augment_keeps_shape_and_content_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 16, 16, generator=g)
    for kind in ("flip", "crop-flip", "crop-flip-rotate"):
        y = B.augment_batch(x, kind, torch.Generator().manual_seed(1))
        assert y.shape == x.shape
    y = B.augment_batch(x, "flip", torch.Generator().manual_seed(1))
    same = [(torch.equal(a, b) or torch.equal(a, b.flip(2))) for a, b in zip(x, y)]
    assert all(same) and 0 < sum(torch.equal(a, b) for a, b in zip(x, y)) < 64


# ------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("args,needle", [
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/dir"], "cifar10"),
    (["--dataset", "cifar100"], "--data-dir"),
    (["--dataset", "mnist-x"], "unknown dataset"),
    (["--model", "vgg11"], "unknown model"),
    (["--noise", "symmetric:1"], "[0, 1)"),
    (["--noise", "-0.1"], "[0, 1)"),
    (["--loss", "maee"], "unknown loss"),
    (["--logit-bias", "abc"], "--logit-bias"),
    (["--epochs", "0"], "--epochs"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--loss", "gce", "--calibrate", "q"], "--calibrate-from"),
    (["--set", "q=0.5"], "no parameter"),
])
def test_bad_inputs_are_one_line_usage_errors(tmp_path, args, needle):
    r = run("train", *args, "--out", tmp_path / "x", "-q")
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert needle in r.stderr
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_labels_outside_the_models_classes(tmp_path, monkeypatch):
    from calibrate_cli.train import data

    real = data.load_dataset

    def bad(*a, **kw):
        b = real(*a, **kw)
        b.train.labels = b.train.labels.copy()
        b.train.labels[0] = b.classes + 2
        return b

    monkeypatch.setattr(data, "load_dataset", bad)
    r = run("train", "--classes", "10", "--train-per-class", "3", "--out", tmp_path / "x", "-q")
    assert r.exit_code == 2 and r.stderr.startswith("error: train labels must lie in [0, 9]")


# --------------------------------------------------------------------- validate

def test_validate_grid_results_and_skip(tmp_path, monkeypatch):
    out = tmp_path / "val"
    grid = ["validate", "--classes", "10", "--train-per-class", "6", "--test-per-class", "3",
            "--model", "mlp32", "--epochs", "2", "--losses", "ce,mae*,gce@calibrated",
            "--noise", "0,0.5", "--seeds", "0,1", "--out", out, "-q"]
    ok(*grid)
    res = load_json(out / "results.json")
    assert set(res) >= {"version", "command", "grid", "runs", "summary"}
    assert len(res["runs"]) == 12 and all(r["status"] == "complete" for r in res["runs"])
    for r in res["runs"]:
        assert r["epochs"] == [1, 2] and len(r["test_top1"]) == 2 and len(r["train_acc_clean"]) == 2
        assert r["last_top1"] == r["test_top1"][-1] and r["best_top1"] == max(r["test_top1"])
        assert (out / r["dir"] / "metrics.json").is_file()
    cal = [r for r in res["runs"] if r["label"] == "gce@calibrated"]
    # calibrated from K = 100 (q = 0.7) down to K = 10: q grows
    assert all(r["params"]["q"] > 0.7 for r in cal)
    star = [r for r in res["runs"] if r["label"] == "mae*"]
    assert all(r["logit_bias"] is not None for r in star)
    for s in res["summary"]:
        last = [r["last_top1"] for r in res["runs"]
                if r["label"] == s["label"] and r["noise"] == s["noise"]]
        assert s["n"] == 2
        assert s["last_mean"] == pytest.approx(np.mean(last))
        assert s["last_std"] == pytest.approx(np.std(last, ddof=1))
    for name in ("results.md", "results.csv", "accuracy.png", "grid.json"):
        assert (out / name).is_file()
    # a second call trains nothing
    from calibrate_cli.train import loop as loop_mod

    def boom(*a, **kw):
        raise AssertionError("a completed run was trained again")

    monkeypatch.setattr(loop_mod, "train", boom)
    r = ok(*grid)
    assert "| mae* |" in r.stdout
    # the same folder with other settings is refused, not silently reused
    r = run(*grid, "--lr", "0.3")
    assert r.exit_code == 2 and "other settings (lr)" in r.stderr


def test_validate_bad_grid():
    assert run("validate", "--losses", "ce,foo").exit_code == 2
    r = run("validate", "--losses", "gce@wat")
    assert r.exit_code == 2 and "after '@'" in r.stderr
    assert run("validate", "--noise", "0,1.5").exit_code == 2
    assert run("validate", "--seeds", "x").exit_code == 2


def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "calibrate_cli", "train", "--classes", "10",
            "--train-per-class", "20", "--test-per-class", "2", "--model", "mlp32",
            "--batch-size", "8", "--epochs", "400", "--out", str(out), "-q"]
    p = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    m = load_json(out / "metrics.json")
    assert m["status"] == "interrupted" and 1 <= m["epochs_done"] < 400
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == m["epochs_done"]
    ok("train", "--resume", "--out", out, "--epochs", str(m["epochs_done"] + 1))
    m2 = load_json(out / "metrics.json")
    assert m2["status"] == "complete" and m2["epochs_done"] == m["epochs_done"] + 1
    assert stable(m2["epochs"][:-1]) == stable(m["epochs"])


def test_image_folder_dataset_through_the_dataloader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 2)):
        for c in range(3):
            d = tmp_path / "data" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = (rng.random((20 + 3 * i, 24, 3)) * 80 + 80 * c).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    for workers in ("0", "2"):
        out = tmp_path / f"run{workers}"
        ok("train", "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--image-size",
           "16", "--model", "mlp32", "--batch-size", "4", "--epochs", "2", "--workers", workers,
           "--loss", "mae", "--logit-bias", "auto", "--noise", "0.2", "--out", out)
        m = load_json(out / "metrics.json")
        assert m["status"] == "complete" and m["noise"]["n"] == 15
        assert all(0 <= r["test_top1"] <= 1 for r in m["epochs"])
    # the file order and the augmentation draws do not depend on the number of workers
    assert stable(load_json(tmp_path / "run0" / "metrics.json")["epochs"]) == \
        stable(load_json(tmp_path / "run2" / "metrics.json")["epochs"])


def test_tensorboard_scalars_are_the_metrics(tmp_path, monkeypatch):
    """--tensorboard writes every per-epoch metric; read back with tensorboard's own reader.
    Without the tensorboard package the option is a one-line usage error."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        EventAccumulator = None
    out = tmp_path / "tb"
    r = run("train", *TINY, "--epochs", "2", "--tensorboard", "--out", out)
    if EventAccumulator is None:
        assert r.exit_code == 2 and "tensorboard" in r.stderr
        return
    assert r.exit_code == 0, r.stderr
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    history = load_json(out / "metrics.json")["epochs"]
    for key in ("train_loss", "test_top1", "lr", "logit_correct_mean"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-6)
    # the package missing: the same option is a clear usage error, nothing written
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    r = run("train", *TINY, "--epochs", "1", "--tensorboard", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "tensorboard" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_bf16_autocast_path_on_cpu(tmp_path):
    """The autocast path (bf16 on CUDA by default) runs on CPU too: it trains, its metrics are
    finite, and its first-epoch loss is close to the fp32 run's (same seed, same batches)."""
    common = ["train", *TINY, "--epochs", "1", "--loss", "gce", "--json"]
    a = json.loads(ok(*common, "--precision", "bf16", "--out", tmp_path / "bf16").stdout)
    b = json.loads(ok(*common, "--precision", "fp32", "--out", tmp_path / "fp32").stdout)
    ha = load_json(tmp_path / "bf16" / "metrics.json")["epochs"][0]
    hb = load_json(tmp_path / "fp32" / "metrics.json")["epochs"][0]
    assert load_json(tmp_path / "bf16" / "config.json")["precision"] == "bf16"
    assert all(math.isfinite(v) for v in ha.values() if isinstance(v, float))
    assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=0.02)
    assert ha["train_loss"] != hb["train_loss"]  # bf16 really ran (it rounds the matmuls)
    assert a["status"] == b["status"] == "complete"
    r = run("train", *TINY, "--precision", "fp16", "--device", "cpu", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "fp16 needs a CUDA device" in r.stderr


def test_out_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    for cmd in ("train", "validate"):
        r = run(cmd, *TINY, "--epochs", "1", "--out", blocker / "run")
        assert r.exit_code == 2, (cmd, r.stderr)
        assert r.stderr.startswith("error: --out") and r.stderr.count("\n") == 1, r.stderr
    assert blocker.read_text() == "keep"


def test_interrupt_during_the_checkpoint_is_held_until_the_bookkeeping_is_done():
    import signal

    from calibrate_cli.train.safety import held_interrupt

    done = []
    # Python's own handler, as in a terminal (a suite started in the background ignores SIGINT)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with held_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("checkpoint")
                done.append("metrics")
        assert done == ["checkpoint", "metrics"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_resume_on_other_hardware_says_so(tmp_path):
    """--device/--precision auto pick per machine: a run started on a GPU in bf16 and resumed
    on a CPU continues in fp32; the resume says so in one line."""
    ok("train", *TINY, "--epochs", "1", "--out", tmp_path / "r")
    path = tmp_path / "r" / "config.json"
    record = load_json(path)
    assert (record["device"], record["precision"]) == ("cpu", "fp32")
    record.update(device="cuda:0", precision="bf16")  # as a GPU node would have written it
    path.write_text(json.dumps(record))
    r = ok("train", "--resume", "--epochs", "2", "--out", tmp_path / "r")
    assert "note: the run's 1 epoch(s) so far were trained on cuda in bf16; it continues on cpu " \
        "in fp32" in r.stdout + r.stderr
    r = ok("train", "--resume", "--epochs", "3", "--out", tmp_path / "r")  # same hardware: quiet
    assert "note: the run's" not in r.stdout + r.stderr
