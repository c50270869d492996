"""What the command-line tests share: the app invoked in-process, the checks of an outcome
(success, or one line on stderr with its exit code and no traceback), reading a result file."""

from __future__ import annotations

import json
import os
import socket
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


def two_ranks(argv, cwd, extra_env=None, timeout=240):
    """``argv`` as the two ranks of a CPU process group (WORLD_SIZE 2 on localhost); a free port
    may be taken between its choice and its use, so a launch that lost it is tried again (three
    times; ``argv`` may be a function of the attempt, 0 to 2, to give each its own folder).
    Returns the two processes, their (stdout, stderr) and the attempt that ran."""
    for attempt in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **(extra_env or {}))
        cmd = argv(attempt) if callable(argv) else argv
        procs = [subprocess.Popen(cmd, cwd=cwd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in range(2)]
        outs = [p.communicate(timeout=timeout) for p in procs]
        if not any("address already in use" in err.lower() for _, err in outs):
            break
    return procs, outs, attempt


def initial_predictions(model, classes, train_per_class, test_per_class, split):
    """The class each image of the glyphs' ``split`` gets from ``model`` as created (seeded, the
    weights a run starts from, normalised as the trainer does), and that split's labels."""
    import numpy as np
    import torch

    from calibrate_cli.train.data import load_dataset
    from calibrate_cli.train.models import create_model

    bundle = load_dataset("glyphs", classes=classes, train_per_class=train_per_class,
                          test_per_class=test_per_class)
    net = create_model(model, num_classes=classes, in_channels=1, image_size=bundle.image_size)
    part = getattr(bundle, split)
    x = torch.tensor(part.images, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    with torch.no_grad():
        pred = net((x - bundle.mean[0]) / bundle.std[0]).argmax(1).numpy()
    return pred, np.asarray(part.labels)
