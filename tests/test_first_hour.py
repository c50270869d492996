"""The first hour of use: plain output off a terminal, listings readable at 80 columns, the
thread default, the shipped glyph class list, a missing optional package named by its extra."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from helpers import TINY, cli, env, load_json, one_line_error, run  # noqa: E402


# ------------------------------------------------------------------ output, first hour

def test_train_output_when_not_a_terminal(tmp_path):
    out = tmp_path / "run"
    r = cli(tmp_path, "train", *TINY[:-1], "--epochs", "2", "--out", out)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    desc = load_json(out / "config.json")["dataset"]["description"]
    assert len(desc) > 80 and desc in lines  # one unwrapped line
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert len(epochs) == 2 and all(not ln.endswith("…") for ln in lines)
    assert all(ln.split()[-2:][1] in ("s", "ms") and "samples/s" in ln for ln in epochs)
    assert lines[0].startswith("threads: ") and lines[-1].startswith("done: ")
    assert "━" not in r.stdout  # no progress bar when stderr is not a terminal
    # --json: stdout holds the JSON object alone, the run's lines go to stderr
    r = run("train", *TINY, "--epochs", "1", "--out", tmp_path / "j", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "complete"
    assert "epoch 1/1" in r.stderr and "done:" in r.stderr


def test_losses_is_readable_at_80_columns():
    from calibrate_cli.cli.losses import _lines, _records

    recs = _records()
    for verbose in (False, True):
        wrapped = _lines(recs, verbose=verbose, width=80)
        plain = _lines(recs, verbose=verbose, width=None)
        assert max(len(ln) for ln in wrapped) <= 80
        # wrapped only between words: the same words in the same order
        assert " ".join(" ".join(wrapped).split()) == " ".join(" ".join(plain).split())
        assert len(wrapped) < (110 if not verbose else 150)
    r = run("losses")
    assert r.exit_code == 0 and "│" not in r.stdout
    for rec in recs:
        assert f"δ_k = {rec['delta']}" in r.stdout  # every formula whole on one line


def test_threads_default_to_the_free_physical_cores_and_are_printed(tmp_path, monkeypatch):
    from calibrate_cli.train import threads as T

    assert [T.choose(2, x) for x in (0.0, 0.4, 0.6, 1.0, 3.0)] == [2, 2, 1, 1, 1]
    assert T.choose(16, 4.2) == 12 and T.choose(4, None) == 4
    assert 1 <= T.physical_cores() <= len(T.available_cpus())
    monkeypatch.setattr(T, "_CHOICE", None)
    monkeypatch.setattr(T, "load_average", lambda: 64.0)  # a machine far busier than its cores
    old = torch.get_num_threads()
    used = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (used.append(n), real(n)))
    real(2)
    try:
        r = run("train", *TINY, "--epochs", "1", "--out", tmp_path / "run")
        assert r.exit_code == 0, r.stderr
        assert used[0] == 1  # the run's threads
        assert torch.get_num_threads() == 2  # the caller's, restored
        assert r.stdout.startswith("threads: 1 (free cores:") and "load 64.0" in r.stdout
    finally:
        real(old)


def test_glyph_class_list_is_shipped_or_cached_not_recomputed(tmp_path, monkeypatch):
    from calibrate_cli.train import glyphs as G

    every = G._all_classes()
    G._all_classes.cache_clear()
    monkeypatch.setattr(G, "_compute_classes", lambda: pytest.fail("recomputed"))
    try:
        assert G._all_classes() == every  # the shipped list fits this installation
        # another installation: computed once, then read from the cache
        G._all_classes.cache_clear()
        monkeypatch.setattr(G, "_SHIPPED", str(tmp_path / "none.json"))
        monkeypatch.setenv("CALIBRATE_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(G, "_compute_classes", lambda: every[:50])
        assert G._all_classes() == every[:50]
        G._all_classes.cache_clear()
        monkeypatch.setattr(G, "_compute_classes", lambda: pytest.fail("recomputed"))
        assert G._all_classes() == every[:50]
        # a damaged cache file is computed again, not an error
        G._all_classes.cache_clear()
        (cached,) = (tmp_path / "cache").iterdir()
        cached.write_text("{")
        monkeypatch.setattr(G, "_compute_classes", lambda: every[:40])
        assert G._all_classes() == every[:40]
    finally:
        G._all_classes.cache_clear()


def test_shipped_glyph_class_list_is_what_the_rules_give():
    from calibrate_cli.train import glyphs as G

    shipped = load_json(G._SHIPPED)
    key = G.class_list_key()
    if key not in shipped:
        pytest.skip("the fonts or renderer differ from those the list was made with")
    assert tuple(shipped[key]["classes"]) == G._compute_classes()


@pytest.mark.parametrize("blocked,command,extra", [
    ("matplotlib", ["plot", "delta-mae", "--out", "x.png"], "plot"),
    ("torch", ["train", "--epochs", "1"], "train"),
    ("matplotlib", ["train", "--epochs", "1"], "train"),
])
def test_a_missing_optional_package_names_the_extra(tmp_path, blocked, command, extra):
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from calibrate_cli.cli.app import main\n"
            f"sys.argv = ['calibrate'] + {command!r}\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "internal error" not in r.stderr
    # commands that work from a wheel (the package by its name) and from a clone (the extra);
    # no index serves the distribution's name, so 'calibrate-cli[...]' would not install
    assert f"pip install {blocked} " in r.stderr or f"pip install {blocked}; " in r.stderr
    assert f"from a clone of calibrate: pip install '.[{extra}]'" in r.stderr
    assert "calibrate-cli[" not in r.stderr


def test_first_hour_conveniences(tmp_path):
    # integers in float notation, as the docs write them; non-integers still refused
    r = run("train", "--classes", "1e1", "--epochs", "2.0", "--print-config")
    assert r.exit_code == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["classes"] == 10 and cfg["epochs"] == 2
    one_line_error(run("train", "--classes", "2.5", "--print-config"), 2, "--classes")
    # --print-config shows the protocol's defaults without data, without training
    cfg = json.loads(run("train", "--dataset", "cifar100", "--print-config").stdout)
    assert (cfg["model"], cfg["epochs"], cfg["lr"], cfg["batch_size"]) == ("resnet34", 200, 0.1, 128)
    assert not (tmp_path / "runs").exists()
    h = run("train", "--help").stdout
    assert "asymmetric-literature" in h and "--print-config" in h
