"""Datasets for ``calibrate train``: :func:`load_dataset` reads one of the usual on-disk
formats (:mod:`calibrate_cli.train.readers`, which lists what ``--data-dir`` must hold for
each) or draws the embedded ``glyphs`` set (from matplotlib's DejaVu fonts, glyphs.py), and
returns a :class:`DatasetBundle`: a train and a test :class:`Split`, each holding int64
labels and either the images in memory (uint8 [N, H, W, C]) or the image paths (file-backed
datasets, decoded by the training loop, see :func:`read_image`). Nothing is ever downloaded.

Subsets: ``classes=K`` keeps the samples of the first K classes (labels
0..K-1). ``train_per_class``/``test_per_class`` keep at most that many samples
of each class, drawn without replacement by ``np.random.default_rng(seed)``
and kept in file order.

Normalisation (``mean``/``std``, per channel, on the 0..1 scale): measured on
the loaded train images for in-memory datasets; the ImageNet values
(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) for file-backed ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .config import DATASETS, dataset_key
from .readers import (FASHION_MNIST_CLASSES, IMAGE_EXTENSIONS, READERS, Split, read_idx,
                      read_image, read_list_file, subset)

__all__ = ["load_dataset", "dataset_names", "DatasetBundle", "Split", "read_image", "read_idx",
           "read_list_file", "IMAGE_EXTENSIONS", "FASHION_MNIST_CLASSES", "IMAGENET_MEAN",
           "IMAGENET_STD", "FILE_IMAGE_SIZE", "GLYPHS_CLASSES", "GLYPHS_TRAIN_PER_CLASS",
           "GLYPHS_TEST_PER_CLASS", "GLYPHS_IMAGE_SIZE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: glyphs defaults (documented in docs/datasets.md).
GLYPHS_CLASSES = 100
GLYPHS_TRAIN_PER_CLASS = 100
GLYPHS_TEST_PER_CLASS = 20
GLYPHS_IMAGE_SIZE = 24
#: Training crop of the file-backed datasets unless --image-size says otherwise.
FILE_IMAGE_SIZE = 224


@dataclass
class DatasetBundle:
    """A loaded dataset: both splits and what a model and the loop need to know."""

    name: str
    classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]      # per channel, 0..1 scale
    std: tuple[float, ...]
    train: Split
    test: Split
    class_names: list[str]
    description: str
    coarse_labels: np.ndarray | None = None   # CIFAR-100 train coarse labels (superclass noise)

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None or self.test.images is not None


def dataset_names() -> tuple[str, ...]:
    """The names :func:`load_dataset` accepts (the same tuple as config.DATASETS)."""
    return DATASETS


# ----------------------------------------------------------------------------- helpers

def _per_class(labels: np.ndarray, classes: int, count: int | None,
               rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``count`` samples per class in [0, classes), in file order."""
    if count is None:
        return np.flatnonzero(labels < classes)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(classes + 1))
    chosen = []
    for c in range(classes):
        idx = order[bounds[c]:bounds[c + 1]]
        if idx.size > count:
            idx = rng.choice(idx, size=count, replace=False)
        chosen.append(idx)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, H, W, C], on the 0..1 scale."""
    c = images.shape[-1]
    flat = images.reshape(-1, c)
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for lo in range(0, flat.shape[0], 1 << 22):    # chunks keep the float copy small
        part = flat[lo:lo + (1 << 22)].astype(np.float64)
        total += part.sum(axis=0)
        total_sq += (part * part).sum(axis=0)
    n = max(flat.shape[0], 1)
    mean = total / n / 255.0
    var = np.maximum(total_sq / n / 255.0 ** 2 - mean ** 2, 0.0)
    std = np.where(var > 0, np.sqrt(var), 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# ----------------------------------------------------------------------------- loading

def _load_glyphs(classes, train_per_class, test_per_class, image_size, seed):
    from . import glyphs
    k = GLYPHS_CLASSES if classes is None else int(classes)
    ntr = GLYPHS_TRAIN_PER_CLASS if train_per_class is None else int(train_per_class)
    nte = GLYPHS_TEST_PER_CLASS if test_per_class is None else int(test_per_class)
    size = GLYPHS_IMAGE_SIZE if image_size is None else int(image_size)
    if ntr < 1 or nte < 1:
        raise UsageError(f"glyphs: samples per class must be >= 1, got train {ntr}, test {nte}")
    from ..utils.progress import slow_step

    with slow_step(f"drawing {k * (ntr + nte)} glyph images"):
        xtr, ytr, xte, yte, names = glyphs.generate(k, ntr, nte, size, seed)
    mean, std = _channel_stats(xtr)
    return DatasetBundle(
        name="glyphs", classes=k, channels=1, image_size=size, mean=mean, std=std,
        train=Split(labels=ytr, images=xtr), test=Split(labels=yte, images=xte),
        class_names=names,
        description=(f"glyphs (embedded): {k} characters drawn from matplotlib's DejaVu fonts, "
                     f"{size}x{size} grayscale, random style/affine/noise, seed {seed}; "
                     f"{ytr.size} train / {yte.size} test ({ntr}/{nte} per class)"))

_NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "fashion-mnist": 28}


def load_dataset(name: str, data_dir: str | None = None, *, classes: int | None = None,
                 train_per_class: int | None = None, test_per_class: int | None = None,
                 image_size: int | None = None, seed: int = 0) -> DatasetBundle:
    """Load dataset ``name`` (see the module docstring for the files each needs).

    ``classes``: keep the first K classes. ``train_per_class``/``test_per_class``:
    at most that many samples per class (seeded choice). ``image_size``: glyphs
    render at it (default 24); file-backed datasets record it as the training
    crop (default 224); CIFAR and Fashion-MNIST accept only their own size.
    ``seed``: the glyph draws and the per-class subsets.
    """
    key = dataset_key(name)
    if classes is not None and int(classes) < 2:
        raise UsageError(f"--classes must be >= 2, got {classes}")
    if key == "glyphs":
        return _load_glyphs(classes, train_per_class, test_per_class, image_size, seed)

    if key in _NATIVE_SIZE and image_size not in (None, _NATIVE_SIZE[key]):
        raise UsageError(f"{key} images are {_NATIVE_SIZE[key]} pixels; --image-size "
                         f"{image_size} is not supported (leave it unset)")
    root, train, test, names, k_all, coarse = READERS[key](data_dir)
    for split, what in ((train, "train"), (test, "test")):
        if split.labels.size and (split.labels.min() < 0 or split.labels.max() >= k_all):
            raise UsageError(f"{key}: {what} labels outside [0, {k_all - 1}] in '{root}'")
    k = k_all if classes is None else int(classes)
    if k > k_all:
        raise UsageError(f"{key}: --classes must be in [2, {k_all}], got {k}")
    rng = np.random.default_rng(seed)
    keep_tr = _per_class(train.labels, k, train_per_class, rng)
    keep_te = _per_class(test.labels, k, test_per_class, rng)
    if coarse is not None:
        coarse = coarse[keep_tr]
    train, test = subset(train, keep_tr), subset(test, keep_te)
    if train.images is not None:
        size, channels = train.images.shape[1], train.images.shape[3]
        mean, std = _channel_stats(train.images)
    else:
        size = FILE_IMAGE_SIZE if image_size is None else int(image_size)
        channels, mean, std = 3, IMAGENET_MEAN, IMAGENET_STD
    storage = "in memory" if train.images is not None or test.images is not None else "image files"
    desc = (f"{key} from {root}: {len(train)} train / {len(test)} test, {k} classes, "
            f"{size}x{size}x{channels} ({storage})")
    return DatasetBundle(name=key, classes=k, channels=channels, image_size=size,
                         mean=mean, std=std, train=train, test=test, class_names=names[:k],
                         description=desc, coarse_labels=coarse)
