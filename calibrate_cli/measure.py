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
of a row, see ``calibrate_cli.engine.logits.from_array``), so the distribution
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

Size and threads
----------------
Before anything is built, :func:`model_size` estimates the parameters and the activations of
one batch from the architecture alone; a measurement that would need more than
:data:`MAX_BYTES` (8 GiB of float32 parameters and activations) is refused with a usage
error naming the sizes, rather than left to exhaust memory (``--input-shape 3,100000,100000``
or ``mlp65536x64``). torch runs with ``threads`` threads, by default the free physical cores
(:func:`calibrate_cli.train.threads.resolve`, as ``calibrate train``), and the caller's setting
is restored afterwards.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ._version import __version__
from .utils.atomic import write_atomic
from .errors import UsageError
from .engine.logits import centre_rows

#: Input shapes (C, H, W) of the datasets when no files are read (Gaussian inputs).
DATASET_SHAPES = {
    "glyphs": (1, 24, 24), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
    "fashion-mnist": (1, 28, 28), "imagefolder": (3, 224, 224), "webvision": (3, 224, 224),
    "webvision-mini": (3, 224, 224), "ilsvrc12-val": (3, 224, 224),
}
DEFAULT_SHAPE = (3, 32, 32)
MAX_VALUES = 50_000_000  # N·K logits held in memory (400 MB of float64)
#: Largest measurement accepted: float32 parameters plus the activations of one batch, as
#: estimated by :func:`model_size` (8 GiB).
MAX_BYTES = 8 * 2 ** 30
#: Parameters of the ResNets without their stem convolution and output layer, and the width
#: of the output layer's input.
_RESNET_BODY = {"resnet18": (11_167_104, 512), "resnet34": (21_275_264, 512),
                "resnet50": (23_498_624, 2048)}


@dataclass
class Measurement:
    """Logits [N, K] of a model at initialisation, their statistics and provenance."""

    logits: np.ndarray
    stats: dict
    meta: dict = field(default_factory=dict)

    def distribution(self, *, atoms: int | None = None):
        """The engine's :class:`~calibrate_cli.engine.logits.Empirical` of these logits."""
        from .engine.logits import DEFAULT_ATOMS, from_array

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
        from .utils.strict_json import dumps

        meta = dumps({"meta": self.meta, "stats": self.stats})

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


