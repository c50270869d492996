"""Edges of the calibration and measure commands: integer options written as floats, messages
that name the right option and the true range, exit codes instead of internal errors, logits
files that are not what they claim, measure's size and output checks, threads and progress,
and the up-front cost of Monte Carlo work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from calibrate_cli import api
from helpers import REPO, fails, run


def ok_json(*args):
    r = run(*args, "--json")
    assert r.exit_code == 0, (args, r.stderr)
    return json.loads(r.stdout)


# ------------------------------------------------------- integers written as floats

@pytest.mark.parametrize("plain,floats", [
    (["epsilon", "-k", 1000], ["epsilon", "-k", "1e3"]),
    (["epsilon", "-k", 1000, "--reference-classes", 20],
     ["epsilon", "-k", "1000.0", "--reference-classes", "2e1"]),
    (["epsilon", "-k", 50, "--loss", "nce-mae", "--samples", 256, "--seed", 3],
     ["epsilon", "-k", "5e1", "--loss", "nce-mae", "--samples", "2.56e2", "--seed", "3.0"]),
    (["q", "--from", 100, "--to", 1000], ["q", "--from", "1e2", "--to", "1E3"]),
    (["transfer", "--loss", "agce", "--param", "a", "--from", 10, "--to", 100, "--set", "q=2"],
     ["transfer", "--loss", "agce", "--param", "a", "--from", "1e1", "--to", "100.0", "--set",
      "q=2"]),
    (["curve", "-k", "10,1000", "--points", 5, "--epsilon", "auto", "--reference-classes", 5],
     ["curve", "-k", "1e1,1e3", "--points", "5.0", "--epsilon", "auto",
      "--reference-classes", "5e0"]),
])
def test_integer_options_accept_integer_valued_floats(plain, floats):
    a, b = ok_json(*plain), ok_json(*floats)
    assert a == b


def test_atoms_accepts_an_integer_valued_float(tmp_path):
    np.save(tmp_path / "l.npy", np.random.default_rng(0).normal(0, 0.5, size=(50, 10)))
    a = ok_json("epsilon", "-k", 100, "--logits", tmp_path / "l.npy", "--atoms", 64)
    b = ok_json("epsilon", "-k", 100, "--logits", tmp_path / "l.npy", "--atoms", "6.4e1")
    assert a == b and a["distribution"]["atoms"] == 64


@pytest.mark.parametrize("args,option", [
    (["epsilon", "-k", 1.5], "--classes"),
    (["epsilon", "-k", 100, "--reference-classes", 2.5], "--reference-classes"),
    (["epsilon", "-k", 100, "--loss", "nce", "--samples", 100.5], "--samples"),
    (["epsilon", "-k", 100, "--loss", "nce", "--seed", 0.5], "--seed"),
    (["epsilon", "-k", 100, "--logits", "x.npy", "--atoms", 1.5], "--atoms"),
    (["q", "--from", 1.5, "--to", 100], "--from"),
    (["transfer", "--loss", "gce", "--param", "q", "--from", 10, "--to", "1e2.5"], "--to"),
    (["curve", "--points", 4.5], "--points"),
    (["curve", "-k", "10,2.5"], "--classes"),
    (["tables", "--jobs", 1.5], "--jobs"),
    (["measure", "--model", "mlp8", "-k", 1.5], "--classes"),
    (["measure", "--model", "mlp8", "-k", 10, "--batches", 0.5], "--batches"),
    (["measure", "--model", "mlp8", "-k", 10, "--batch-size", 2.5], "--batch-size"),
    (["measure", "--model", "mlp8", "-k", 10, "--seeds", "0,1.5"], "--seeds"),
    (["measure", "--model", "mlp8", "-k", 10, "--threads", 1.5], "--threads"),
])
def test_non_integers_stay_usage_errors(args, option):
    fails(2, option, *args)


# ------------------------------------------------------------- the right option

@pytest.mark.parametrize("args,option", [
    (["epsilon", "-k", 100, "--reference-classes", 1], "--reference-classes must"),
    (["curve", "--epsilon", "auto", "--reference-classes", 1], "--reference-classes must"),
    (["q", "--from", 1, "--to", 100], "--from must"),
    (["transfer", "--loss", "gce", "--param", "q", "--from", 10, "--to", 0], "--to must"),
])
def test_a_bad_class_count_names_its_own_option(args, option):
    err = fails(2, option, *args)
    assert "--classes" not in err


# ---------------------------------------------------------- "no solution" ranges

def _range(err):
    m = re.search(r"stays within \[([-+0-9.e]+), ([-+0-9.e]+)\]", err)
    assert m, err
    return float(m.group(1)), float(m.group(2))


@pytest.mark.parametrize("k,std", [(10, 0.5), (2, 1.0), (10, 2.0), (1000, 5.0)])
def test_no_solution_reports_the_true_range_of_delta(k, std):
    """A target <δ_k> > 0 is out of reach for MAE (δ_k <= 0). The range the message gives
    must reach the true extremum (the peak criterion's value), not the scan's value near it."""
    peak = ok_json("epsilon", "-k", k, "--logit-std", std, "--criterion", "peak")["peak_delta"]
    err = fails(1, "stays within", "epsilon", "-k", k, "--logit-std", std,
                "--criterion", "target", "--target", 0.3)
    lo, hi = _range(err)
    assert lo == pytest.approx(peak, rel=1e-5, abs=1e-9) and lo <= peak * (1 - 1e-7), (lo, peak)
    assert hi <= 0 and "lies above" in err


def test_transfer_refines_the_extrema_of_its_scan():
    """AEL's <δ_k>(a) at z = 0 has a narrow minimum near a = 0.1 that the scan of a (26
    log-spaced values) misses: at K = 4 the message must report the true minimum (checked on
    a fine grid), and at K = 12 the two roots that hide between two scan points must be found
    (before: "no solution", exit 1)."""
    err = fails(1, "no a", "transfer", "--loss", "ael", "--param", "a", "--from", 10, "--to", 4,
                "--set", "a=0.1")
    lo, hi = _range(err)
    m = re.search(r"searched a in \[([-+0-9.e]+), ([-+0-9.e]+)\]", err)
    a, b = float(m.group(1)), float(m.group(2))
    assert a <= 1e-12 and b >= 1e12  # the whole range (0, inf) as far as it is searched
    # dense around the minimum (a ~ 0.1), sparse over the rest of the searched range
    fine = [api.mean_delta(0.0, 4, "ael", params={"a": float(x)}).value[0]
            for x in np.concatenate([np.geomspace(1e-3, 1e3, 1500), np.geomspace(a, b, 200)])]
    assert lo <= min(fine) + 1e-6 and lo == pytest.approx(min(fine), rel=1e-5), (lo, min(fine))
    assert hi == pytest.approx(max(fine), abs=1e-9) and "lies below" in err
    d = ok_json("transfer", "--loss", "ael", "--param", "a", "--from", 10, "--to", 12,
                "--set", "a=0.1")
    assert d["delta_after"] == pytest.approx(d["target"], rel=1e-9)
    both = sorted([d["value"]] + d["other_roots"])
    assert len(both) == 2 and both[0] < 0.1 < both[1] * 1.5
    for root in both:
        assert api.mean_delta(0.0, 12, "ael", params={"a": root}).value[0] == pytest.approx(
            d["target"], rel=1e-9)


# --------------------------------------------------- exit 2, not "internal error"

@pytest.mark.parametrize("args,pattern", [
    (["q", "--from", 100, "--to", 1000, "--at", "1e6"], "--at must lie within"),
    (["q", "--from", 100, "--to", 1000, "--at", -700], "--at must lie within"),
    (["epsilon", "--loss", "nce", "--classes", 100, "--seed", -1], "--seed must be"),
    (["curve", "--loss", "nce", "--seed", -1, "--points", 3], "--seed must be"),
    (["transfer", "--loss", "nce-agce", "--param", "alpha", "--from", 10, "--to", 100,
      "--seed", -5], "--seed must be"),
    (["curve", "--z-min", "-1e6", "--z-max", "1e6"], "--z-min must lie within"),
    (["curve", "--epsilon", "1e300"], "--epsilon"),
])
def test_out_of_range_values_are_usage_errors(args, pattern):
    fails(2, pattern, *args)


def test_api_refuses_a_negative_seed():
    from calibrate_cli.errors import UsageError

    with pytest.raises(UsageError, match="seed"):
        api.epsilon(100, "nce", seed=-1)


# ------------------------------------------------------------ logits files

def test_garbage_npy_is_not_called_pickled_data(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"these bytes are no numpy file at all")
    err = fails(2, "not a NumPy .npy file", "epsilon", "-k", 10, "--logits", tmp_path / "junk.npy")
    assert "pickle" not in err
    (tmp_path / "junk.npz").write_bytes(b"nor a zip archive")
    err = fails(2, "not a NumPy .npz", "epsilon", "-k", 10, "--logits", tmp_path / "junk.npz")
    assert "pickle" not in err
    (tmp_path / "empty.npy").write_bytes(b"")
    fails(2, "empty", "epsilon", "-k", 10, "--logits", tmp_path / "empty.npy")
    # a real object array: that one is pickled data, and is said to be
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    fails(2, "pickled (object) data", "epsilon", "-k", 10, "--logits", tmp_path / "obj.npy")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_a_named_pipe_as_logits_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "logits.npy"
    os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=REPO)
    try:
        r = subprocess.run([sys.executable, "-m", "calibrate_cli", "epsilon", "-k", "10",
                            "--logits", str(fifo)], capture_output=True, text=True, timeout=60,
                           env=env)
    except subprocess.TimeoutExpired:  # before the fix: blocked waiting for a writer
        pytest.fail("calibrate blocked on a named pipe")
    assert r.returncode == 2 and "named pipe" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    fails(2, "is a folder", "epsilon", "-k", 10, "--logits", tmp_path)


# ----------------------------------------------------------------- sources

def test_loss_registry_cites_sources_by_name_only():
    import calibrate_cli.losses.specs as specs

    doc = " ".join(specs.__doc__.split())
    assert "../shared" not in doc and "peers.md" not in doc
    assert "Active-Passive Losses" in doc and "Asymmetric Loss Functions" in doc


# ------------------------------------------------------------------------ measure

@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is built (the checks must come before)."""
    pytest.importorskip("torch")
    import calibrate_cli.train.models as models

    def refuse(*a, **k):
        raise AssertionError("a model was built before the input was checked")

    monkeypatch.setattr(models, "create_model", refuse)


