"""The examples of issue 18 (third round of hostile input), one test each: every one failed on
the code before the fix (a wrong answer with exit 0, an internal error, '± inf', a traceback).

The wrong answers are checked against independent computations: the q that the search now finds
is a root of <δ_k> evaluated directly, and brackets the sign change the issue located by hand.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import calibrate_cli as cal
from calibrate_cli import api
from calibrate_cli.errors import (ArgumentTypeError, CalibrateError, NoSolutionError, RunError,
                                  StorageError, UsageError)
from helpers import TINY, env, fails, ok, one_line_error, run

STRICT = {"parse_constant": lambda c: (_ for _ in ()).throw(ValueError(f"not JSON: {c}"))}


# ------------------------------------------------------------ 1. wrong answers

def test_q_is_found_beyond_the_first_scan():
    """`q --from 100 --to 1000 --q-from 1e-6` said "no q in (0, 4]" having scanned up to 0.001;
    the root lies between 0.00114 and 0.00115 (the issue's hand search)."""
    d = json.loads(ok("q", "--loss", "gce", "--from", 100, "--to", 1000, "--q-from", 1e-6,
                      "--json").stdout)
    t = api.mean_delta([0.0], 100, "gce", params={"q": 1e-6}).value[0]
    lo = api.mean_delta([0.0], 1000, "gce", params={"q": 0.00114}).value[0]
    hi = api.mean_delta([0.0], 1000, "gce", params={"q": 0.00115}).value[0]
    assert (lo - t) * (hi - t) < 0  # the independent bracket of the issue
    assert 0.00114 < d["q"] < 0.00115
    at = api.mean_delta([0.0], 1000, "gce", params={"q": d["q"]}).value[0]
    assert at == pytest.approx(t, rel=1e-9) and d["target"] == pytest.approx(t, rel=1e-12)


def test_no_solution_states_the_range_it_searched():
    """Where no value exists, the message names the interval searched and the valid range, and
    the interval reaches 1e-12 and 1e12 of an unbounded range (0, inf)."""
    err = fails(1, "searched a in", "transfer", "--loss", "agce", "--param", "a", "--from", 10,
                "--to", 1000, "--set", "a=1e-6")
    m = re.search(r"searched a in \[([-+0-9.e]+), ([-+0-9.e]+)\] of its range \(0, inf\)", err)
    assert m and float(m.group(1)) <= 1e-12 and float(m.group(2)) >= 1e12, err
    lo, hi = (float(x) for x in re.search(r"stays within \[([-+0-9.e]+), ([-+0-9.e]+)\]",
                                          err).groups())
    direct = [api.mean_delta([0.0], 1000, "agce", params={"a": a}).value[0]
              for a in (1e-12, 1e-6, 1.0, 1e6, 1e12)]
    assert lo <= min(direct) + 1e-12 and max(direct) <= hi + 1e-12


def test_python_transfer_searches_the_whole_range_too():
    r = cal.q(100, 1000, q_from=1e-6)
    assert 0.00114 < r.value < 0.00115


torch = pytest.importorskip("torch")


def _loader(n=4, width=20, batch=8):
    return [torch.randn(batch, width) for _ in range(n)]


@pytest.mark.parametrize("model", [torch.nn.Linear(20, 10),
                                   torch.nn.Sequential(torch.nn.Linear(20, 1), torch.nn.Flatten(0))],
                         ids=["10 outputs for K=1000", "[N] output"])
def test_a_model_with_other_outputs_is_refused(model):
    with pytest.raises(UsageError, match="classes|shape"):
        cal.nn.loss("mae", classes=1000, logit_bias="auto", logit_std="measure", model=model,
                    loader=_loader())
    with pytest.raises(UsageError, match="outputs|shape"):
        cal.nn.measure_logit_std(model, _loader(), classes=1000)


def test_the_trainer_measures_only_logits_of_its_k():
    from calibrate_cli.train import loop

    class Data:
        n = 16

        def batches(self, idx, dist, aug, gen):
            for i in idx:
                yield torch.randn(len(i), 20), None, None, len(i)

    net = torch.nn.Linear(20, 10)
    assert loop.measure_logits(net, Data(), 8, 2, loop.Dist(), classes=10).shape == (16, 10)
    with pytest.raises(UsageError, match="10 outputs"):
        loop.measure_logits(net, Data(), 8, 2, loop.Dist(), classes=12)


def _train(tmp_path, name, *extra):
    out = tmp_path / name
    return run("train", *TINY, "--epochs", 1, "--loss", "mae", "--out", out, *extra), out


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    r, out = _train(tmp_path_factory.mktemp("ckpt"), "run")
    assert r.exit_code == 0, r.stderr
    return out


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s.__setitem__("epoch", "two"), "epoch = 'two'"),
    (lambda s: s.__setitem__("history", [{"epoch": 1}]), "without lr"),
    (lambda s: s["derived"].__setitem__("epsilon", float("nan")), "epsilon = nan"),
    (lambda s: s["history"][0].__setitem__("test_top1", float("inf")), "test_top1 = inf"),
    (lambda s: s.__setitem__("optimizer", "adam"), "optimizer state"),
])
def test_a_checkpoint_with_nonsense_fields_is_refused_before_training(saved_run, tmp_path, edit,
                                                                       needle):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(saved_run, out)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    edit(state)
    torch.save(state, out / "checkpoint.pt")
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    r = run("train", *TINY, "--epochs", 2, "--loss", "mae", "--out", out, "--resume")
    one_line_error(r, 2, needle)
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before  # nothing trained


