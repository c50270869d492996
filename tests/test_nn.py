"""calibrate_cli.nn: the losses as torch modules, against independent computations.

The published formula by hand (MAE* = 2(1 - softmax(z + ε e_y)_y) and its gradient in closed
form), ``calibrate epsilon`` and ``calibrate q``, torch's own CrossEntropyLoss, the trainer's
reported loss and measured std on the same model and data, and a tensor with no data (the
meta device) and dynamo's full-graph tracing for host synchronisation.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import calibrate_cli as cal  # noqa: E402
from calibrate_cli.errors import UsageError  # noqa: E402
from calibrate_cli.losses import get_loss, list_losses, resolve_params  # noqa: E402

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = [s.name for s in list_losses()]
HOST_SYNC = {"bitemp"}  # its normaliser's Newton loop checks convergence on the host


def _batch(n=16, k=7, seed=0, dtype=torch.float64, std=1.0):
    g = torch.Generator().manual_seed(seed)
    return std * torch.randn(n, k, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)


# ------------------------------------------------------------------ the done-when three

def test_mae_star_epsilon_is_calibrate_epsilons():
    from typer.testing import CliRunner

    from calibrate_cli.cli.app import build_app

    crit = cal.nn.loss("mae", classes=1000, logit_bias="auto")
    r = CliRunner().invoke(build_app(), ["epsilon", "--classes", "1000", "--json"])
    assert r.exit_code == 0, r.stdout
    assert crit.epsilon == json.loads(r.stdout)["epsilon"] == cal.epsilon(1000).epsilon
    assert round(crit.epsilon, 4) == 4.7342


def test_mae_star_gradient_is_the_published_formula():
    """L = 2 (1 - p), p = softmax(z + ε e_y)_y: ∂L/∂z_j = -2 p (1[j = y] - σ_j), σ at the
    biased logits (written out here, not taken from the package)."""
    crit = cal.nn.loss("mae", classes=1000, logit_bias="auto", reduction="sum")
    eps = crit.epsilon
    z, y = _batch(32, 1000, seed=1, std=0.5)
    z.requires_grad_(True)
    crit(z, y).backward()
    biased = z.detach().clone()
    biased[torch.arange(32), y] += eps
    sigma = torch.exp(biased - torch.logsumexp(biased, 1, keepdim=True))
    p = sigma[torch.arange(32), y]
    onehot = torch.zeros_like(sigma)
    onehot[torch.arange(32), y] = 1.0
    grad = -2.0 * p[:, None] * (onehot - sigma)
    torch.testing.assert_close(z.grad, grad, rtol=1e-10, atol=1e-15)
    per = cal.nn.loss("mae", classes=1000, logit_bias="auto", reduction="none")(z.detach(), y)
    torch.testing.assert_close(per, 2.0 * (1.0 - p), rtol=1e-12, atol=1e-15)


def _tiny_run(tmp_path, **over):
    from calibrate_cli.train import loop
    from calibrate_cli.train.config import resolve_config

    values = dict(classes=20, train_samples_per_class=4, test_samples_per_class=2, model="mlp32",
                  epochs=1, batch_size=80, loss="mae", logit_bias="auto", threads=1,
                  out=str(tmp_path / "run"))
    values.update(over)
    return loop.train(resolve_config(cli_values=values), progress=False)


def _glyph_inputs(classes, per_class):
    from calibrate_cli.train.data import load_dataset

    bundle = load_dataset("glyphs", classes=classes, train_per_class=per_class, test_per_class=2)
    x = torch.tensor(bundle.train.images, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    m = torch.tensor(bundle.mean, dtype=torch.float32)[None, :, None, None]
    s = torch.tensor(bundle.std, dtype=torch.float32)[None, :, None, None]
    return bundle, (x - m) / s, torch.as_tensor(bundle.train.labels, dtype=torch.long)


def test_module_forward_equals_the_trainers_loss_and_measure(tmp_path):
    """One batch per epoch, so the first epoch's train_loss is the mean loss of the initial
    model on the whole training set; the module, built the way a user would (its own ε from the
    std it measures itself), must give that number, ε and the std."""
    from calibrate_cli.train.models import create_model

    res = _tiny_run(tmp_path)
    derived = res.derived
    bundle, x, y = _glyph_inputs(20, 4)
    model = create_model("mlp32", num_classes=20, in_channels=1, image_size=bundle.image_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=80)
    s = cal.nn.measure_logit_std(model, loader, batches=4)
    assert s == pytest.approx(derived["logit_std"], rel=1e-6)
    crit = cal.nn.loss("mae", classes=20, logit_bias="auto", logit_std="measure", model=model,
                       loader=loader)
    assert crit.logit_std == s and crit.epsilon == pytest.approx(derived["epsilon"], rel=1e-9)
    # with the trainer's own std the engine gives the trainer's ε to the last bit
    same = cal.nn.loss("mae", classes=20, logit_bias="auto", logit_std=derived["logit_std"])
    assert same.epsilon == derived["epsilon"] and same.params == derived["params"]
    with torch.no_grad():
        loss = same(model(x), y).item()
    assert loss == pytest.approx(res.history[0]["train_loss"], rel=1e-6)
    assert crit.epsilon > 0.5  # K = 20 against K_ref = 10 (ln(19/9) = 0.75): a real bias


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_the_loss_at_biased_logits(name):
    spec = get_loss(name)
    z, y = _batch(16, 7, seed=2)
    shifted = z.clone()
    for i in range(16):
        shifted[i, y[i]] += 1.7
    per = spec.torch_loss(resolve_params(spec))(shifted, y)
    crit = cal.nn.loss(name, classes=7, logit_bias=1.7, reduction="none")
    assert torch.equal(crit(z, y), per)  # bit for bit: what the trainer computed before
    assert torch.equal(z, z.clone())
    assert torch.equal(cal.nn.loss(name, logit_bias=1.7)(z, y), per.mean())
    assert torch.equal(cal.nn.loss(name, logit_bias=1.7, reduction="sum")(z, y), per.sum())
    plain = spec.torch_loss(resolve_params(spec))(z, y)
    assert torch.equal(cal.nn.loss(name, reduction="none")(z, y), plain)  # ε = 0: the loss


# ------------------------------------------------------------------ torch's conventions

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_follow_torch(reduction):
    z, y = _batch(12, 5, seed=3)
    ours = cal.nn.loss("ce", reduction=reduction)(z, y)
    theirs = torch.nn.CrossEntropyLoss(reduction=reduction)(z, y)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    empty_z, empty_y = z[:0], y[:0]
    a = cal.nn.loss("ce", reduction=reduction)(empty_z, empty_y)
    b = torch.nn.CrossEntropyLoss(reduction=reduction)(empty_z, empty_y)
    assert a.shape == b.shape and torch.equal(a.isnan(), b.isnan())


def test_autocast_bf16_on_cpu_computes_the_loss_in_float32():
    g = torch.Generator().manual_seed(4)
    net = torch.nn.Linear(10, 50)
    x, y = torch.randn(32, 10, generator=g), torch.randint(0, 50, (32,), generator=g)
    crit = cal.nn.loss("gce", classes=50, logit_bias="auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
        loss = crit(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.equal(loss, crit(logits.float(), y))
    loss.backward()
    assert net.weight.grad.dtype == torch.float32 and torch.isfinite(net.weight.grad).all()
    assert net.weight.grad.abs().sum() > 0
    half = logits.detach().half()
    assert crit(half, y).dtype == torch.float32
    assert torch.equal(crit(half, y), crit(half.float(), y))
    z64, y64 = _batch(8, 50, seed=5)
    assert crit(z64, y64).dtype == torch.float64  # float64 is kept


# ----------------------------------------------------- no host synchronisation, compile

@pytest.mark.parametrize("name", NAMES)
def test_forward_reads_nothing_back_from_the_device(name):
    """On the meta device a tensor has no data: any .item(), bool(tensor) or .tolist() in the
    forward raises. That is what DDP and CUDA graphs need (bitemp is the known exception)."""
    crit = cal.nn.loss(name, classes=30, logit_bias=2.0)
    z = torch.empty(8, 30, device="meta", requires_grad=True)
    y = torch.empty(8, dtype=torch.long, device="meta")
    if name in HOST_SYNC:
        with pytest.raises(RuntimeError, match="meta"):
            crit(z, y)
        return
    loss = crit(z, y)
    assert loss.device.type == "meta" and loss.shape == ()
    loss.backward()  # the backward too
    assert z.grad.shape == (8, 30)


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_one_graph_under_torch_compile(name):
    """dynamo's full-graph tracing (backend "eager": no code generation) accepts no graph
    break, so no data-dependent Python control flow either."""
    torch._dynamo.reset()
    crit = cal.nn.loss(name, classes=30, logit_bias=2.0)
    z, y = _batch(8, 30, seed=6, dtype=torch.float32)
    compiled = torch.compile(crit, fullgraph=True, backend="eager")
    if name in HOST_SYNC:
        with pytest.raises(Exception, match="data-dependent"):
            compiled(z, y)
        return
    assert torch.equal(compiled(z, y), crit(z, y))


def test_compiled_forward_and_backward_equal_eager():
    """AOT autograd (backend "aot_eager") traces forward and backward into graphs; they give
    the eager numbers bit for bit. (The inductor backend compiles C++ on CPU: ~40 s cold here,
    too slow for the suite.)"""
    torch._dynamo.reset()
    crit = cal.nn.loss("nce-agce", classes=30, logit_bias="auto", preset="cifar100",
                       criterion="peak")
    z, y = _batch(8, 30, seed=7, dtype=torch.float32)
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    la = torch.compile(crit, fullgraph=True, backend="aot_eager")(a, y)
    lb = crit(b, y)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb) and torch.equal(a.grad, b.grad)


# ------------------------------------------------------------------------- measuring

class _Net(torch.nn.Module):
    """Batch norm (running statistics to restore) and dropout (train mode must be on)."""

    def __init__(self, k=6):
        super().__init__()
        self.lin = torch.nn.Linear(4, k)
        self.bn = torch.nn.BatchNorm1d(k)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.lin(x)))


def test_measure_logits_in_train_mode_restores_the_buffers():
    torch.manual_seed(0)
    net = _Net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(40, 4)
    loader = [(x[i:i + 8], torch.zeros(8)) for i in range(0, 40, 8)]
    torch.manual_seed(1)
    z = cal.nn.measure_logits(net, loader, batches=3)
    assert z.dtype == np.float64 and z.shape == (24, 6)
    assert not net.training  # the mode is put back
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # train mode: batch statistics and dropout (a zero where dropout hit; exactly half scaled)
    torch.manual_seed(1)
    net.train()
    with torch.no_grad():
        expect = torch.cat([net(b[0]) for b in loader[:3]]).double().numpy()
    np.testing.assert_array_equal(z, expect)
    torch.manual_seed(2)
    s = cal.nn.measure_logit_std(net, loader, batches=3)
    torch.manual_seed(2)
    zz = cal.nn.measure_logits(net, loader, batches=3)
    assert s == pytest.approx(float((zz - zz.mean(1, keepdims=True)).std()), rel=1e-12)


def test_measure_reads_dicts_model_outputs_and_a_custom_forward():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    class HF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 5)

        def forward(self, input_ids=None, attention_mask=None):
            return Out(self.lin(input_ids * attention_mask))

    net = HF()
    batches = [{"input_ids": torch.randn(4, 3), "attention_mask": torch.ones(4, 3),
                "labels": torch.zeros(4, dtype=torch.long)} for _ in range(2)]
    z = cal.nn.measure_logits(net, batches)
    with torch.no_grad():
        expect = torch.cat([net.lin(b["input_ids"]) for b in batches]).double().numpy()
    np.testing.assert_allclose(z, expect, rtol=1e-6)
    z2 = cal.nn.measure_logits(net, batches, forward=lambda m, b: m.lin(b["input_ids"]))
    np.testing.assert_allclose(z2, expect, rtol=1e-6)
    with pytest.raises(UsageError, match="no batch"):
        cal.nn.measure_logits(net, [])
    with pytest.raises(UsageError, match="inputs"):
        cal.nn.measure_logits(net, [3.0])
    with pytest.raises(UsageError, match="batches"):
        cal.nn.measure_logits(net, batches, batches=0)


def test_logit_std_measure_then_calibrate():
    torch.manual_seed(0)
    net = _Net(k=50)
    loader = [(torch.randn(16, 4), None) for _ in range(4)]
    crit = cal.nn.loss("mae", classes=50, logit_bias="auto", logit_std="measure")
    assert "pending" in repr(crit)
    with pytest.raises(RuntimeError, match="calibrate"):
        crit(*_batch(4, 50))
    torch.manual_seed(3)
    assert crit.calibrate(net, loader) is crit
    torch.manual_seed(3)
    s = cal.nn.measure_logit_std(net, loader)
    assert crit.logit_std == s and crit.to_dict()["logit_std_source"].startswith("measured on 64")
    assert crit.epsilon == cal.epsilon(50, logit_std=s).epsilon
    # a checkpoint keeps the choice: a new, unmeasured module takes it from the state dict
    fresh = cal.nn.loss("mae", classes=50, logit_bias="auto", logit_std="measure")
    fresh.load_state_dict(crit.state_dict())
    z, y = _batch(4, 50)
    assert fresh.epsilon == crit.epsilon and torch.equal(fresh(z, y), crit(z, y))
    # and one saved before measuring restores nothing
    pending = cal.nn.loss("mae", classes=50, logit_bias="auto", logit_std="measure")
    pending.load_state_dict(cal.nn.loss("mae", classes=50, logit_bias="auto",
                                        logit_std="measure").state_dict())
    assert "pending" in repr(pending) and pending.to_dict()["epsilon"] is None
    other_k = cal.nn.loss("mae", classes=60, logit_bias="auto", logit_std="measure")
    with pytest.raises(UsageError, match="classes=50"):
        other_k.load_state_dict(crit.state_dict())


# ------------------------------------------------------------ parameters and reporting

def test_calibrate_q_is_calibrate_q():
    crit = cal.nn.GCE(classes=1000, calibrate={"q": 100})
    assert crit.params["q"] == cal.q(100, 1000).value and crit.epsilon == 0.0
    assert crit.calibrated == {"param": "q", "from_classes": 100, "to_classes": 1000,
                               "from_value": 0.7, "value": crit.params["q"]}
    by_preset = cal.nn.loss("genCE", classes=1000, calibrate="q", preset="cifar100")
    assert type(by_preset) is cal.nn.GCE and by_preset.params == crit.params
    both = cal.nn.loss("gce", classes=1000, calibrate={"q": 100}, logit_bias="auto")
    assert both.epsilon == cal.epsilon(1000, "gce", params={"q": crit.params["q"]}).epsilon
    d = both.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["params"] == {"q": crit.params["q"]} and d["epsilon_info"]["criterion"] == "match"
    assert "calibrated q: 0.7 at K=100" in repr(both) and "q=0.4716" in repr(both)


def test_parameters_presets_and_keywords():
    crit = cal.nn.NCE_AGCE(preset="cifar100", beta=0.2)
    assert crit.params == {"alpha": 10.0, "beta": 0.2, "a": 1.8, "q": 3.0}
    assert cal.nn.loss("mae", params={"scale": 1.0}).params == {"scale": 1.0}
    z, y = _batch(6, 9)
    half = cal.nn.loss("mae", params={"scale": 1.0})(z, y)
    assert torch.allclose(2 * half, cal.nn.MAE()(z, y), rtol=1e-14)
    peak = cal.nn.loss("mae", classes=1000, logit_bias="auto", criterion="peak", logit_std=0.3)
    assert peak.epsilon == cal.epsilon(1000, criterion="peak", logit_std=0.3).epsilon
    above = cal.nn.loss("gce", classes=1000, logit_bias="auto", branch="above")
    assert above.epsilon == cal.epsilon(1000, "gce", branch="above").epsilon
    assert above.epsilon > cal.nn.loss("gce", classes=1000, logit_bias="auto").epsilon + 1
    assert above.to_dict()["epsilon_info"]["branch"] == "above"


def test_one_class_per_registry_loss():
    for spec in list_losses():
        cls = cal.nn.loss_class(spec.name)
        assert cls.__name__ == spec.name.upper().replace("-", "_")
        assert getattr(cal.nn, cls.__name__) is cls and cls.__name__ in dir(cal.nn)
        assert isinstance(cal.nn.loss(spec.name), cls)
        assert spec.formula in cls.__doc__
    assert issubclass(cal.nn.MAE, cal.nn.CalibratedLoss)
    with pytest.raises(AttributeError):
        cal.nn.NOT_A_LOSS


def test_copies_and_pickles_keep_the_numbers():
    crit = cal.nn.loss("nce-mae", classes=100, logit_bias="auto", preset="cifar10")
    z, y = _batch(5, 100)
    for other in (pickle.loads(pickle.dumps(crit)), copy.deepcopy(crit)):
        assert type(other) is type(crit) and other.to_dict() == crit.to_dict()
        assert torch.equal(other(z, y), crit(z, y))


def test_a_users_own_loss(tmp_path, monkeypatch):
    (tmp_path / "myloss.py").write_text(
        "import torch\n"
        "def mae(logits, target):\n"
        "    p = torch.softmax(logits, 1).gather(1, target[:, None])[:, 0]\n"
        "    return 2 * (1 - p)\n")
    monkeypatch.chdir(tmp_path)
    crit = cal.nn.loss("myloss:mae", classes=100, logit_bias="auto", samples=4096)
    ref = cal.nn.loss("mae", classes=100, logit_bias="auto")
    assert crit.epsilon == pytest.approx(ref.epsilon, abs=0.02)  # Monte Carlo against exact
    z, y = _batch(4, 100)
    same = cal.nn.loss("mae", classes=100, logit_bias=crit.epsilon)
    assert torch.allclose(crit(z, y), same(z, y), rtol=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: cal.nn.loss("maee"), "did you mean mae"),
    (lambda: cal.nn.loss("mae", reduction="avg"), "reduction"),
    (lambda: cal.nn.loss("mae", classes=10, logit_bias="auto", criterion="target"), "criterion"),
    (lambda: cal.nn.loss("mae", logit_bias="auto"), "classes="),
    (lambda: cal.nn.loss("mae", classes=10, logit_bias="auto", branch="left"), "branch"),
    (lambda: cal.nn.loss("mae", logit_bias="big"), "logit_bias"),
    (lambda: cal.nn.loss("mae", classes=1, logit_bias=1.0), "classes"),
    (lambda: cal.nn.loss("mae", classes=10, logit_bias="auto", logit_std=-1), "std"),
    (lambda: cal.nn.loss("mae", classes=10, logit_bias="auto", logit_std="mesure"), "logit_std"),
    (lambda: cal.nn.loss("gce", classes=10, calibrate={"q": 100, "x": 5}), "one parameter"),
    (lambda: cal.nn.loss("gce", classes=10, calibrate="q"), "class count"),
    (lambda: cal.nn.loss("gce", classes=10, calibrate={"r": 100}), "no parameter 'r'"),
    (lambda: cal.nn.loss("gce", q=7.0), "outside its valid range"),
    (lambda: cal.nn.MAE(foo=1.0), "no parameter 'foo'"),
    (lambda: cal.nn.loss("mae", classes=9, logit_bias="auto", logit_std="measure",
                         model=torch.nn.Linear(2, 9)), "model= and loader="),
])
def test_bad_arguments_are_one_clear_error(call, match):
    with pytest.raises(UsageError, match=match):
        call()


def test_bad_inputs_to_forward():
    crit = cal.nn.loss("mae", classes=7, logit_bias=1.0)
    z, y = _batch(4, 7)
    with pytest.raises(ValueError, match="7 classes|classes=7"):
        crit(z[:, :6], y)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        crit(z[None], y)
    with pytest.raises(ValueError, match="soft targets"):
        crit(z, torch.softmax(z, 1))
    with pytest.raises(ValueError, match="soft targets"):
        crit(z, y[:3])


def test_import_calibrate_cli_does_not_import_torch_until_nn():
    # (this file reaches every name through cal.nn after a plain import calibrate_cli)
    code = ("import sys, calibrate_cli as cal\n"
            "cal.epsilon(100)\n"
            "assert 'nn' in cal.__all__ and 'torch' not in sys.modules, 'torch imported early'\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
