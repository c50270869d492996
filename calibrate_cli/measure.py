r"""Logits of a network at its default initialisation, and their statistics.

``measure_logits`` builds a model (``calibrate_cli.train.models.create_model``,
seeded), feeds it a few batches of inputs and returns the logits z[N, K] with
their statistics. This is the measurement behind the default
``--logit-std`` and behind ``--from-model``/``--logits``.

Inputs
------
* real images: ``dataset="glyphs"`` (embedded, no files), or any dataset of
  ``calibrate train`` with ``data_dir``. Images are scaled to [0, 1] and
  normalised per channel with the dataset's mean and std, x = (v/255 - m)/s,
  exactly as the training loop does.
* synthetic: Gaussian inputs x ~ N(0, 1) per pixel. That is what a normalised
  image looks like to first order (zero mean, unit variance per channel), so
  with ``dataset`` but no ``data_dir`` the shape is the dataset's and the
  output says "synthetic Gaussian, normalised as <dataset>"; with
  ``input_shape`` alone the shape is the one given (default 3×32×32).

Networks with batch norm are run in training mode: the first training step
normalises with the statistics of its batch, so these are the logits the loss
sees at initialisation (no gradient is taken, the model is thrown away).

Statistics (``Measurement.stats``)
----------------------------------
The engine works with per-row centred logits (softmax ignores a common shift
of a row, see ``calibrate_cli.logits.from_array``), so the distribution
statistics are those of c_{nk} = z_{nk} - \bar z_n:

* ``mean``: mean of the raw logits (where the frame sits; irrelevant to ε).
* ``std``: standard deviation of c (what ``--logit-std`` means); ``std_raw``:
  of z itself.
* ``skewness``, ``excess_kurtosis``: of c (0 and 0 for a Gaussian).
* ``class_spread``: std over classes k of the per-class means \bar z_{·k}
  (a fixed offset per class that the network's biases and weights give).
* ``input_spread``: std over inputs n of the per-input means \bar z_n (the
  common shift that softmax ignores).
* ``per_seed_std``: ``std`` for each initialisation seed separately.
* ``ks_distance``: the Kolmogorov–Smirnov distance sup_x |F_c(x) - Φ(x/std)|
  between the empirical distribution of c and the Gaussian N(0, std²) fitted
  by its moments.
* ``inputs``: a sentence saying which inputs were used.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ._version import __version__
from .atomic import write_atomic
from .errors import UsageError
from .logits import centre_rows

#: Input shapes (C, H, W) of the datasets when no files are read (Gaussian inputs).
DATASET_SHAPES = {
    "glyphs": (1, 24, 24), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
    "fashion-mnist": (1, 28, 28), "imagefolder": (3, 224, 224), "webvision": (3, 224, 224),
    "webvision-mini": (3, 224, 224), "ilsvrc12-val": (3, 224, 224),
}
DEFAULT_SHAPE = (3, 32, 32)
MAX_VALUES = 50_000_000  # N·K logits held in memory (400 MB of float64)


@dataclass
class Measurement:
    """Logits [N, K] of a model at initialisation, their statistics and provenance."""

    logits: np.ndarray
    stats: dict
    meta: dict = field(default_factory=dict)

    def distribution(self, *, atoms: int | None = None):
        """The engine's :class:`~calibrate_cli.logits.Empirical` of these logits."""
        from .logits import DEFAULT_ATOMS, from_array

        return from_array(self.logits, source=self.meta.get("source", "measured logits"),
                          atoms=DEFAULT_ATOMS if atoms is None else atoms)

    def to_npz(self, path: str) -> None:
        """Write ``logits`` (float64 [N, K]) and ``meta`` (a JSON string) atomically.

        ``load_logits`` reads the key ``logits`` and ignores the rest. A ``.npy``
        path gets the bare array.
        """
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".npz", ".npy"):
            raise UsageError(f"--out must end in .npz or .npy, got '{path}'")
        meta = json.dumps({"meta": self.meta, "stats": self.stats}, default=float)

        def write(f):
            if ext == ".npy":
                np.save(f, self.logits)
            else:
                np.savez(f, logits=self.logits, meta=np.array(meta))

        write_atomic(path, write, make_dirs=False)


