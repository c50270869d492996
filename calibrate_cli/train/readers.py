"""The readers of the on-disk dataset formats ``calibrate train`` knows. Nothing is ever
downloaded. :func:`calibrate_cli.train.data.load_dataset` picks the reader, then keeps the
classes and samples asked for.

A reader takes ``--data-dir`` and returns (the folder read, the train :class:`Split`, the
test :class:`Split`, the class names, the class count K, CIFAR-100's coarse train labels or
None). A split holds int64 labels and either the images in memory (uint8 [N, H, W, C]) or
the image paths (file-backed datasets, decoded by the training loop, see :func:`read_image`).

=================  ===========================================================
name               what ``--data-dir`` must hold
=================  ===========================================================
``cifar10``        ``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
                   ``batches.meta`` (python pickle version)
``cifar100``       ``train``, ``test``, ``meta`` (python pickle version)
``fashion-mnist``  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
                   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
                   (each raw or ``.gz``)
``imagefolder``    ``train/<class>/<image>`` and ``val/<class>/<image>`` (or
                   ``test/``); classes are the sorted folder names of train/
``webvision``      ``info/train_filelist_google.txt`` and
                   ``info/val_filelist.txt`` (lines ``relative/path label``),
                   the images under ``google/`` and ``val_images_256/``
``webvision-mini`` the same; the first 50 classes (the literature's
                   mini-WebVision: Google images of classes 0-49)
``ilsvrc12-val``   ``val/<wnid>/<image>`` folders, or images and a list file
                   ``imagenet_val.txt`` / ``val.txt`` (``name label``); an
                   evaluation set (its train split is empty)
=================  ===========================================================

``--data-dir`` may also name the parent of the usual folder
(``cifar-10-batches-py``, ``cifar-100-python``, ``fashion-mnist``,
``FashionMNIST/raw``).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm",
                    ".tif", ".tiff")

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_FMNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"
_WEBVISION_URL = "https://data.vision.ee.ethz.ch/cvl/webvision/download.html"
_IMAGENET_URL = "https://image-net.org/download.php"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass
class Split:
    """One split: labels, and images in memory or image paths."""

    labels: np.ndarray                 # int64 [N]
    images: np.ndarray | None = None   # uint8 [N, H, W, C] when held in memory
    files: list[str] | None = None     # image paths when file-backed (image folders)

    def __len__(self) -> int:
        return int(self.labels.size)


def subset(split: Split, keep: np.ndarray) -> Split:
    """The samples of ``split`` at the indices ``keep``, in that order."""
    keep = np.asarray(keep)
    return Split(labels=split.labels[keep],
                 images=None if split.images is None else split.images[keep],
                 files=None if split.files is None else [split.files[i] for i in keep])


# ----------------------------------------------------------------------------- helpers

def _find_dir(data_dir: str | None, name: str, required: tuple[str, ...], subdirs: tuple[str, ...],
              hint: str, *, gz_ok: bool = False) -> str:
    """The folder (``data_dir`` or a known sub-folder) holding all ``required`` files."""
    if data_dir is None:
        raise UsageError(f"{name} needs --data-dir: a folder with {', '.join(required)} ({hint})")
    root = os.path.expanduser(str(data_dir))
    if not os.path.isdir(root):
        raise UsageError(f"{name}: --data-dir '{root}' is not a folder; expected one with "
                         f"{', '.join(required)} ({hint})")

    def has_all(d):
        return all(os.path.isfile(os.path.join(d, f))
                   or (gz_ok and os.path.isfile(os.path.join(d, f + ".gz"))) for f in required)

    for d in (root,) + tuple(os.path.join(root, s) for s in subdirs):
        if has_all(d):
            return d
    missing = [f for f in required if not (os.path.isfile(os.path.join(root, f))
                                           or (gz_ok and os.path.isfile(os.path.join(root, f + ".gz"))))]
    raise UsageError(f"{name}: '{root}' lacks {', '.join(missing)} ({hint})")


def _load_pickle(path: str, name: str, hint: str) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except Exception as exc:
        raise UsageError(f"{name}: cannot read '{path}' as a python pickle ({type(exc).__name__}); "
                         f"expected {hint}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{name}: '{path}' is not a CIFAR batch (a pickled dict); expected {hint}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_images(batch: dict, path: str, name: str, hint: str) -> np.ndarray:
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    except Exception:
        raise UsageError(f"{name}: '{path}' has no 3072-byte image rows under b'data'; "
                         f"expected {hint}") from None


def _labels(batch: dict, key: str, n: int, path: str, name: str, hint: str) -> np.ndarray:
    if key not in batch:
        raise UsageError(f"{name}: '{path}' has no b'{key}' entry; expected {hint}")
    y = np.asarray(batch[key], dtype=np.int64).ravel()
    if y.size != n:
        raise UsageError(f"{name}: '{path}' holds {n} images but {y.size} labels")
    return y


def _names(meta: dict, key: str, count: int) -> list[str]:
    raw = meta.get(key)
    if raw is None or len(raw) != count:
        return [f"class_{i}" for i in range(count)]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in raw]


# ----------------------------------------------------------------------------- readers

def _read_cifar10(data_dir):
    hint = (f"the CIFAR-10 python version: cifar-10-python.tar.gz from {_CIFAR_URL}, "
            f"extracted (folder cifar-10-batches-py/)")
    files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
    d = _find_dir(data_dir, "cifar10", files, ("cifar-10-batches-py",), hint)
    parts = []
    for f in files[:6]:
        p = os.path.join(d, f)
        b = _load_pickle(p, "cifar10", hint)
        x = _cifar_images(b, p, "cifar10", hint)
        parts.append((x, _labels(b, "labels", x.shape[0], p, "cifar10", hint)))
    meta = _load_pickle(os.path.join(d, "batches.meta"), "cifar10", hint)
    train = Split(labels=np.concatenate([y for _, y in parts[:5]]),
                  images=np.concatenate([x for x, _ in parts[:5]]))
    test = Split(labels=parts[5][1], images=parts[5][0])
    return d, train, test, _names(meta, "label_names", 10), 10, None


def _read_cifar100(data_dir):
    hint = (f"the CIFAR-100 python version: cifar-100-python.tar.gz from {_CIFAR_URL}, "
            f"extracted (folder cifar-100-python/)")
    d = _find_dir(data_dir, "cifar100", ("train", "test", "meta"), ("cifar-100-python",), hint)
    out = {}
    for f in ("train", "test"):
        p = os.path.join(d, f)
        b = _load_pickle(p, "cifar100", hint)
        x = _cifar_images(b, p, "cifar100", hint)
        out[f] = (x, _labels(b, "fine_labels", x.shape[0], p, "cifar100", hint),
                  _labels(b, "coarse_labels", x.shape[0], p, "cifar100", hint))
    meta = _load_pickle(os.path.join(d, "meta"), "cifar100", hint)
    train = Split(labels=out["train"][1], images=out["train"][0])
    test = Split(labels=out["test"][1], images=out["test"][0])
    return d, train, test, _names(meta, "fine_label_names", 100), 100, out["train"][2]


def read_idx(path: str) -> np.ndarray:
    """An IDX file (raw or gzip): uint8 array of the shape in its header."""
    opener = gzip.open if path.endswith(".gz") else open
    hint = "an IDX file of unsigned bytes (Fashion-MNIST / MNIST format)"
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UsageError(f"fashion-mnist: cannot read '{path}' ({type(exc).__name__}); "
                         f"expected {hint}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"fashion-mnist: '{path}' does not start with the IDX magic for "
                         f"unsigned bytes (00 00 08 ..); expected {hint}")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise UsageError(f"fashion-mnist: '{path}' has a truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    size = int(np.prod(shape))
    body = raw[4 + 4 * ndim:]
    if len(body) != size:
        raise UsageError(f"fashion-mnist: '{path}' holds {len(body)} data bytes, its header "
                         f"promises {size} (shape {shape})")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _read_fashion_mnist(data_dir):
    hint = f"the four IDX files, raw or .gz, from {_FMNIST_URL}"
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    d = _find_dir(data_dir, "fashion-mnist", files,
                  ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist", "raw"), hint, gz_ok=True)

    def path(f):
        p = os.path.join(d, f)
        return p if os.path.isfile(p) else p + ".gz"

    splits = []
    for img_f, lab_f in ((files[0], files[1]), (files[2], files[3])):
        x = read_idx(path(img_f))
        y = read_idx(path(lab_f))
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise UsageError(f"fashion-mnist: '{path(img_f)}' ({x.shape}) and '{path(lab_f)}' "
                             f"({y.shape}) do not pair as [N, H, W] images and [N] labels")
        splits.append(Split(labels=y.astype(np.int64), images=x[..., None].copy()))
    return d, splits[0], splits[1], list(FASHION_MNIST_CLASSES), 10, None


def _image_files(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames)
                if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def _read_imagefolder(data_dir):
    hint = "train/<class>/<image> and val/<class>/<image> (or test/) folders of images"
    if data_dir is None:
        raise UsageError(f"imagefolder needs --data-dir: a folder with {hint}")
    root = os.path.expanduser(str(data_dir))
    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, s) for s in ("val", "test")
                     if os.path.isdir(os.path.join(root, s))), None)
    if not os.path.isdir(train_dir) or test_dir is None:
        raise UsageError(f"imagefolder: '{root}' needs {hint}")
    names = sorted(e for e in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, e)))
    if len(names) < 2:
        raise UsageError(f"imagefolder: '{train_dir}' has {len(names)} class folders, needs "
                         f"at least 2 ({hint})")
    index = {n: i for i, n in enumerate(names)}
    splits = []
    for folder in (train_dir, test_dir):
        files, labels = [], []
        for n in sorted(os.listdir(folder)):
            if not os.path.isdir(os.path.join(folder, n)):
                continue
            if n not in index:
                raise UsageError(f"imagefolder: class folder '{n}' in '{folder}' is not in "
                                 f"'{train_dir}'")
            found = _image_files(os.path.join(folder, n))
            files += found
            labels += [index[n]] * len(found)
        if not files:
            raise UsageError(f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                             f"under '{folder}'")
        splits.append(Split(labels=np.array(labels, np.int64), files=files))
    return root, splits[0], splits[1], names, len(names), None


def read_list_file(path: str, image_root: str, name: str) -> Split:
    """A list file of ``relative/path label`` lines (label: a 0-based integer)."""
    files, labels = [], []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    if len(parts) != 2:
                        raise ValueError
                    label = int(parts[1])
                    if label < 0:
                        raise ValueError
                except ValueError:
                    raise UsageError(f"{name}: line {lineno} of '{path}' is not "
                                     f"'relative/path label' (a path and a non-negative integer): "
                                     f"{line.strip()[:80]!r}") from None
                files.append(os.path.join(image_root, parts[0]))
                labels.append(label)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{name}: cannot read list file '{path}' ({type(exc).__name__})") from None
    if not files:
        raise UsageError(f"{name}: list file '{path}' has no entries")
    return Split(labels=np.array(labels, np.int64), files=files)


def _check_files_exist(split: Split, name: str, what: str, hint: str, sample: int = 20) -> None:
    """Look at the first few listed images (not all: full WebVision has 2.4M)."""
    for p in (split.files or [])[:sample]:
        if not os.path.isfile(p):
            raise UsageError(f"{name}: {what} lists '{p}', which does not exist (expected {hint})")


def _synset_names(path: str, count: int) -> list[str]:
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
        if len(lines) >= count:
            return lines[:count]
    return [f"class_{i}" for i in range(count)]


def _read_webvision(data_dir, mini: bool):
    name = "webvision-mini" if mini else "webvision"
    hint = (f"the WebVision 1.0 release from {_WEBVISION_URL}: list files in info/, resized "
            f"images in google/ and val_images_256/")
    d = _find_dir(data_dir, name, ("info/train_filelist_google.txt", "info/val_filelist.txt"),
                  ("webvision",), hint)
    train = read_list_file(os.path.join(d, "info", "train_filelist_google.txt"), d, name)
    val_list = os.path.join(d, "info", "val_filelist.txt")
    val_root = next((os.path.join(d, s) for s in ("val_images_256", "val_images", "val")
                     if os.path.isdir(os.path.join(d, s))), d)
    test = read_list_file(val_list, val_root, name)
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    if mini:
        classes = min(classes, 50)
        keep_tr, keep_te = np.flatnonzero(train.labels < 50), np.flatnonzero(test.labels < 50)
        train, test = subset(train, keep_tr), subset(test, keep_te)
    _check_files_exist(train, name, "info/train_filelist_google.txt", hint)
    _check_files_exist(test, name, "info/val_filelist.txt", hint)
    names = _synset_names(os.path.join(d, "info", "synsets.txt"), classes)
    return d, train, test, names, classes, None


def _read_ilsvrc12_val(data_dir):
    name = "ilsvrc12-val"
    hint = (f"the ILSVRC2012 validation images ({_IMAGENET_URL}) as val/<wnid>/<image> "
            f"folders, or the images with a list file imagenet_val.txt or val.txt "
            f"('name label' lines, 0-based labels in sorted-wnid order)")
    if data_dir is None:
        raise UsageError(f"{name} needs a folder with {hint}")
    root = os.path.expanduser(str(data_dir))
    if not os.path.isdir(root):
        raise UsageError(f"{name}: '{root}' is not a folder (expected {hint})")
    lists = [os.path.join(root, f) for f in ("imagenet_val.txt", "val.txt", "ILSVRC2012_val.txt")]
    lst = next((p for p in lists if os.path.isfile(p)), None)
    val_dir = os.path.join(root, "val") if os.path.isdir(os.path.join(root, "val")) else root
    wnids = sorted(e for e in os.listdir(val_dir) if os.path.isdir(os.path.join(val_dir, e)))
    if lst is not None:
        test = read_list_file(lst, val_dir, name)
        classes = int(test.labels.max()) + 1
        names = _synset_names(os.path.join(root, "synsets.txt"), classes)
    elif wnids:
        synsets = os.path.join(root, "synsets.txt")
        if os.path.isfile(synsets):     # WebVision's info/synsets.txt, copied here: the class order
            with open(synsets, encoding="utf-8", errors="replace") as fh:
                order = [ln.split()[0] for ln in fh if ln.strip()]
        else:
            synsets = "the folder list"
            order = wnids
        index = {w: i for i, w in enumerate(order)}
        files, labels = [], []
        for w in wnids:
            if w not in index:
                raise UsageError(f"{name}: folder '{w}' is not listed in '{synsets}'")
            found = _image_files(os.path.join(val_dir, w))
            files += found
            labels += [index[w]] * len(found)
        if not files:
            raise UsageError(f"{name}: no images under '{val_dir}' (expected {hint})")
        test = Split(labels=np.array(labels, np.int64), files=files)
        classes = len(order)
        names = list(order)
    else:
        raise UsageError(f"{name}: '{root}' has neither class folders nor a list file "
                         f"(expected {hint})")
    _check_files_exist(test, name, os.path.basename(lst) if lst else "the folder", hint)
    train = Split(labels=np.zeros(0, np.int64), files=[])
    return root, train, test, names, classes, None


#: The reader of each on-disk dataset, by name (glyphs are drawn, not read).
READERS = {
    "cifar10": _read_cifar10,
    "cifar100": _read_cifar100,
    "fashion-mnist": _read_fashion_mnist,
    "imagefolder": _read_imagefolder,
    "webvision": lambda d: _read_webvision(d, mini=False),
    "webvision-mini": lambda d: _read_webvision(d, mini=True),
    "ilsvrc12-val": _read_ilsvrc12_val,
}


def read_image(path: str, size: int | None = None) -> np.ndarray:
    """Decode one image file to uint8 RGB [H, W, 3]; ``size``: resize the shorter side to it."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                w, h = im.size
                f = size / min(w, h)
                im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read image '{path}' ({type(exc).__name__})") from None