@pytest.mark.parametrize("args", [
    ["--model", "mlp1024", "-k", 10, "--input-shape", "3,100000,100000"],
    ["--model", "mlp65536x64", "-k", 10],
    ["--model", "resnet18", "-k", 10, "--input-shape", "3,4096,4096"],
    ["--model", "mlp1024", "-k", "1e7", "--batch-size", 2, "--batches", 1],
])
def test_measure_refuses_what_does_not_fit_before_building_it(no_model, args):
    err = fails(2, "8 GiB", "measure", *args)
    assert "parameters" in err and "activations" in err
    if args[3] == 10:  # the same through --from-model (which measures 4 batches of 128)
        fails(2, "8 GiB", "epsilon", "-k", 10, "--from-model", args[1],
              *(["--input-shape", args[args.index("--input-shape") + 1]]
                if "--input-shape" in args else []))


@pytest.mark.parametrize("model,shape", [
    ("mlp1024", (3, 32, 32)), ("mlp64x5", (1, 24, 24)), ("cnn8", (3, 32, 32)),
    ("cnn8", (1, 24, 24)), ("resnet18", (3, 32, 32)), ("resnet34-imagenet", (1, 64, 64)),
    ("resnet50", (3, 32, 32)), ("resnet50", (3, 96, 96)),
])
def test_model_size_counts_the_parameters_exactly(model, shape):
    pytest.importorskip("torch")
    from calibrate_cli.measure import model_size
    from calibrate_cli.train.models import count_parameters, create_model

    params, per_input = model_size(model, 37, shape)
    net = create_model(model, num_classes=37, in_channels=shape[0], image_size=shape[1])
    assert params == count_parameters(net)
    assert per_input > shape[0] * shape[1] * shape[2]