# ------------------------------------------------------------------ statistics
def logit_stats(logits: np.ndarray, seeds_rows: list[np.ndarray] | None = None) -> dict:
    """The statistics listed in the module docstring, for logits [N, K]."""
    from scipy import stats as st

    z = np.asarray(logits, dtype=float)
    if z.ndim != 2 or z.shape[1] < 2 or z.shape[0] < 2:
        raise UsageError(f"need logits of shape [N >= 2, K >= 2], got {z.shape}")
    c = centre_rows(z)
    std = float(c.std())
    out = {
        "n_inputs": int(z.shape[0]), "classes": int(z.shape[1]),
        "mean": float(z.mean()), "std": std, "std_raw": float(z.std()),
        "skewness": float(st.skew(c)), "excess_kurtosis": float(st.kurtosis(c)),
        "class_spread": float(z.mean(axis=0).std()),
        "input_spread": float(z.mean(axis=1).std()),
        "ks_distance": float(ks_distance(c, std)),
    }
    if seeds_rows is not None:
        out["per_seed_std"] = [float(centre_rows(z[r]).std()) for r in seeds_rows]
    return out


def ks_distance(values: np.ndarray, std: float) -> float:
    """sup_x |F_n(x) - Φ(x/std)| for the empirical CDF F_n of ``values``."""
    from scipy.special import ndtr

    v = np.sort(np.asarray(values, dtype=float))
    n = v.size
    cdf = ndtr(v / std)
    upper = np.arange(1, n + 1) / n - cdf
    lower = cdf - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


