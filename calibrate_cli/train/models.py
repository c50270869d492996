"""Models, written in plain torch (no torchvision), with seeded initialisation.

Names (``create_model(name, ...)``):

* ``mlp1024`` -- the paper's MLP1024: the flattened image, two hidden layers of
  1024 ReLU units, a linear output layer. No normalisation layers, no dropout.
  ``mlp<W>x<D>`` gives D hidden layers of W units (``mlp1024`` = ``mlp1024x2``).
* ``cnn8`` -- the 8-layer CNN of the CIFAR-10 protocol of the robust-loss
  literature (APL, ALFs, ANL): three blocks of two 3x3 convolutions (64, 128,
  196 channels) with batch norm, ReLU and 2x2 max pooling, then a 256-unit
  fully connected layer with batch norm and the output layer (6 + 2 layers).
* ``resnet18``, ``resnet34``, ``resnet50`` -- He et al. 2016. The CIFAR variant
  (3x3 stem, stride 1, no max pooling) is used for images up to 64 pixels, the
  ImageNet variant (7x7 stride-2 stem and max pooling) above; force one with
  ``resnet34-cifar`` or ``resnet50-imagenet``.

Initialisation: torch's layer defaults (Kaiming-uniform weights with a = √5
for linear and convolution layers) for the MLPs and cnn8; the ResNets draw their
convolutions from Kaiming-normal (fan_out, ReLU gain), as torchvision does.
Batch-norm weights 1 and biases 0; with
``zero_init_residual`` the last batch norm of every residual branch starts at
0 (used for WebVision, as in JAL). The parameters depend on ``seed`` only: the
model is built under a forked RNG seeded with it, so the global RNG is neither
used nor changed.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import UsageError

MODEL_NAMES = ("mlp1024", "cnn8", "resnet18", "resnet34", "resnet50")
_RESNET_LAYERS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
                  "resnet50": ("bottleneck", (3, 4, 6, 3))}


class MLP(nn.Module):
    """z = W_out relu(... relu(W_1 x + b_1) ...) + b_out on the flattened input."""

    def __init__(self, in_features: int, num_classes: int, width: int = 1024, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CNN8(nn.Module):
    """The 8-layer CNN of the CIFAR-10 robust-loss protocol (6 conv + 2 linear)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in (64, 128, 196):
            layers += _conv_bn(c, width) + _conv_bn(width, width) + [nn.MaxPool2d(2)]
            c = width
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        if side < 1:
            raise UsageError(f"cnn8 needs images of at least 8 pixels, got {image_size}")
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, 256),
                                nn.BatchNorm1d(256), nn.ReLU(inplace=True))
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features(x)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3x3 ("v1.5")
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet with a CIFAR stem (3x3, stride 1) or an ImageNet stem (7x7/2 + max pool)."""

    def __init__(self, block: str, layers: tuple[int, ...], in_channels: int, num_classes: int,
                 *, stem: str = "cifar", zero_init_residual: bool = False):
        super().__init__()
        Block = BasicBlock if block == "basic" else Bottleneck
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 64
        for i, n in enumerate(layers):
            width = 64 * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(Block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * Block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x):
        return self.head(self.pool(self.stages(self.stem(x))))


def parse_model_name(name: str) -> tuple[str, dict]:
    """Split a model name into its family and options; UsageError for an unknown one."""
    key = name.strip().lower().replace("_", "-")
    m = re.fullmatch(r"mlp(\d+)(?:x(\d+))?", key)
    if m:
        width, depth = int(m.group(1)), int(m.group(2) or 2)
        if not (1 <= width <= 65536 and 1 <= depth <= 64):
            raise UsageError(f"model '{name}': width must be in [1, 65536] and depth in [1, 64]")
        return "mlp", {"width": width, "depth": depth}
    if key == "cnn8":
        return "cnn8", {}
    m = re.fullmatch(r"(resnet(?:18|34|50))(?:-(cifar|imagenet))?", key)
    if m:
        return m.group(1), {"stem": m.group(2)}
    raise UsageError(
        f"unknown model '{name}' (known: {', '.join(MODEL_NAMES)}; mlp<W>x<D>; "
        "resnet18/34/50 with -cifar or -imagenet to force the stem)"
    )


def create_model(name: str, *, num_classes: int, in_channels: int, image_size: int,
                 seed: int = 0, zero_init_residual: bool = False) -> nn.Module:
    """Build model ``name`` for K = ``num_classes`` and images [C, S, S]; seeded init."""
    family, opts = parse_model_name(name)
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "mlp":
            return MLP(in_channels * image_size * image_size, num_classes, **opts)
        if family == "cnn8":
            return CNN8(in_channels, num_classes, image_size)
        block, layers = _RESNET_LAYERS[family]
        stem = opts["stem"] or ("cifar" if image_size <= 64 else "imagenet")
        return ResNet(block, layers, in_channels, num_classes, stem=stem,
                      zero_init_residual=zero_init_residual)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


__all__ = ["MODEL_NAMES", "MLP", "CNN8", "ResNet", "create_model", "parse_model_name",
           "count_parameters", "has_batch_norm"]