def test_huge_learning_rate_writes_strict_json(tmp_path):
    """lr 1e10 drives MAE's logits to ~1e27: finite, so the run completes, and its statistics
    (once Infinity/NaN from float32 squares) are finite numbers in strict JSON."""
    r, out = _train(tmp_path, "big", "--lr", 1e10, "--epochs", 2)
    assert r.exit_code == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text(), **STRICT)
    assert m["status"] == "complete"
    for row in m["epochs"]:
        for key in ("logit_correct_std", "logit_other_std", "logit_correct_mean"):
            assert isinstance(row[key], float) and math.isfinite(row[key])


def test_logits_that_overflow_make_the_run_diverged(tmp_path):
    r, out = _train(tmp_path, "nan", "--lr", 1e30, "--epochs", 2)
    one_line_error(r, 1, "diverged")
    m = json.loads((out / "metrics.json").read_text(), **STRICT)
    assert m["status"] == "diverged" and m["epochs_done"] == len(m["epochs"])


def test_the_guard_stops_at_non_finite_logits_and_statistics():
    from calibrate_cli.train.safety import FiniteGuard, NonFinite

    guard = FiniteGuard(torch.device("cpu"), distributed=False)
    guard.check(torch.tensor(0.5), 0, 0, logits=torch.ones(2, 3))
    with pytest.raises(NonFinite, match="logits"):  # a bounded loss can stay finite
        guard.check(torch.tensor(0.5), 0, 1, logits=torch.tensor([[0.0, -math.inf]]))
    with pytest.raises(NonFinite, match="logit_other_std"):
        guard.epoch_end(0.5, 0, torch.nn.Linear(2, 2),
                        {"train_loss": 0.5, "logit_other_std": math.inf, "test_top1": math.nan})


def test_an_infinite_error_estimate_is_an_error_not_plus_minus_inf():
    """agce with a = 1e-300, q = 1e5: <δ_k> is flat at the root, so its error is infinite;
    before: 'ε 8.720120 (± inf, monte-carlo)' and exit 0."""
    err = fails(1, "error estimate is not finite", "epsilon", "--classes", 10, "--loss", "agce",
                "--set", "a=1e-300", "--set", "q=1e5", "--samples", 16)
    assert "inf" not in err.split("error estimate")[0]
    r = run("epsilon", "--classes", 10, "--loss", "agce", "--set", "a=1e-300", "--set", "q=1e5",
            "--samples", 16, "--json")
    assert r.exit_code == 1 and r.stdout == ""


