"""cal.nn under hostile arguments and inputs: every bad value is one ValueError or TypeError
naming the argument, raised at construction (never a NaN in the forward); ignore_index as in
torch.nn.CrossEntropyLoss, checked against torch itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import calibrate_cli as cal  # noqa: E402
from calibrate_cli.errors import ArgumentTypeError, UsageError  # noqa: E402

torch.set_num_threads(1)

#: Hostile values per kind of argument (the CLI's property test has the same kinds).
NUMBERS = [0, -1, math.nan, math.inf, -math.inf, 1e300, 10**30, True, 2.5, "x", [1], None]


def _ok_or_refused(build, name):
    """``build()`` either gives a module whose forward is finite, or raises one ValueError /
    TypeError whose message starts with the argument's name (or names it)."""
    try:
        crit = build()
    except (ValueError, TypeError) as exc:
        assert isinstance(exc, UsageError), (name, type(exc), exc)  # ours, not a stray one
        text = str(exc)
        assert "\n" not in text and name.split("=")[0] in text, (name, text)
        return None
    z = torch.randn(6, crit.classes or 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % z.shape[1]
    out = crit(z, y)
    assert bool(torch.isfinite(out).all()), (name, out)
    return crit


ARGUMENTS = {  # argument -> how to pass a value (the rest is a valid call)
    "classes": lambda v: cal.nn.loss("mae", classes=v, logit_bias="auto"),
    "logit_bias": lambda v: cal.nn.loss("mae", classes=10, logit_bias=v),
    "logit_std": lambda v: cal.nn.loss("mae", classes=10, logit_bias="auto", logit_std=v),
    "reference_classes": lambda v: cal.nn.loss("mae", classes=10, logit_bias="auto",
                                               reference_classes=v),
    "samples": lambda v: cal.nn.loss("mae", classes=10, samples=v),
    "seed": lambda v: cal.nn.loss("mae", classes=10, seed=v),
    "ignore_index": lambda v: cal.nn.loss("mae", classes=10, ignore_index=v),
    "scale": lambda v: cal.nn.loss("mae", classes=10, scale=v),
    "q": lambda v: cal.nn.loss("agce", classes=10, q=v),
    "calibrate": lambda v: cal.nn.loss("gce", classes=10, calibrate={"q": v}),
    "reduction": lambda v: cal.nn.loss("mae", reduction=v),
    "criterion": lambda v: cal.nn.loss("mae", classes=10, logit_bias="auto", criterion=v),
    "preset": lambda v: cal.nn.loss("gce", preset=v),
    "params": lambda v: cal.nn.loss("gce", params=v),
}


@pytest.mark.parametrize("arg", sorted(ARGUMENTS))
@pytest.mark.parametrize("value", NUMBERS, ids=repr)
def test_every_argument_refuses_hostile_values_at_construction(arg, value):
    if value is None and arg in ("logit_std", "samples", "preset", "params", "calibrate"):
        pytest.skip("None is the default")
    _ok_or_refused(lambda: ARGUMENTS[arg](value), arg)


def test_valid_extremes_still_work():
    assert _ok_or_refused(lambda: cal.nn.loss("mae", classes=10, logit_bias=100.0), "x")
    assert _ok_or_refused(lambda: cal.nn.loss("mae", classes=10, logit_bias=-100), "x")
    assert _ok_or_refused(lambda: cal.nn.loss("mae", classes=10, ignore_index=3), "x")
    assert _ok_or_refused(lambda: cal.nn.loss("mae", classes=10, seed=np.int64(2)), "x")


def test_bool_bias_and_absurd_values_are_refused():
    with pytest.raises(ArgumentTypeError, match="logit_bias"):
        cal.nn.loss("mae", logit_bias=True)
    with pytest.raises(UsageError, match=r"logit_bias .*\[-100, 100\]"):
        cal.nn.loss("mae", logit_bias=1e300)
    with pytest.raises(UsageError, match="not finite in float32"):
        cal.nn.loss("mae", scale=1e300)  # in its valid range (0, inf), but inf in every forward
    with pytest.raises(UsageError, match="not finite in float32"):
        cal.nn.loss("agce", q=1e300)


Z = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 3, 6, 2, 1])


@pytest.mark.parametrize("target,kind,needle", [
    ([0, 3, 6, 2, 1], TypeError, "target must be a torch.Tensor"),
    (torch.tensor([0, 3, 7, 2, 1]), ValueError, "class index 7, outside [0, 6]"),
    (torch.tensor([0, -3, 6, 2, 1]), ValueError, "class index -3"),
    (Y.float(), TypeError, "soft targets"),
    (Y > 2, TypeError, "integer class indices"),
    (Y.to(torch.complex64), TypeError, "integer class indices"),
    (Y[:3], ValueError, "shape [5]"),
    (Y[None], ValueError, "shape [5]"),
])
def test_bad_targets_are_one_error_naming_target(target, kind, needle):
    crit = cal.nn.loss("mae", classes=7, logit_bias=1.0)
    with pytest.raises(kind, match="target") as info:
        crit(Z, target)
    assert needle in str(info.value) and isinstance(info.value, UsageError)