# ------------------------------------------------------------------- devices
def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; checks explicit names."""
    import torch

    d = str(device).strip().lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cpu":
        return d
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available here (use auto or cpu)")
        return d
    if d == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps: MPS is not available here (use auto or cpu)")
        return d
    raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got '{device}'")


# ---------------------------------------------------------------------- inputs
def _check_shape(shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise UsageError(f"--input-shape must be C,H,W (positive integers), got {shape}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"--input-shape must be C,H,W (three positive integers), got {shape}")
    if shape[1] != shape[2]:
        raise UsageError(f"--input-shape: the models take square images, got H={shape[1]}, W={shape[2]}")
    return shape


def _normalise_key(dataset: str) -> str:
    from .train.config import dataset_key

    return dataset_key(dataset)


class _Inputs:
    """Produces batch i of seed s as a float32 array [B, C, H, W]."""

    def __init__(self, dataset, data_dir, input_shape, total: int):
        self.images = None
        if dataset is None:
            self.shape = _check_shape(input_shape if input_shape is not None else DEFAULT_SHAPE)
            c, h, w = self.shape
            self.text = f"synthetic Gaussian N(0, 1) per pixel, shape {c}x{h}x{w}"
            return
        key = _normalise_key(dataset)
        if key != "glyphs" and not data_dir:
            self.shape = DATASET_SHAPES[key]
            if input_shape is not None and _check_shape(input_shape) != self.shape:
                raise UsageError(f"--input-shape {input_shape} does not match {key} "
                                 f"({','.join(map(str, self.shape))}); leave it out")
            c, h, w = self.shape
            self.text = (f"synthetic Gaussian, normalised as {key} "
                         f"(N(0, 1) per pixel, shape {c}x{h}x{w}; no images read)")
            return
        if input_shape is not None:
            raise UsageError("--input-shape is only for synthetic inputs; real images have "
                             "the dataset's shape")
        self._load(key, data_dir, total)

    def _load(self, key, data_dir, total):
        from .train.data import load_dataset, read_image

        if key == "glyphs":
            # 100 classes (the default set); enough samples per class for `total` inputs
            per_class = max(1, math.ceil(total / 100))
            b = load_dataset("glyphs", classes=100, train_per_class=per_class, test_per_class=1)
        else:
            b = load_dataset(key, data_dir)
        split = b.train if len(b.train) else b.test
        n = len(split)
        if n == 0:
            raise UsageError(f"{key}: no images found")
        rng = np.random.default_rng(0)
        idx = rng.permutation(n)[:min(n, total)]
        if split.images is not None:
            imgs = split.images[idx]
        else:
            size = b.image_size
            imgs = np.stack([_center_crop(read_image(split.files[i], size), size) for i in idx])
        x = imgs.astype(np.float32) / 255.0
        x = (x - np.asarray(b.mean, np.float32)) / np.asarray(b.std, np.float32)
        self.images = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        self.shape = tuple(self.images.shape[1:])
        self.text = (f"real images: {len(idx)} train images of {key}, normalised with the "
                     f"dataset's per-channel mean and std ({b.description})")

    def batch(self, seed: int, i: int, size: int) -> np.ndarray:
        if self.images is None:
            rng = np.random.default_rng([seed, i, 7])
            return rng.standard_normal((size,) + tuple(self.shape)).astype(np.float32)
        n = self.images.shape[0]
        start = (i * size) % n
        rows = np.arange(start, start + size) % n
        return self.images[rows]


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


# --------------------------------------------------------------------- measure
def measure_logits(model: str, classes: int, *, dataset: str | None = None,
                   data_dir: str | None = None, input_shape=None, batches: int = 4,
                   batch_size: int = 128, seeds=(0,), device: str = "auto",
                   progress=None) -> Measurement:
    """Logits of ``model`` with K = ``classes`` at its default initialisation.

    For each seed s in ``seeds`` the model is built with ``seed=s`` and fed
    ``batches`` batches of ``batch_size`` inputs (Gaussian inputs drawn with
    seed s; real images cycle through one seeded shuffle). The logits of all
    seeds are stacked: N = len(seeds)·batches·batch_size rows.
    """
    from .average import check_classes

    classes = check_classes(classes)
    if not isinstance(batches, int) or batches < 1:
        raise UsageError(f"--batches must be an integer >= 1, got {batches}")
    if not isinstance(batch_size, int) or batch_size < 2:
        raise UsageError(f"--batch-size must be an integer >= 2, got {batch_size}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise UsageError("--seeds needs at least one seed")
    total = batches * batch_size
    if total * len(seeds) * classes > MAX_VALUES:
        raise UsageError(f"{total * len(seeds)} inputs × {classes} classes is more than "
                         f"{MAX_VALUES:.0e} logits; lower --batches, --batch-size or --seeds")
    from .train.models import parse_model_name

    parse_model_name(model)  # unknown names fail before torch is imported
    inputs = _Inputs(dataset, data_dir, input_shape, total)

    import torch

    from .train.models import create_model

    dev = resolve_device(device)
    c, h, _ = inputs.shape
    rows, chunks = [], []
    start = 0
    for s in seeds:
        net = create_model(model, num_classes=classes, in_channels=c, image_size=h, seed=s)
        net.to(dev).train()  # batch norm uses batch statistics, as in the first training step
        part = []
        with torch.no_grad():
            for i in range(batches):
                x = torch.from_numpy(inputs.batch(s, i, batch_size)).to(dev)
                part.append(net(x).double().cpu().numpy())
                if progress is not None:
                    progress(s, i)
        part = np.concatenate(part)
        chunks.append(part)
        rows.append(np.arange(start, start + part.shape[0]))
        start += part.shape[0]
        del net
    logits = np.concatenate(chunks)
    if not np.all(np.isfinite(logits)):
        raise UsageError(f"{model}: the logits at initialisation are not finite")
    stats = logit_stats(logits, rows)
    stats["inputs"] = inputs.text
    shape_text = "x".join(map(str, inputs.shape))
    meta = {
        "tool": "calibrate", "version": __version__, "model": model, "classes": classes,
        "dataset": dataset, "input_shape": list(inputs.shape), "inputs": inputs.text,
        "batches": batches, "batch_size": batch_size, "seeds": seeds, "device": dev,
        "torch": torch.__version__, "mode": "train (batch-norm batch statistics), no grad",
        "source": f"{model} at init, K={classes}, inputs {shape_text}",
    }
    return Measurement(logits, stats, meta)


def load_measurement_meta(path: str) -> dict:
    """The ``meta`` JSON that :meth:`Measurement.to_npz` stored (empty if none)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "meta" in f.files:
                return json.loads(str(f["meta"]))
    except Exception:  # not ours: no metadata
        pass
    return {}
