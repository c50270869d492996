"""Your own loss, ``package.module:function`` or a file path: autograd of it against the
registry's kernels, its fallbacks (float32, chunks), and one clear line for every way it can
be wrong (raises, wrong shape, not finite, detached, a failing import)."""

from __future__ import annotations

import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch

from calibrate_cli.errors import UsageError
from calibrate_cli.losses import get_loss, torch_impl
from calibrate_cli.losses.user import user_loss

N = 64


# ------------------------------------------------------------------ user losses
@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A project directory as cwd; sys.path restored afterwards (module names are unique)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


def write_module(directory, body):
    name = f"userloss_{uuid.uuid4().hex[:12]}"
    (directory / f"{name}.py").write_text("import torch\n" + textwrap.dedent(body))
    return name


HAND_CE = """
def ce(logits, target):
    logp = torch.log_softmax(logits, dim=1)
    return -logp.gather(1, target.view(-1, 1)).squeeze(1)

def ce_mean(logits, target):
    return ce(logits, target).mean()

def ce_sum(logits, target):
    return ce(logits, target).sum()

class CELoss(torch.nn.Module):
    def forward(self, logits, target):
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")

def mae_float32_only(logits, target):
    w = torch.ones(logits.shape[1])  # float32: fails on float64 logits
    p = torch.softmax(logits, 1) * w
    return 2 * (1 - p.gather(1, target.view(-1, 1)).squeeze(1))
"""


@pytest.mark.parametrize("func", ["ce", "ce_mean", "ce_sum", "CELoss"])
def test_user_loss_autograd_equals_registry_ce(user_dir, func):
    mod = write_module(user_dir, HAND_CE)
    spec = get_loss(f"{mod}:{func}")
    assert spec.name == f"{mod}:{func}" and spec.params == () and not spec.sigma_only
    ce = get_loss("ce")
    rng = np.random.default_rng(21)
    for K in (2, 10, 100):
        logits = 2.0 * rng.normal(size=(N, K))
        np.testing.assert_allclose(spec.delta(logits, {}), ce.delta(logits, {}), rtol=1e-10, atol=1e-14)
        z = torch.tensor(logits)
        t = torch.arange(N) % K
        torch.testing.assert_close(spec.torch_loss({})(z, t), torch_impl.ce(z, t))


def test_user_loss_from_file_path_and_float32_fallback(user_dir):
    mod = write_module(user_dir, HAND_CE)
    spec = user_loss(f"{mod}.py:mae_float32_only", classes=10)
    logits = np.random.default_rng(22).normal(size=(N, 10))
    expected = get_loss("mae").delta(logits, {"scale": 2.0})
    np.testing.assert_allclose(spec.delta(logits, {}), expected, rtol=1e-5, atol=1e-7)


def test_user_loss_chunked(user_dir, monkeypatch):
    from calibrate_cli.losses import user

    monkeypatch.setattr(user, "CHUNK_ELEMENTS", 100)  # 10 rows per chunk at K = 10
    mod = write_module(user_dir, HAND_CE)
    logits = np.random.default_rng(23).normal(size=(95, 10))
    for func in ("ce", "ce_mean"):
        got = get_loss(f"{mod}:{func}").delta(logits, {})
        np.testing.assert_allclose(got, get_loss("ce").delta(logits, {}), rtol=1e-10, atol=1e-14)


BAD = """
value = 3

def boom(logits, target):
    raise ValueError("bad\\nthings")

def wrong_shape(logits, target):
    return torch.log_softmax(logits, 1)

def not_finite(logits, target):
    return torch.log(torch.softmax(logits, 1)[:, 0] * 0)

def not_tensor(logits, target):
    return 1.0

def detached(logits, target):
    return torch.log_softmax(logits, 1).detach()[:, 0]

def max_loss(logits, target):
    return -torch.log_softmax(logits, 1).gather(1, target.view(-1, 1)).max()

def overflows(logits, target):
    p = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    return -torch.log(p.gather(1, target.view(-1, 1)).squeeze(1))

def batch_centred(logits, target):
    v = -torch.log_softmax(logits, 1).gather(1, target.view(-1, 1)).squeeze(1)
    return v - v.mean() + 1.0

class NeedsArgs:
    def __init__(self, k):
        self.k = k
"""


@pytest.mark.parametrize(
    "func,words",
    [
        ("boom", "raised ValueError: bad things"),
        ("wrong_shape", "shape"),
        ("not_finite", "non-finite"),
        ("not_tensor", "returned float"),
        ("detached", "not differentiable"),
        ("max_loss", "neither the mean nor the sum"),
        ("batch_centred", "must depend on its own logits only"),
        ("missing", "has no attribute 'missing'"),
        ("value", "is a int, not a function"),
        ("NeedsArgs", "could not be created"),
    ],
)
def test_user_loss_bad_function(user_dir, func, words):
    mod = write_module(user_dir, BAD)
    with pytest.raises(UsageError) as info:
        spec = get_loss(f"{mod}:{func}")
        spec.delta(np.zeros((3, 10)), {})
    msg = str(info.value)
    assert words in msg and "\n" not in msg
    assert mod in msg


def test_user_loss_nonfinite_gradient_at_extreme_logits(user_dir):
    mod = write_module(user_dir, BAD)
    spec = get_loss(f"{mod}:overflows")  # fine on the probe, overflows at logit 800
    logits = np.zeros((4, 10))
    assert np.all(np.isfinite(spec.delta(logits, {})))
    logits[2, 3] = 800.0
    with pytest.raises(UsageError, match="non-finite gradient at 1 of 4"):
        spec.delta(logits, {})


@pytest.mark.parametrize(
    "ref,words",
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("no_such_file_xyz.py:fn", "no such file"),
        (":fn", "must be written package.module:function"),
        ("module:", "must be written package.module:function"),
    ],
)
def test_user_loss_bad_reference(user_dir, ref, words):
    with pytest.raises(UsageError) as info:
        user_loss(ref)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_user_module_failing_import(user_dir):
    name = write_module(user_dir, "import not_installed_pkg_xyz\n")
    with pytest.raises(UsageError, match="it imports 'not_installed_pkg_xyz'"):
        user_loss(f"{name}:fn")
    name = write_module(user_dir, "raise RuntimeError('broken at import')\n")
    with pytest.raises(UsageError, match="RuntimeError: broken at import"):
        user_loss(f"{name}:fn")
    name = write_module(user_dir, "def f(:\n")
    with pytest.raises(UsageError, match="SyntaxError"):
        user_loss(f"{name}:f")