def test_a_nan_epsilon_in_a_state_dict_is_refused():
    crit = cal.nn.loss("mae", classes=10, logit_bias=1.5)
    state = crit.state_dict()
    key = next(k for k in state if k.endswith("_extra_state"))
    bad = dict(state[key], epsilon=float("nan"))
    with pytest.raises(UsageError, match="epsilon"):
        crit.load_state_dict({key: bad})
    assert crit.epsilon == 1.5  # unchanged
    z, y = torch.randn(4, 10), torch.arange(4)
    assert torch.isfinite(crit(z, y))
    with pytest.raises(UsageError, match="scale"):
        crit.load_state_dict({key: dict(state[key], params={"scale": -1.0})})


# ------------------------------------------------------- 2. no internal error

def test_a_dead_worker_is_one_line_with_a_resume_hint(monkeypatch):
    """A worker killed under `validate --jobs 2` (here: the pool reports it broken) ended as
    'internal error: BrokenProcessPool'."""
    import concurrent.futures as cf
    from concurrent.futures.process import BrokenProcessPool

    from calibrate_cli.train import parallel
    from calibrate_cli.train.config import TrainConfig

    class Broken:
        def __init__(self, *a, **k):
            pass

        def submit(self, *a, **k):
            f = cf.Future()
            f.set_exception(BrokenProcessPool("A child process terminated abruptly"))
            return f

        def shutdown(self, *a, **k):
            pass

    monkeypatch.setattr(cf, "ProcessPoolExecutor", Broken)
    monkeypatch.setattr("calibrate_cli.train.threads.available_cpus", lambda: [0, 1])
    todo = [(f"run{i}", TrainConfig(out=f"/nonexistent/{i}", threads=1)) for i in range(2)]
    with pytest.raises(RunError, match="worker process died.*run the same"):
        parallel.train_runs(todo, jobs=2, log=lambda s: None,
                            resume_hint="run the same command again to continue")


def test_threads_beyond_the_machine_are_clamped_with_a_note():
    from calibrate_cli.train import threads

    cpus = len(threads.available_cpus())
    n, why = threads.resolve(100000)
    assert n == cpus and "100000" in why and str(cpus) in why
    assert threads.resolve(1) == (1, "--threads")
    r = run("measure", "--model", "mlp8", "-k", 10, "--batches", 1, "--batch-size", 8,
            "--threads", 100000, "--json")
    assert r.exit_code == 0, r.stderr
    meta = json.loads(r.stdout)["meta"]
    assert meta["threads"] == cpus and "100000" in meta["threads_reason"]


def test_a_pipe_closed_by_its_reader_is_not_user_code(tmp_path):
    """`calibrate epsilon --help | head -1` printed "user code called sys.exit(1)": the reader
    of the pipe is gone (here before the command writes, as a fast `head` can be), so the
    command ends quietly with 141, as a shell reports a pipe's writer."""
    for args in (["epsilon", "--help"], ["--help"], ["losses", "-v"],
                 ["curve", "-k", 10, "--csv"], ["epsilon", "-k", 10, "--json"]):
        p = subprocess.Popen([sys.executable, "-m", "calibrate_cli", *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(tmp_path))
        p.stdout.close()  # the reader leaves
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 141 and err == "", (args, err)


def test_a_closed_or_full_stdout_is_one_line(tmp_path):
    closed = subprocess.run([sys.executable, "-m", "calibrate_cli", "epsilon", "-k", "10"],
                            stdout=None, stderr=subprocess.PIPE, text=True, env=env(tmp_path),
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 4 and closed.stderr.count("\n") == 1
    assert closed.stderr.startswith("error: cannot write the output to stdout: stdout is closed")
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "calibrate_cli", "epsilon", "-k", "10"],
                               stdout=full, stderr=subprocess.PIPE, text=True, env=env(tmp_path))
        assert r.returncode == 4 and r.stderr.count("\n") == 1 and "disk is full" in r.stderr