@pytest.mark.parametrize("logits,kind", [
    (Z.tolist(), TypeError), (Z.long(), TypeError), (Z[0], ValueError), (Z[:, :6], ValueError),
])
def test_bad_logits_are_one_error_naming_logits(logits, kind):
    with pytest.raises(kind, match="logits"):
        cal.nn.loss("mae", classes=7)(logits, Y)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignore_index_is_torchs(reduction):
    """CE with ε = 0 is torch's cross entropy: with labels padded by -100 (Hugging Face), and
    with another ignore_index, every reduction equals torch.nn.CrossEntropyLoss's."""
    z = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, -100, 4, 0, -100, 2, 3, -100])
    for ignore, target in ((-100, y), (3, torch.where(y < 0, 3, y))):
        mine = cal.nn.loss("ce", reduction=reduction, ignore_index=ignore)(z, target)
        ref = torch.nn.CrossEntropyLoss(reduction=reduction, ignore_index=ignore)(z, target)
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-14)


def test_ignored_samples_contribute_nothing_to_biased_losses():
    """MAE* with padding: the mean over the kept samples only, the gradient of an ignored
    sample's logits exactly zero; all ignored: NaN, as torch."""
    crit = cal.nn.loss("mae", classes=7, logit_bias=2.0)
    z = Z.clone().requires_grad_(True)
    y = torch.tensor([0, -100, 6, -100, 1])
    loss = crit(z, y)
    kept = crit(Z[[0, 2, 4]], y[[0, 2, 4]])
    torch.testing.assert_close(loss, kept)
    loss.backward()
    assert torch.count_nonzero(z.grad[[1, 3]]) == 0 and torch.count_nonzero(z.grad[0]) > 0
    per = cal.nn.loss("mae", classes=7, logit_bias=2.0, reduction="none")(Z, y)
    assert per[1] == 0 and per[3] == 0
    assert math.isnan(crit(Z, torch.full((5,), -100)).item())
    assert math.isnan(torch.nn.CrossEntropyLoss()(Z, torch.full((5,), -100)).item())


def test_load_state_dict_checks_what_the_constructor_checks():
    crit = cal.nn.loss("gce", classes=10, logit_bias=1.0)
    state = crit.state_dict()
    key = next(k for k in state if k.endswith("_extra_state"))
    for field, bad, needle in [("epsilon", math.inf, "epsilon"), ("epsilon", True, "epsilon"),
                               ("epsilon", 1e300, "epsilon"), ("params", {"q": 9.0}, "params"),
                               ("params", {"q": "x"}, "params"), ("logit_std", -1.0, "logit_std"),
                               ("classes", 11, "classes=11"), ("loss", "mae", "saved loss")]:
        with pytest.raises(UsageError, match=needle):
            crit.load_state_dict({key: dict(state[key], **{field: bad})})
        assert crit.epsilon == 1.0 and crit.params == {"q": 0.7}
    with pytest.raises(UsageError, match="mapping"):
        crit.load_state_dict({key: [1, 2]})
    other = cal.nn.loss("gce", classes=10, logit_bias=3.0, q=0.5)
    crit.load_state_dict(other.state_dict())  # a good state is restored exactly
    assert crit.epsilon == 3.0 and crit.params == {"q": 0.5}
    torch.testing.assert_close(crit(Z[:, :5].repeat(1, 2), Y), other(Z[:, :5].repeat(1, 2), Y))


def test_measure_refuses_what_is_not_a_model_or_logits():
    with pytest.raises(TypeError, match="model"):
        cal.nn.measure_logits("resnet18", [torch.randn(2, 3)])
    with pytest.raises(ValueError, match="batches"):
        cal.nn.measure_logits(torch.nn.Linear(3, 4), [torch.randn(2, 3)], batches=0)
    with pytest.raises(ValueError, match="no batch"):
        cal.nn.measure_logits(torch.nn.Linear(3, 4), [])
    with pytest.raises(ValueError, match="classes"):
        cal.nn.measure_logits(torch.nn.Linear(3, 4), [torch.randn(2, 3)], classes=1)
    z = cal.nn.measure_logits(torch.nn.Linear(3, 4), [torch.randn(2, 5, 3)], classes=4)
    assert z.shape == (10, 4)  # [..., K] outputs are rows of K logits
