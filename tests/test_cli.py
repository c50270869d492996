"""The calibration commands through Typer's CliRunner: outputs and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from calibrate_cli import api
from calibrate_cli.engine.logits import from_array
from helpers import fails, run


def ok_json(*args):
    r = run(*args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)  # exactly one JSON object: json.loads rejects trailing data


# ------------------------------------------------------------------ outputs
def test_epsilon_json_has_inputs_results_and_version():
    d = ok_json("epsilon", "--classes", 1000)
    assert d["command"] == "epsilon" and d["version"]
    assert d["loss"] == "mae" and d["classes"] == 1000 and d["criterion"] == "match"
    assert d["reference_classes"] == 10 and d["distribution"] == {"kind": "gaussian", "mean": 0.0, "std": 0.5}
    assert d["epsilon"] == pytest.approx(api.epsilon(1000).epsilon, abs=1e-12)
    assert d["error"] < 1e-6
    assert d["delta_after"] == pytest.approx(d["target"], rel=1e-9)
    assert d["delta_before"] > d["delta_after"]  # the bias makes the error larger in size


def test_epsilon_peak_json():
    d = ok_json("epsilon", "--classes", 1000, "--criterion", "peak", "--logit-std", 0.5)
    assert d["epsilon"] == pytest.approx(d["peak_z"]) and d["epsilon"] == pytest.approx(7.0316, abs=1e-3)


def test_epsilon_target_and_other_losses():
    d = ok_json("epsilon", "--classes", 100, "--criterion", "target", "--target", -0.2)
    assert d["delta_after"] == pytest.approx(-0.2, rel=1e-9)
    d = ok_json("epsilon", "--classes", 100, "--loss", "genCE", "--set", "q=0.5")
    assert d["loss"] == "gce" and d["params"] == {"q": 0.5}


def test_epsilon_text_output():
    r = run("epsilon", "--classes", 1000)
    assert r.exit_code == 0
    assert "4.734175" in r.stdout and "match" in r.stdout


def test_q_and_transfer_json():
    d = ok_json("q", "--loss", "gce", "--from", 100, "--to", 1000)
    assert d["q"] == pytest.approx(api.q(100, 1000).value, abs=1e-12)
    assert d["from"] == 100 and d["to"] == 1000 and d["value_from"] == 0.7
    assert d["delta_after"] == pytest.approx(d["target"], rel=1e-8)
    t = ok_json("transfer", "--loss", "gce", "--param", "q", "--from", 100, "--to", 1000)
    assert t["param"] == "q" and t["value"] == pytest.approx(d["q"], abs=1e-12)


def test_transfer_monte_carlo_loss():
    d = ok_json("transfer", "--loss", "nce-agce", "--param", "alpha", "--from", 100, "--to", 1000,
                "--preset", "cifar100", "--samples", 1024)
    assert d["value_from"] == 10 and d["params_from"]["q"] == 3
    assert d["method"] == "exact+monte-carlo" and d["monte_carlo"] == {"samples": 1024, "seed": 0}
    assert 100 < d["value"] < 250 and d["error"] < 0.1


def test_curve_csv_and_json():
    r = run("curve", "--loss", "mae", "--classes", 1000, "--epsilon", "auto", "--csv", "--points", 5)
    assert r.exit_code == 0
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("z,delta[mae K=1000 eps=4.734")
    z, v = map(float, lines[1].split(","))
    eps = api.epsilon(1000).epsilon
    assert v == pytest.approx(api.mean_delta(z + eps, 1000).value[0], rel=1e-10)
    d = ok_json("curve", "--loss", "mae,gce", "--classes", "10,1000", "--points", 7)
    assert len(d["z"]) == 7 and len(d["delta"]) == 4 and len(d["delta"][0]) == 7
    assert [(c["loss"], c["classes"]) for c in d["curves"]] == [
        ("mae", 10), ("mae", 1000), ("gce", 10), ("gce", 1000)]
    np.testing.assert_allclose(d["delta"][3], api.mean_delta(d["z"], 1000, "gce").value, rtol=1e-10)


def test_losses_table_and_json():
    r = run("losses")
    assert r.exit_code == 0 and "nce-agce" in r.stdout
    d = ok_json("losses")
    names = {x["name"] for x in d["losses"]}
    assert {"ce", "mae", "gce", "agce", "aul", "ael", "rce", "sce", "nce", "nce-rce", "nce-mae",
            "nce-agce", "nfl", "nf-mae", "nf-rce", "bitemp"} <= names


def test_logits_file(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((64, 100)) * 0.5
    np.save(tmp_path / "l.npy", arr)
    np.savez(tmp_path / "l.npz", logits=arr)
    a = ok_json("epsilon", "--classes", 1000, "--logits", tmp_path / "l.npy")
    b = ok_json("epsilon", "--classes", 1000, "--logits", tmp_path / "l.npz")
    assert a["epsilon"] == b["epsilon"]
    assert a["distribution"]["kind"] == "empirical" and a["distribution"]["n"] == 6400
    ref = api.epsilon(1000, dist=from_array(arr))
    assert a["epsilon"] == pytest.approx(ref.epsilon, abs=1e-12)


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.startswith("calibrate ")
    for cmd in ("epsilon", "q", "transfer", "curve", "losses"):
        h = run(cmd, "--help")
        assert h.exit_code == 0 and "Examples" in h.stdout, cmd


def test_calibration_commands_do_not_import_torch():
    code = ("import sys; from calibrate_cli.cli.app import main; "
            "sys.argv = ['calibrate', 'q', '--from', '100', '--to', '1000', '--json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'heavy import'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["q"] == pytest.approx(0.4716, abs=1e-4)


# ------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("args,code,pattern", [
    (["epsilon", "--classes", 1], 2, "--classes"),
    (["epsilon", "--classes", 0], 2, "--classes"),
    (["epsilon", "--classes", 2.5], 2, "--classes"),
    (["epsilon", "--classes", "many"], 2, "--classes"),
    (["epsilon", "--classes", 10, "--logit-std", 0], 2, "--logit-std"),
    (["epsilon", "--classes", 10, "--logit-std", -1], 2, "--logit-std"),
    (["epsilon", "--classes", 10, "--logit-std", "nan"], 2, "--logit-std"),
    (["epsilon", "--classes", 10, "--logit-std", "inf"], 2, "--logit-std"),
    (["epsilon", "--classes", 10, "--logit-mean", "nan"], 2, "--logit-mean"),
    (["epsilon", "--classes", 10, "--loss", "maee"], 2, "did you mean mae"),
    (["epsilon", "--classes", 10, "--set", "q=0.5"], 2, "no parameter 'q'"),
    (["epsilon", "--classes", 10, "--set", "scale"], 2, "name=value"),
    (["epsilon", "--classes", 10, "--loss", "gce", "--set", "q=9"], 2, "valid range"),
    (["epsilon", "--classes", 10, "--loss", "gce", "--preset", "mnist"], 2, "no preset"),
    (["epsilon", "--classes", 10, "--criterion", "best"], 2, "--criterion"),
    (["epsilon", "--classes", 10, "--criterion", "target"], 2, "--target"),
    (["epsilon", "--classes", 10, "--samples", 3], 2, "--samples"),
    (["q", "--from", 100, "--to", 1000, "--q-from", 0], 2, "--q-from"),
    (["q", "--from", 100, "--to", 1000, "--q-from", -0.5], 2, "--q-from"),
    (["q", "--from", 100, "--to", 100], 2, "--from and --to"),
    (["q", "--from", 100, "--to", 1000, "--loss", "mae"], 2, "no parameter 'q'"),
    (["transfer", "--loss", "gce", "--param", "alpha", "--from", 10, "--to", 100], 2, "no parameter"),
    (["transfer", "--loss", "nfl", "--param", "detach", "--from", 10, "--to", 100], 2, "switch"),
    (["curve", "--points", 1], 2, "--points"),
    (["curve", "--epsilon", "big"], 2, "--epsilon"),
    (["curve", "--z-min", 5, "--z-max", 1], 2, "--z-min"),
    (["epsilon", "--classes", 1000, "--loss", "nce-agce", "--preset", "cifar100",
      "--samples", 256], 1, "beyond the extremum"),
    (["q", "--from", 10**6, "--to", 2, "--q-from", 3], 1, "no q"),
])
def test_bad_input(args, code, pattern):
    fails(code, pattern, *args)


def test_bad_logits_files(tmp_path):
    fails(2, "does not exist", "epsilon", "--classes", 10, "--logits", tmp_path / "nope.npy")
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    fails(2, "cannot read", "epsilon", "--classes", 10, "--logits", tmp_path / "junk.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    fails(2, "shape", "epsilon", "--classes", 10, "--logits", tmp_path / "cube.npy")
    bad = np.random.default_rng(0).standard_normal((5, 10))
    bad[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    fails(2, "nan", "epsilon", "--classes", 10, "--logits", tmp_path / "nan.npy")
    np.save(tmp_path / "const.npy", np.ones((4, 10)))
    fails(2, "zero spread", "epsilon", "--classes", 10, "--logits", tmp_path / "const.npy")
    (tmp_path / "l.txt").write_text("1 2 3")
    fails(2, "extension", "epsilon", "--classes", 10, "--logits", tmp_path / "l.txt")
    np.savez(tmp_path / "two.npz", a=bad, b=bad)
    fails(2, "logits", "epsilon", "--classes", 10, "--logits", tmp_path / "two.npz")


def test_user_loss(tmp_path, monkeypatch):
    (tmp_path / "mylosses.py").write_text(
        "import torch\n"
        "def my_ce(logits, target):\n"
        "    return torch.nn.functional.cross_entropy(logits, target, reduction='none')\n"
        "def wrong_shape(logits, target):\n"
        "    return logits\n"
        "def broken(logits, target):\n"
        "    raise RuntimeError('boom')\n"
        "not_callable = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    d = ok_json("curve", "--loss", "mylosses:my_ce", "--classes", 10, "--points", 3,
                "--samples", 256)
    ref = api.mean_delta(d["z"], 10, "ce").value
    np.testing.assert_allclose(d["delta"][0], ref, atol=4 * max(max(d["error"][0]), 1e-3))
    fails(2, "nosuchmodule", "curve", "--loss", "nosuchmodule:f")
    fails(2, "nope", "curve", "--loss", "mylosses:nope")
    fails(2, "callable", "curve", "--loss", "mylosses:not_callable")
    fails(2, "shape", "curve", "--loss", "mylosses:wrong_shape")
    fails(2, "boom", "curve", "--loss", "mylosses:broken")


def test_json_names_the_preset_and_its_source():
    from calibrate_cli.losses import get_loss
    from calibrate_cli.losses.registry import get_preset

    want = get_preset(get_loss("gce"), "cifar100")
    e = ok_json("epsilon", "--classes", "100", "--loss", "gce", "--preset", "cifar100")
    assert e["preset"] == {"dataset": "cifar100", "classes": 100, "values": dict(want.values),
                           "source": want.source}
    assert e["params"]["q"] == want.values["q"]
    t = ok_json("q", "--from", "100", "--to", "1000", "--preset", "cifar100")
    assert t["preset"]["source"] == want.source
    assert ok_json("epsilon", "--classes", "100")["preset"] is None
    assert t["criterion"] == "match" and t["at"] == 0.0 and t["from"] == 100 and t["to"] == 1000


def test_monte_carlo_too_large_names_the_samples_that_fit():
    fails(2, "needs 4.1e+09 draws (limit 2e+09); use --samples 2000 or fewer",
          "epsilon", "--classes", 1_000_000, "--loss", "nce-agce", "--samples", 4096)


def test_default_samples_follow_the_cost_of_the_loss():
    from calibrate_cli.engine.average import DEFAULT_SAMPLES

    reduced = ok_json("epsilon", "--classes", "20", "--loss", "nf-mae")
    cheap = ok_json("epsilon", "--classes", "20", "--loss", "nce-mae")
    given = ok_json("epsilon", "--classes", "20", "--loss", "nf-mae", "--samples", "64")
    assert reduced["monte_carlo"]["samples"] == DEFAULT_SAMPLES  # NFL reduces its draws too
    assert cheap["monte_carlo"]["samples"] == DEFAULT_SAMPLES
    assert given["monte_carlo"]["samples"] == 64 and given["error"] > reduced["error"]
