"""calibrate measure: logits at initialisation, their statistics, the file it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as st
from typer.testing import CliRunner

from calibrate_cli.cli.app import build_app
from calibrate_cli.errors import UsageError
from calibrate_cli.engine.logits import load_logits
from calibrate_cli.measure import ks_distance, load_measurement_meta, logit_stats, measure_logits

torch = pytest.importorskip("torch")
APP = build_app("measure")
SMALL = dict(input_shape=(1, 8, 8), batches=2, batch_size=16)


def run(*args):
    return CliRunner().invoke(APP, [str(a) for a in args])


def test_logits_are_the_models_forward_pass():
    """Independent forward pass: the same seeded model on the same Gaussian inputs."""
    from calibrate_cli.train.models import create_model

    m = measure_logits("mlp16x1", 5, seeds=(3,), device="cpu", **SMALL)
    assert m.logits.shape == (32, 5) and m.logits.dtype == np.float64
    net = create_model("mlp16x1", num_classes=5, in_channels=1, image_size=8, seed=3)
    x = np.concatenate([np.random.default_rng([3, i, 7]).standard_normal((16, 1, 8, 8))
                        for i in range(2)]).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(m.logits, ref, rtol=1e-6, atol=1e-7)
    assert "synthetic Gaussian" in m.stats["inputs"]


def test_stats_match_an_independent_computation():
    m = measure_logits("mlp32x1", 7, seeds=(0, 1), device="cpu", **SMALL)
    z = m.logits
    c = z - z.mean(axis=1, keepdims=True)
    s = m.stats
    assert s["n_inputs"] == 64 and s["classes"] == 7
    assert s["mean"] == pytest.approx(z.mean(), abs=1e-12)
    assert s["std"] == pytest.approx(c.std(), rel=1e-12)
    assert s["std_raw"] == pytest.approx(z.std(), rel=1e-12)
    assert s["skewness"] == pytest.approx(st.skew(c.ravel()), rel=1e-9)
    assert s["excess_kurtosis"] == pytest.approx(st.kurtosis(c.ravel()), rel=1e-9)
    assert s["class_spread"] == pytest.approx(np.std(z.mean(axis=0)), rel=1e-12)
    assert s["input_spread"] == pytest.approx(np.std(z.mean(axis=1)), rel=1e-12)
    ks = st.kstest(c.ravel(), "norm", args=(0.0, c.std())).statistic
    assert s["ks_distance"] == pytest.approx(ks, rel=1e-9)
    per_seed = [c[:32].std(), (z[32:] - z[32:].mean(axis=1, keepdims=True)).std()]
    assert s["per_seed_std"] == pytest.approx(per_seed, rel=1e-12)
    # two seeds give two different networks
    assert not np.allclose(z[:32], z[32:])


def test_deterministic_and_seed_dependent():
    a = measure_logits("cnn8", 4, seeds=(0,), device="cpu", input_shape=(3, 8, 8),
                       batches=1, batch_size=8)
    b = measure_logits("cnn8", 4, seeds=(0,), device="cpu", input_shape=(3, 8, 8),
                       batches=1, batch_size=8)
    c = measure_logits("cnn8", 4, seeds=(1,), device="cpu", input_shape=(3, 8, 8),
                       batches=1, batch_size=8)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert not np.allclose(a.logits, c.logits)


def test_gaussian_fit_invariants():
    rng = np.random.default_rng(0)
    g = rng.normal(0.0, 0.3, size=(4000, 10))
    sg = logit_stats(g)
    assert abs(sg["skewness"]) < 0.05 and abs(sg["excess_kurtosis"]) < 0.1
    assert sg["ks_distance"] < 0.01
    # uniform logits are far from Gaussian: negative excess kurtosis, larger KS distance
    u = rng.uniform(-1, 1, size=(4000, 10))
    su = logit_stats(u)
    # (row centring of K = 10 uniforms moves the -1.2 of a uniform towards 0)
    assert su["excess_kurtosis"] < -0.8 and su["ks_distance"] > 3 * sg["ks_distance"]
    # ks_distance against the definition on a tiny example: values 0 and 1, std 1
    phi0, phi1 = 0.5, st.norm.cdf(1.0)
    assert ks_distance(np.array([0.0, 1.0]), 1.0) == pytest.approx(
        max(0.5 - 0.0, phi0 - 0.0, 1.0 - phi1, phi1 - 0.5))


def test_npz_round_trip_through_load_logits(tmp_path):
    m = measure_logits("mlp16x1", 6, seeds=(0,), device="cpu", **SMALL)
    path = tmp_path / "logits.npz"
    m.to_npz(str(path))
    emp = load_logits(str(path))
    assert emp.std == pytest.approx(m.stats["std"], rel=1e-12)
    assert emp.centering == "rows" and emp.values.size == m.logits.size
    meta = load_measurement_meta(str(path))
    assert meta["meta"]["model"] == "mlp16x1" and meta["stats"]["classes"] == 6
    npy = tmp_path / "logits.npy"
    m.to_npz(str(npy))
    np.testing.assert_array_equal(np.load(npy), m.logits)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    with pytest.raises(UsageError, match="npz"):
        m.to_npz(str(tmp_path / "logits.txt"))


def test_dataset_shapes_and_errors():
    m = measure_logits("mlp16x1", 3, dataset="fashion-mnist", batches=1, batch_size=4,
                       device="cpu")
    assert "normalised as fashion-mnist" in m.stats["inputs"] and m.meta["input_shape"] == [1, 28, 28]
    bad = [dict(device="tpu"), dict(input_shape=(3, 8, 9)), dict(dataset="mnist-ish"),
           dict(batches=0), dict(batch_size=1), dict(seeds=()),
           dict(dataset="cifar10", input_shape=(1, 8, 8))]
    for kw in bad:
        args = dict(input_shape=(1, 8, 8), batches=1, batch_size=4, device="cpu")
        args.update(kw)
        if "dataset" in kw and "input_shape" not in kw:
            args.pop("input_shape")
        with pytest.raises(UsageError):
            measure_logits("mlp16x1", 3, **args)
    with pytest.raises(UsageError, match="unknown model"):
        measure_logits("vgg99", 3, **SMALL)
    with pytest.raises(UsageError, match="classes"):
        measure_logits("mlp16x1", 1, **SMALL)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA"):
            measure_logits("mlp16x1", 3, device="cuda", **SMALL)


def test_cli_json_and_file(tmp_path):
    out = tmp_path / "z.npz"
    r = run("measure", "--model", "mlp16x1", "--classes", 4, "--input-shape", "1,8,8",
            "--batches", 1, "--batch-size", 8, "--seeds", "0,1", "--device", "cpu",
            "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["command"] == "measure" and obj["stats"]["n_inputs"] == 16
    assert load_logits(str(out)).std == pytest.approx(obj["stats"]["std"], rel=1e-9)
    r = run("measure", "--model", "mlp16x1", "--classes", 4, "--input-shape", "1,8,8",
            "--batches", 1, "--batch-size", 8)
    assert r.exit_code == 0 and "Kolmogorov" in r.stdout and "synthetic Gaussian" in r.stdout


@pytest.mark.parametrize("args,pattern", [
    (["--out", "z.txt"], "npz"),
    (["--device", "tpu"], "--device"),
    (["--seeds", "a"], "--seeds"),
    (["--input-shape", "3,x"], "--input-shape"),
    (["--data-dir", "/nonexistent"], "--dataset"),
])
def test_cli_bad_input(args, pattern):
    r = run("measure", "--model", "mlp16x1", "--classes", 4, "--batches", 1, "--batch-size", 4,
            *args)
    assert r.exit_code == 2, r.stdout
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and pattern in err, err


def test_every_dataset_has_an_input_shape_and_aliases_resolve():
    from calibrate_cli.measure import DATASET_SHAPES, _normalise_key
    from calibrate_cli.train.config import DATASETS

    assert set(DATASET_SHAPES) == set(DATASETS)
    assert _normalise_key("CIFAR_100") == "cifar100"
    assert _normalise_key("fmnist") == "fashion-mnist"


def _linear_model(a: float, beta: float, bias):
    """z = W x + b on 1×8×8 inputs with w_k = a e_k + beta e_K: known output distribution."""
    def create(name, *, num_classes, in_channels, image_size, seed=0, **kw):
        k, d = num_classes, in_channels * image_size * image_size
        lin = torch.nn.Linear(d, k)
        with torch.no_grad():
            w = torch.zeros(k, d)
            w[torch.arange(k), torch.arange(k)] = a
            w[:, k] = beta
            lin.weight.copy_(w)
            lin.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return torch.nn.Sequential(torch.nn.Flatten(), lin)
    return create


def test_statistics_of_a_model_with_known_output_distribution(monkeypatch):
    """On N(0, I) inputs, c_k = z_k - z̄ = a (x_k - x̄_{<K}) + (b_k - b̄): Gaussian with
    std² = a²(1 - 1/K) + var(b); the per-input mean z̄ = a x̄_{<K} + beta x_K + b̄ has std
    sqrt(a²/K + beta²); the per-class means are b_k up to sampling error."""
    import calibrate_cli.train.models as models

    k, a, beta = 8, 0.7, 0.3
    monkeypatch.setattr(models, "create_model", _linear_model(a, beta, np.zeros(k)))
    m = measure_logits("mlp8x1", k, seeds=(0, 1), device="cpu", input_shape=(1, 8, 8),
                       batches=8, batch_size=256)
    s = m.stats
    n = m.logits.size
    assert s["std"] == pytest.approx(a * np.sqrt(1 - 1 / k), rel=4 / np.sqrt(n))
    assert s["input_spread"] == pytest.approx(np.sqrt(a * a / k + beta * beta), rel=0.05)
    assert abs(s["skewness"]) < 4 * np.sqrt(6 / n) and abs(s["excess_kurtosis"]) < 4 * np.sqrt(24 / n)
    assert s["ks_distance"] < 1.6 / np.sqrt(n / k)  # rows are dependent: K values share x̄
    assert s["class_spread"] < 4 * a / np.sqrt(m.logits.shape[0])

    bias = np.linspace(-1.0, 1.0, k)
    monkeypatch.setattr(models, "create_model", _linear_model(a, beta, bias))
    m = measure_logits("mlp8x1", k, seeds=(0,), device="cpu", input_shape=(1, 8, 8),
                       batches=8, batch_size=256)
    assert m.stats["class_spread"] == pytest.approx(bias.std(), rel=0.05)
    assert m.stats["std"] == pytest.approx(np.sqrt(a * a * (1 - 1 / k) + bias.var()), rel=0.03)