def test_measure_checks_out_before_measuring(tmp_path, no_model):
    fails(2, "does not exist", "measure", "--model", "mlp8", "-k", 10,
          "--out", tmp_path / "missing" / "l.npz")
    (tmp_path / "d.npz").mkdir()
    fails(2, "is a folder", "measure", "--model", "mlp8", "-k", 10, "--out", tmp_path / "d.npz")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            fails(2, "cannot be written", "measure", "--model", "mlp8", "-k", 10,
                  "--out", ro / "l.npz")
        finally:
            ro.chmod(0o700)
        assert os.listdir(ro) == []


def test_measure_writes_out_atomically_and_leaves_no_probe(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "l.npz"
    d = ok_json("measure", "--model", "mlp8", "-k", 10, "--batches", 1, "--batch-size", 16,
                "--threads", 1, "--out", out)
    assert sorted(os.listdir(tmp_path)) == ["l.npz"] and d["out"] == str(out)
    with np.load(out) as f:
        assert f["logits"].shape == (16, 10)


def test_measure_glyph_inputs_explain_the_character_count():
    pytest.importorskip("torch")
    d = ok_json("measure", "--model", "mlp8", "--dataset", "glyphs", "-k", 10, "--batches", 1,
                "--batch-size", 32, "--threads", 1)
    text = d["stats"]["inputs"]
    assert "100 characters" in text and "K = 10" in text and "labels" in text, text
    assert "600 train" not in text


def test_measure_uses_the_train_thread_default_and_restores_the_callers(monkeypatch):
    torch = pytest.importorskip("torch")
    from calibrate_cli.measure import measure_logits
    from calibrate_cli.train import threads as T

    monkeypatch.setattr(T, "_CHOICE", (1, "free cores: test"))
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        m = measure_logits("mlp8", 10, batches=1, batch_size=8,
                           progress=lambda s, i: seen.append(torch.get_num_threads()))
        assert seen == [1] and m.meta["threads"] == 1 and "free cores" in m.meta["threads_reason"]
        assert torch.get_num_threads() == 2  # the caller's setting is back
        m = measure_logits("mlp8", 10, batches=1, batch_size=8, threads=2,
                           progress=lambda s, i: seen.append(torch.get_num_threads()))
        assert seen[-1] == 2 and m.meta["threads_reason"] == "--threads"
    finally:
        torch.set_num_threads(before)
    r = run("measure", "--model", "mlp8", "-k", 10, "--batches", 1, "--batch-size", 8)
    assert r.exit_code == 0 and "threads" in r.stdout and "free cores: test" in r.stdout


def test_measure_and_from_model_show_progress(monkeypatch):
    pytest.importorskip("torch")
    import contextlib

    import calibrate_cli.utils.progress as progress

    steps = []

    @contextlib.contextmanager
    def record(message, **kw):
        steps.append(message)
        yield

    monkeypatch.setattr(progress, "slow_step", record)
    assert run("measure", "--model", "mlp8", "-k", 10, "--batches", 1, "--batch-size", 8,
               "--threads", 1).exit_code == 0
    assert run("epsilon", "-k", 10, "--from-model", "mlp8", "--json").exit_code == 0
    assert [s.startswith("measuring mlp8") for s in steps] == [True, True], steps


# ------------------------------------------------------------ Monte Carlo cost

def _whole_vector_loss():
    """A loss averaged over whole logit vectors whatever reductions the engine learns:
    MAE of the softmax at temperature t, written only as ``full`` (δ_k = -2 p (1 - p) / t,
    p = σ_k(z/t)): a bump in z, as every bounded loss."""
    from calibrate_cli.losses.base import LossSpec, Param

    def full(logits, params):
        t = params["t"]
        x = logits / t
        x = x - x.max(axis=1, keepdims=True)
        e = np.exp(x)
        p = e[:, 0] / e.sum(axis=1)
        return -2.0 * p * (1.0 - p) / t

    return LossSpec(name="mae-t", title="MAE with temperature", formula="", delta_formula="",
                    params=(Param("t", 1.0, 0.0, np.inf, True, True, "temperature"),),
                    full=full)


def _count_draws(av):
    drawn = [0]
    av.on_draws = lambda n: drawn.__setitem__(0, drawn[0] + n)
    return drawn


@pytest.mark.parametrize("what", ["match", "peak", "target", "transfer", "curve"])
def test_monte_carlo_cost_counts_the_draws_the_solver_makes(monkeypatch, what):
    """The estimate counts the logits the engine will draw (timing aside): it must agree
    with what the engine's hook counts while solving, within a factor 1.5."""
    import calibrate_cli.engine.cost as cost
    from calibrate_cli.engine.average import Averager
    from calibrate_cli.engine.logits import Gaussian
    from calibrate_cli.engine.solve import solve_epsilon, solve_transfer

    monkeypatch.setattr(cost, "SMALL", 0)
    spec = _whole_vector_loss()
    params = {"t": 1.0}
    for k, std in ((30, 0.5), (300, 2.0)):
        av = Averager(Gaussian(0.0, std), samples=64, seed=1)
        if what == "transfer":
            work = cost.transfer_evaluations(spec, params, "t", k, 10)
        elif what == "curve":
            work = {k: 41 + 2}
        else:
            work = cost.epsilon_evaluations(av, k, what, 10)
        c = cost.monte_carlo_cost(av, [(spec, params, work)])
        assert c is not None and c.seconds > 0 and c.evaluations > 0
        drawn = _count_draws(av)
        if what == "transfer":
            solve_transfer(spec, params, "t", k, 10, av.dist, averager=av)
        elif what == "curve":
            av.mean_delta(spec, params, k, np.linspace(-3, 10, 41))
            av.mean_delta(spec, params, k, np.array([0.0, 0.0]))
        else:
            target = -0.2 if what == "target" else None
            solve_epsilon(spec, params, k, av.dist, criterion=what, target=target, averager=av)
        assert c.draws / 2 <= drawn[0] <= c.draws * 1.25, (what, k, c.draws, drawn[0])


def test_monte_carlo_cost_is_none_for_exact_and_small_work():
    import calibrate_cli.engine.cost as cost
    from calibrate_cli.engine.average import Averager
    from calibrate_cli.engine.logits import Gaussian
    from calibrate_cli.losses import get_loss, resolve_params

    av = Averager(Gaussian(0.0, 0.5), samples=1024)
    mae = get_loss("mae")
    assert cost.monte_carlo_cost(av, [(mae, resolve_params(mae), {10**7: 80})]) is None
    spec = _whole_vector_loss()
    assert cost.monte_carlo_cost(av, [(spec, {"t": 1.0}, {10: 80})]) is None  # 8e5 logits


@pytest.fixture
def slow_machine(monkeypatch):
    """A whole-vector loss on a machine where a logit costs 1 µs, and a solver that stops at
    once (the test is about what is said before the work)."""
    import calibrate_cli.cli.common as common
    import calibrate_cli.engine.cost as cost
    from calibrate_cli.errors import NoSolutionError

    spec = _whole_vector_loss()
    monkeypatch.setattr(common, "get_loss", lambda name: spec)
    monkeypatch.setattr(cost, "_rates", lambda av, k, terms: (1e-6, 1e-6))

    def stop(*a, **k):
        raise NoSolutionError("stopped by the test")

    import calibrate_cli.cli.curve as curve
    import calibrate_cli.cli.epsilon as epsilon
    import calibrate_cli.cli.transfer as transfer

    monkeypatch.setattr(epsilon, "solve_epsilon", stop)
    monkeypatch.setattr(transfer, "solve_transfer", stop)
    monkeypatch.setattr(curve.c.Averager, "mean_delta", stop)


@pytest.mark.parametrize("args,seconds", [
    (["epsilon", "-k", 10, "--samples", "2e6"], None),
    (["q", "--loss", "x", "--from", 10, "--to", 1000, "--samples", 100000], None),
    # at K = 10^6 the default draws 256 vectors (2^26 logits per K, at least 256)
    (["curve", "-k", "1e6", "--points", 41], (43 * 10**6 + 10**6 - 1) * 256 * 1e-6),
])
def test_long_monte_carlo_work_is_announced_on_stderr(slow_machine, args, seconds):
    if args[0] == "q":
        args = ["transfer", "--loss", "x", "--param", "t"] + args[3:]
    r = run(*args)
    assert r.exit_code == 1
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 2 and lines[0].startswith("note: Monte Carlo over whole logit vectors")
    assert "on this machine" in lines[0] and "--samples" in lines[0]
    assert lines[1] == "error: stopped by the test"
    if seconds is not None:  # (43 evaluations + one pass of draws) × 256 vectors × 10^6 logits × 1 µs
        assert f"about {seconds / 3600:.1f} h" in lines[0], lines[0]


def test_long_monte_carlo_work_shows_its_estimate_on_a_terminal(slow_machine, monkeypatch):
    import contextlib

    import calibrate_cli.utils.progress as progress

    shown = []

    @contextlib.contextmanager
    def record(message, **kw):
        shown.append((message, kw))
        yield

    monkeypatch.setattr(progress, "slow_step", record)
    monkeypatch.setattr(progress, "interactive", lambda stream=None: True)
    r = run("epsilon", "-k", 10, "--samples", "2e6")
    assert r.exit_code == 1 and "note:" not in r.stderr  # the terminal shows it instead
    (message, kw), = shown
    assert message.startswith("Monte Carlo") and kw["after"] == 0 and kw["estimate"] > 60
    assert kw["fraction"]() == 0


def test_progress_line_shows_estimate_and_part_done():
    import time

    from calibrate_cli.utils.progress import slow_step

    class Tty:
        def __init__(self):
            self.text = []

        def isatty(self):
            return True

        def write(self, s):
            self.text.append(s)

        def flush(self):
            pass

    tty = Tty()
    with slow_step("working", after=0.0, estimate=300, stream=tty, fraction=lambda: 0.25):
        time.sleep(0.4)
    out = "".join(tty.text)
    assert "working" in out and "of about 5 min" in out and "25 %" in out
    assert out.endswith("\r\x1b[K")  # erased at the end
