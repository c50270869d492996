"""Models: output shapes for every name, seeded initialisation, bad names."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from calibrate_cli.errors import UsageError  # noqa: E402
from calibrate_cli.train.models import (  # noqa: E402
    create_model, count_parameters, has_batch_norm, parse_model_name)


@pytest.mark.parametrize("name,channels,size", [
    ("mlp1024", 1, 24), ("mlp64x3", 3, 8), ("cnn8", 3, 32), ("cnn8", 1, 24),
    ("resnet18", 3, 32), ("resnet34", 3, 16), ("resnet50", 3, 32),
    ("resnet18-imagenet", 3, 64),
])
def test_output_shape(name, channels, size):
    k = 7
    model = create_model(name, num_classes=k, in_channels=channels, image_size=size, seed=0)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, k)
    assert torch.isfinite(out).all()


def test_mlp1024_is_the_papers_architecture():
    m = create_model("mlp1024", num_classes=10, in_channels=1, image_size=28, seed=0)
    # 784 -> 1024 -> 1024 -> 10, with biases
    expected = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    assert count_parameters(m) == expected
    assert not has_batch_norm(m)
    assert has_batch_norm(create_model("cnn8", num_classes=10, in_channels=3, image_size=32))


def test_resnet_depths_have_the_published_parameter_counts():
    # torchvision's ImageNet ResNets have 11.69M / 21.80M / 25.56M parameters at K = 1000;
    # the stem differs only in its kernel (7x7 vs 3x3), so compare the ImageNet variant.
    counts = {n: count_parameters(create_model(f"{n}-imagenet", num_classes=1000, in_channels=3,
                                               image_size=224))
              for n in ("resnet18", "resnet34", "resnet50")}
    assert counts == {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.mark.parametrize("name", ["mlp1024", "cnn8", "resnet18"])
def test_seeded_init_is_deterministic_and_leaves_global_rng(name):
    kw = dict(num_classes=5, in_channels=3, image_size=16)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = create_model(name, seed=4, **kw)
    after = torch.rand(3)
    b = create_model(name, seed=4, **kw)
    c = create_model(name, seed=5, **kw)
    assert torch.equal(before, after)  # the global RNG was neither used nor changed
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].dtype.is_floating_point)


def test_zero_init_residual():
    m = create_model("resnet18", num_classes=3, in_channels=3, image_size=32, seed=0,
                     zero_init_residual=True)
    last = [blk.last_bn().weight for stage in m.stages for blk in stage]
    assert last and all(torch.count_nonzero(w) == 0 for w in last)


@pytest.mark.parametrize("bad", ["vgg16", "resnet101", "mlp", "mlp0", "cnn9"])
def test_unknown_model_names(bad):
    with pytest.raises(UsageError, match="model"):
        parse_model_name(bad)


def test_too_few_classes():
    with pytest.raises(UsageError, match="2 classes"):
        create_model("mlp1024", num_classes=1, in_channels=1, image_size=8)