# ------------------------------------------------------------------------ size
def model_size(model: str, classes: int, shape) -> tuple[int, int]:
    """(parameters, activation values per input) of ``model`` for K = ``classes`` and inputs
    of ``shape`` (C, H, W), from the architecture alone (nothing is built).

    Parameters are exact (see ``calibrate_cli.train.models``). Activations: the input plus
    three times the largest layer output -- in inference without gradients torch keeps
    about a layer's input, its output and (ResNets) the residual at a time.
    """
    from .train.models import parse_model_name

    family, opts = parse_model_name(model)
    c, h, w = (int(s) for s in shape)
    pixels = c * h * w
    if family == "mlp":
        width, depth = opts["width"], opts["depth"]
        params = (pixels * width + width + (depth - 1) * (width * width + width)
                  + width * classes + classes)
        return params, pixels + 3 * max(width, classes)
    if family == "cnn8":
        params, cin = 0, c
        for width in (64, 128, 196):  # two 3x3 convolutions with batch norm per block
            params += (cin * 9 + 1) * width + 2 * width + (width * 9 + 1) * width + 2 * width
            cin = width
        side = h // 8
        params += 196 * side * side * 256 + 256 + 2 * 256 + 256 * classes + classes
        return params, pixels + 3 * 64 * h * w
    body, head = _RESNET_BODY[family]
    stem = opts.get("stem") or ("cifar" if h <= 64 else "imagenet")
    k = 3 if stem == "cifar" else 7
    params = body + 64 * c * k * k + head * classes + classes
    side = h if stem == "cifar" else -(-h // 2)  # the stem's output side
    widest = 64 * side * side
    if family == "resnet50":  # the first stage widens to 256 channels at the stem's side
        widest = max(widest, 256 * side * side if stem == "cifar" else 256 * (-(-side // 2)) ** 2)
    return params, pixels + 3 * widest


def check_size(model: str, classes: int, shape, batch_size: int) -> int:
    """The estimated bytes of a measurement; UsageError beyond :data:`MAX_BYTES`."""
    params, per_input = model_size(model, classes, shape)
    need = 4 * (params + batch_size * per_input)
    if need > MAX_BYTES:
        c, h, w = shape
        raise UsageError(
            f"{model} with K = {classes} on inputs {c}x{h}x{w} needs about {_bytes(need)} "
            f"({params:.3g} parameters, {per_input:.3g} activations per input × batch "
            f"{batch_size}), more than the {_bytes(MAX_BYTES)} a measurement may use; use a "
            "smaller model, --input-shape or --batch-size")
    return need


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}"
    return f"{n / 1024:.3g} KiB"


def check_output(path: str, option: str = "--out") -> str:
    """Check before measuring that ``path`` can be written (atomically: a temporary file in
    its folder, renamed over it): extension .npz or .npy, an existing writable folder, not a
    folder itself. The probe file is removed at once."""
    import tempfile

    from .utils.atomic import TMP_PREFIX, _storage_error

    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".npy"):
        raise UsageError(f"{option} must end in .npz or .npy, got '{path}'")
    if os.path.isdir(path):
        raise UsageError(f"{option} '{path}' is a folder; give a file name ending in {ext}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} '{path}': folder '{folder}' does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix="-probe")
    except OSError as exc:
        raise (_storage_error(path, exc)
               or UsageError(f"{option} '{path}' cannot be written: {exc.strerror or exc}")) from None
    os.close(fd)
    os.unlink(probe)
    return path


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

    def __init__(self, dataset, data_dir, input_shape, total: int, classes: int | None = None):
        self.images = None
        self.classes = classes
        if data_dir is not None and (dataset is None or _normalise_key(dataset) == "glyphs"):
            raise UsageError("--data-dir applies to a --dataset read from files (not to "
                             "synthetic inputs or the embedded glyphs); leave it out")
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
        if key == "glyphs":  # say why 100 characters feed a model of K classes
            c, h, w = self.shape
            model = f" K = {self.classes} classes" if self.classes else "ny K"
            self.text = (f"real images: {len(idx)} glyph images ({h}x{w} grayscale), drawn at "
                         f"random from all {b.classes} characters of the embedded set "
                         f"({len(split)} rendered, {len(split) // b.classes} per character) "
                         "and normalised with its per-channel mean and std; at "
                         "initialisation only the images matter, not their labels, so one "
                         f"set serves a model of{model}")
        else:
            self.text = (f"real images: {len(idx)} train images of {key}, normalised with "
                         f"the dataset's per-channel mean and std ({b.description})")

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
                   progress=None, threads: int | None = None) -> Measurement:
    """Logits of ``model`` with K = ``classes`` at its default initialisation.

    For each seed s in ``seeds`` the model is built with ``seed=s`` and fed
    ``batches`` batches of ``batch_size`` inputs (Gaussian inputs drawn with
    seed s; real images cycle through one seeded shuffle). The logits of all
    seeds are stacked: N = len(seeds)·batches·batch_size rows.

    The size is checked before anything is built (:func:`check_size`); torch runs with
    ``threads`` threads (default: the free physical cores, as ``calibrate train``), and the
    caller's setting is restored.
    """
    from .engine.average import check_classes

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
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise UsageError(f"--threads must be an integer >= 1, got {threads}")
    from .train import threads as thread_choice

    thread_choice.before_torch()  # before torch's first import: OpenMP threads sleep, not spin
    n_threads, why = thread_choice.resolve(threads)
    from .train.models import parse_model_name

    parse_model_name(model)  # unknown names fail first
    # synthetic inputs are only a shape here; real images: at most `total` of them are read
    inputs = _Inputs(dataset, data_dir, input_shape, total, classes)
    check_size(model, classes, inputs.shape, batch_size)  # before any model or batch exists

    import torch

    caller_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        logits, rows, dev = _run(model, classes, inputs, batches, batch_size, seeds, device,
                                 progress)
    finally:
        torch.set_num_threads(caller_threads)
    if not np.all(np.isfinite(logits)):
        raise UsageError(f"{model}: the logits at initialisation are not finite")
    stats = logit_stats(logits, rows)
    stats["inputs"] = inputs.text
    shape_text = "x".join(map(str, inputs.shape))
    meta = {
        "tool": "calibrate", "version": __version__, "model": model, "classes": classes,
        "dataset": dataset, "input_shape": list(inputs.shape), "inputs": inputs.text,
        "batches": batches, "batch_size": batch_size, "seeds": seeds, "device": dev,
        "threads": n_threads, "threads_reason": why,
        "torch": torch.__version__, "mode": "train (batch-norm batch statistics), no grad",
        "source": f"{model} at init, K={classes}, inputs {shape_text}",
    }
    return Measurement(logits, stats, meta)


def _run(model, classes, inputs, batches, batch_size, seeds, device, progress):
    """(logits [N, K], rows of each seed, device) of the measurement."""
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
                z = net(x)
                if z.dim() != 2 or z.shape[1] != classes:  # the logits of another K: refused
                    raise UsageError(f"{model} gives outputs of shape {tuple(z.shape)}, not "
                                     f"[{batch_size}, {classes}] for K = {classes}")
                part.append(z.double().cpu().numpy())
                if progress is not None:
                    progress(s, i)
        part = np.concatenate(part)
        chunks.append(part)
        rows.append(np.arange(start, start + part.shape[0]))
        start += part.shape[0]
        del net
    return np.concatenate(chunks), rows, dev


def load_measurement_meta(path: str) -> dict:
    """The ``meta`` JSON that :meth:`Measurement.to_npz` stored (empty if none)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "meta" in f.files:
                return json.loads(str(f["meta"]))
    except Exception:  # not ours: no metadata
        pass
    return {}
