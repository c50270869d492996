"""calibrate plot: every figure writes a valid file, and the plotted data is the engine's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from calibrate_cli import plots as P
from calibrate_cli.engine.average import Averager
from calibrate_cli.cli.app import build_app
from calibrate_cli.errors import UsageError
from calibrate_cli.engine.logits import Gaussian, from_array
from calibrate_cli.losses import get_loss, resolve_params
from calibrate_cli.engine.solve import solve_epsilon, solve_q

pytest.importorskip("matplotlib")
APP = build_app("plot")
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-", ".svg": b"<?xml"}


def run(*args):
    return CliRunner().invoke(APP, [str(a) for a in args])


def check_file(path):
    data = path.read_bytes()
    ext = path.suffix
    assert len(data) > 1000 and data.startswith(MAGIC[ext]), (path, data[:20])
    if ext == ".svg":
        assert b"<svg" in data[:2000] and data.rstrip().endswith(b"</svg>")
    if ext == ".pdf":
        assert b"%%EOF" in data[-64:]


def results_fixture():
    """A tiny validate-format dict (synthesised for the test only)."""
    runs = []
    for label, base in (("mae", 0.3), ("mae*", 0.5)):
        for seed in (0, 1):
            acc = [base + 0.05 * e + 0.01 * seed for e in range(1, 5)]
            runs.append({"id": f"{label}/sym-0.4/seed-{seed}", "label": label, "noise": "sym:0.4",
                         "seed": seed, "status": "complete", "epochs": [1, 2, 3, 4],
                         "test_top1": acc})
    runs.append({"id": "ce/sym-0.4/seed-0", "label": "ce", "noise": "sym:0.4", "seed": 0,
                 "status": "running", "epochs": [], "test_top1": []})
    return {"grid": {"dataset": "glyphs", "classes": 10, "model": "mlp1024",
                     "noise": ["sym:0.4"], "seeds": [0, 1]},
            "runs": runs, "summary": []}


def test_delta_mae_lines_are_the_engines_average():
    dist = Gaussian(0.0, 0.5)
    fig = P.figure_delta_mae(dist, classes=(10, 100))
    lines = fig.axes[0].get_lines()
    mae = get_loss("mae")
    av = Averager(dist)
    for line, k in zip(lines, (10, 100)):
        assert line.get_label() == f"K = {k}"
        z, y = (np.asarray(a, dtype=float) for a in line.get_data())
        ref = av.mean_delta(mae, resolve_params(mae), k, z).value
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)
        # MAE: <δ_k> = -2<σ_k(1-σ_k)> has its extremum -1/2 where σ_k ≈ 1/2
        assert -0.5 - 1e-9 <= y.min() < -0.45
    # the curve at K = 100 peaks to the right of K = 10 (more classes: larger z needed)
    peaks = [np.asarray(ln.get_data()[0])[np.argmin(ln.get_data()[1])] for ln in lines[:2]]
    assert peaks[1] > peaks[0] + 2


def test_losses_figure_normalised_and_shifted():
    dist = Gaussian(0.0, 0.5)
    fig = P.figure_losses(dist, losses=("mae", "gce"), classes=(10, 1000))
    ax = fig.axes[0]
    for line in ax.get_lines():
        y = np.asarray(line.get_data()[1])
        assert np.max(np.abs(y)) == pytest.approx(1.0)
    mae = get_loss("mae")
    eps = solve_epsilon(mae, resolve_params(mae), 1000, dist).epsilon
    assert f"{eps:.2f}" in fig.axes[1].get_title()
    with pytest.raises(UsageError, match="Monte Carlo"):
        P.figure_losses(dist, losses=("nce",))


def test_q_calibration_uses_the_transferred_q():
    dist = Gaussian(0.0, 0.5)
    fig = P.figure_q_calibration(dist, sweep=[100, 1000])
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    q = solve_q(100, 1000, dist).value
    assert f"K = 1000, q = {q:.3f}" in labels
    ks, qs = fig.axes[1].get_lines()[0].get_data()
    assert list(ks) == [100, 1000] and qs[0] == pytest.approx(0.7, abs=1e-8)
    assert qs[1] == pytest.approx(q, rel=1e-9)


def test_epsilon_vs_k_against_solver_and_mean_field():
    dist = Gaussian(0.0, 0.5)
    ks = [10, 100, 10000]
    fig = P.figure_epsilon_vs_k(dist, classes=ks)
    match, peak, mf_match, mf_peak = fig.axes[0].get_lines()[:4]
    mae = get_loss("mae")
    for line, crit in ((match, "match"), (peak, "peak")):
        for k, e in zip(*line.get_data()):
            assert e == pytest.approx(solve_epsilon(mae, resolve_params(mae), int(k), dist,
                                                    criterion=crit).epsilon, abs=1e-9)
    # mean field: ln((K-1)/9) and ln(K-1) + s²/2 for a Gaussian
    np.testing.assert_allclose(mf_match.get_data()[1], np.log((np.array(ks) - 1) / 9.0))
    np.testing.assert_allclose(mf_peak.get_data()[1], np.log(np.array(ks) - 1) + 0.125,
                               atol=1e-9)
    # at large K the exact ε approaches the mean field
    assert abs(match.get_data()[1][-1] - mf_match.get_data()[1][-1]) < 0.05


def test_histogram_fit_and_accuracy_band(tmp_path):
    z = np.random.default_rng(0).normal(0.0, 0.4, size=(500, 10))
    fig = P.figure_logit_histogram(z)
    fit = fig.axes[0].get_lines()[0]
    x, y = (np.asarray(a) for a in fit.get_data())
    s = (z - z.mean(axis=1, keepdims=True)).std()
    np.testing.assert_allclose(y, np.exp(-0.5 * (x / s) ** 2) / (s * math.sqrt(2 * math.pi)))
    res = results_fixture()
    curves = P.accuracy_curves(res)
    ep, mean, std, n = curves[("mae*", "sym:0.4")]
    assert n == 2 and list(ep) == [1, 2, 3, 4]
    np.testing.assert_allclose(mean, [100 * (0.5 + 0.05 * e + 0.005) for e in ep])
    np.testing.assert_allclose(std, 100 * 0.01 / math.sqrt(2))
    assert ("ce", "sym:0.4") not in curves  # no epochs yet
    out = tmp_path / "acc.png"
    P.plot_accuracy(res, str(out))
    check_file(out)
    lines = P.figure_accuracy(res).axes[0].get_lines()
    np.testing.assert_allclose(lines[1].get_data()[1], mean)  # mae* is the second label
    empty = {"runs": [dict(res["runs"][-1])]}
    with pytest.raises(UsageError, match="no run"):
        P.figure_accuracy(empty)
    P.plot_accuracy(empty, str(tmp_path / "empty.png"))  # validate's call never fails
    check_file(tmp_path / "empty.png")


@pytest.mark.parametrize("ext", [".png", ".svg", ".pdf"])
def test_every_format_writes_a_valid_file(tmp_path, ext):
    out = tmp_path / f"fig{ext}"
    r = run("plot", "delta-mae", "--out", out, "--logit-std", 0.3)
    assert r.exit_code == 0, r.stderr
    check_file(out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind


@pytest.mark.parametrize("name", ["losses", "q-calibration", "epsilon-vs-k"])
def test_cli_figures(tmp_path, name):
    out = tmp_path / f"{name}.png"
    r = run("plot", name, "--out", out)
    assert r.exit_code == 0, r.stderr
    check_file(out)


def test_cli_histogram_and_accuracy_from_files(tmp_path):
    import json

    logits = tmp_path / "z.npy"
    np.save(logits, np.random.default_rng(1).normal(size=(200, 10)))
    out = tmp_path / "h.svg"
    r = run("plot", "logit-histogram", "--logits", logits, "--out", out)
    assert r.exit_code == 0, r.stderr
    check_file(out)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "results.json").write_text(json.dumps(results_fixture()))
    out = tmp_path / "a.pdf"
    r = run("plot", "accuracy", "--validate", tmp_path / "val", "--out", out)
    assert r.exit_code == 0, r.stderr
    check_file(out)


@pytest.mark.parametrize("args,pattern", [
    (["delta-mae", "--out", "fig.jpg"], ".png, .svg or .pdf"),
    (["delta-mae"], "--out"),
    (["nope", "--out", "x.png"], "unknown figure"),
    (["logit-histogram", "--logits", "/nonexistent.npz", "--out", "x.png"], "does not exist"),
    (["accuracy", "--out", "x.png"], "--validate"),
    (["accuracy", "--validate", "/nonexistent", "--out", "x.png"], "results.json"),
    (["all", "--out", "x.png"], "--out-dir"),
    (["delta-mae", "--out", "/nonexistent/dir/x.png"], "does not exist"),
    (["delta-mae", "--out", "x.png", "--logit-std", "-1"], "--logit-std"),
])
def test_bad_input(args, pattern, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("plot", *args)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and pattern in err, err
    assert not list(tmp_path.iterdir())


def test_check_output_and_empirical_distribution(tmp_path):
    with pytest.raises(UsageError):
        P.check_output(str(tmp_path / "x.gif"))
    assert P.check_output(str(tmp_path / "x.PDF")) == "pdf"
    emp = from_array(np.random.default_rng(2).normal(0, 0.3, size=(100, 20)))
    fig = P.figure_delta_mae(emp, classes=(10,))
    z, y = fig.axes[0].get_lines()[0].get_data()
    mae = get_loss("mae")
    ref = Averager(emp).mean_delta(mae, resolve_params(mae), 10, np.asarray(z)).value
    np.testing.assert_allclose(y, ref, atol=1e-12)
    with pytest.raises(UsageError):
        P.read_validate(str(tmp_path))