@pytest.mark.parametrize("call,name", [
    (lambda: cal.nn.loss("mae", classes=1, logit_bias=1.0), "classes"),
    (lambda: cal.nn.loss("gce", classes=10, calibrate={"q": 1}), "calibrate['q']"),
    (lambda: cal.q(1, 1000), "k_from"),
    (lambda: cal.transfer("gce", "q", 10, 0), "k_to"),
    (lambda: cal.epsilon(100, logit_std=-1), "logit_std"),
    (lambda: cal.epsilon(100, samples=3), "samples"),
    (lambda: cal.epsilon(100, reference_classes=1), "reference_classes"),
    (lambda: cal.transfer("gce", "q", 10, 100, at=math.inf), "at"),
])
def test_python_messages_name_the_python_argument(call, name):
    with pytest.raises(ValueError) as info:
        call()
    text = str(info.value)
    assert text.startswith(name + " ") and "--" not in text, text


def test_the_command_line_still_names_its_options():
    fails(2, "--classes must", "epsilon", "--classes", 1)
    fails(2, "--from must", "q", "--from", 1, "--to", 10)
    fails(2, "--samples must", "epsilon", "-k", 10, "--loss", "nce", "--samples", 3)


# ------------------------------------------------------------------ 3. types

def test_errors_are_the_matching_built_in_exceptions():
    assert issubclass(UsageError, ValueError) and issubclass(NoSolutionError, ValueError)
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)
    assert issubclass(RunError, RuntimeError) and issubclass(StorageError, OSError)
    assert all(issubclass(c, CalibrateError) for c in (UsageError, RunError, StorageError))
    with pytest.raises(ValueError):
        cal.epsilon(1)
    with pytest.raises(ValueError):  # no solution is a ValueError too
        cal.epsilon(10, criterion="target", target=0.3)
    assert StorageError("x").exit_code == 4 and str(StorageError("disk full")) == "disk full"


# ------------------------------------------------ 4. nothing slow by surprise

def test_measuring_leaves_the_random_state_as_it_was():
    """logit_std="measure" drew from torch's global generator (a shuffled DataLoader draws its
    seed there), so a seeded run trained on other batches when it measured first."""
    data = torch.utils.data.TensorDataset(torch.randn(64, 20), torch.randint(0, 10, (64,)))
    model = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.Dropout(0.5))
    for gen in (None, torch.Generator().manual_seed(3)):
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=gen)
        torch.manual_seed(0)
        want = torch.rand(5)
        own = None if gen is None else gen.get_state()
        torch.manual_seed(0)
        cal.nn.loss("mae", classes=10, logit_bias="auto", logit_std="measure", model=model,
                    loader=loader)
        assert torch.equal(torch.rand(5), want)
        if gen is not None:
            assert torch.equal(gen.get_state(), own)


def test_many_atoms_are_binned_without_changing_epsilon(monkeypatch, tmp_path):
    """--atoms 0 on 6000 values: the binned path (on from MIN_ATOMS atoms; lowered here to use
    it) gives the ε of the atom-by-atom sums to 1e-10."""
    from calibrate_cli.engine import laplace

    path = tmp_path / "z.npy"
    np.save(path, np.random.default_rng(4).normal(0, 0.6, size=(6, 1000)))
    eps = {}
    for name, limit in (("binned", 1000), ("by atom", 10**9)):
        monkeypatch.setattr(laplace, "MIN_ATOMS", limit)
        r = ok("epsilon", "--classes", 1000, "--logits", path, "--atoms", 0, "--json")
        eps[name] = json.loads(r.stdout)["epsilon"]
    assert eps["binned"] == pytest.approx(eps["by atom"], abs=1e-10)
