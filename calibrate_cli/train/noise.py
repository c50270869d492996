"""Synthetic label noise: which labels change, to what, and a record of it.

Conventions (stated loudly, because the literature mixes them):

* A transition matrix is **row-stochastic**: ``T[i, j] = P(noisy = j | true = i)``
  (the convention of APL/ALFs/ANL; cleanlab's ``noise_matrix`` is the transpose).
* Counts are **exact per true class**, not drawn sample by sample: for a rate R,
  exactly ``round(R * n_c)`` of the ``n_c`` samples of class c change (half rounds
  up). So the actual rate equals R up to that rounding, and the per-class rates
  are equal. The ``*-literature`` kinds reproduce published procedures instead.
* Which samples change, and (for symmetric noise) their new labels, come from
  ``np.random.default_rng(seed)`` and nothing else: the same labels, spec and
  seed always give the same noisy labels and hash, on any machine.

Kinds (``SPEC`` as accepted by ``--noise``; R must lie in [0, 1)):

``none`` / ``0``
    no noise.
``symmetric:R`` (or a bare number ``R``)
    ``round(R n_c)`` samples of each class c get a label drawn uniformly from the
    K - 1 *other* classes, so every changed label is wrong and the actual rate
    is R (unlike flip-to-any-class, whose actual rate is R (K-1)/K).
    Intended T: ``(1 - R) I + R / (K - 1)`` off the diagonal.
``asymmetric:R``
    CIFAR-10 class-conditional noise, truck -> automobile (9 -> 1), bird ->
    airplane (2 -> 0), cat -> dog (3 -> 5), dog -> cat (5 -> 3), deer -> horse
    (4 -> 7). ``round(R n_c)`` samples of each of the five source classes flip,
    chosen among the samples whose *original* label is c. Per-class rates are R
    for the five source classes and 0 for the others; the overall rate is R/2.
``asymmetric-literature:R``
    The sequential loop of APL/ALFs/ANL: for source classes 9, 2, 3, 5, 4 in this
    order, ``floor(R m)`` of the m samples *currently* labelled with the source
    class flip. Step 5 -> 3 draws from dogs and from the cats relabelled dog in
    step 3 -> 5 and so returns some cats to their true label. Expected effective
    rates (balanced classes): cat ``R (1 - R)`` (0.24 at R = 0.4, 0.16 at
    R = 0.2), dog, truck, bird, deer ``R``; overall ``R (5 - R) / 10`` (0.184 at
    R = 0.4, 0.096 at R = 0.2) instead of R/2. Use it only to compare with
    published numbers. The draws are this module's, not the original scripts'.
``cifar100-block:R``
    The literature's CIFAR-100 "super-class" noise: within each block of five
    consecutive class indices {5b, ..., 5b + 4}, class i -> the next index in the
    block, cyclically (5b + 4 -> 5b). CIFAR-100's fine labels are alphabetical,
    so these blocks are *not* super-classes. Needs K divisible by 5. The
    literature samples each label from T independently; here the counts per
    class are exact (same T, actual rate exactly R).
``cifar100-superclass:R``
    True super-class noise: class i -> the next class (by index, cyclically) of
    the same CIFAR-100 coarse class. Needs the coarse labels (``coarse=``, one
    per sample). A class alone in its coarse class among the loaded classes
    (possible with ``--classes`` < 100) keeps its labels.
``pairflip:R``
    ``k -> (k + 1) mod K``.
``matrix:PATH``
    A K x K row-stochastic matrix in ``.npy`` or ``.csv`` (comma or white space
    separated). Class i's samples are split among noisy labels j in the exact
    counts ``T[i, j] n_i`` (largest-remainder rounding, so they add up to n_i).

Only NumPy is needed (no torch).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..utils.atomic import write_atomic
from ..errors import UsageError
from ..utils.numbers import number_text

KINDS = ("none", "symmetric", "asymmetric", "asymmetric-literature", "cifar100-block",
         "cifar100-superclass", "pairflip", "matrix")
_ALIASES = {"sym": "symmetric", "uniform": "symmetric", "asym": "asymmetric",
            "asym-literature": "asymmetric-literature", "pair": "pairflip",
            "pair-flip": "pairflip", "pairflip": "pairflip", "block": "cifar100-block",
            "superclass": "cifar100-superclass", "transition": "matrix", "none": "none",
            "clean": "none"}

#: CIFAR-10 class-conditional map, source -> target, in the order of the
#: literature's sequential loop (APL, ALFs, ANL).
CIFAR10_ASYM = ((9, 1), (2, 0), (3, 5), (5, 3), (4, 7))

_SPEC_HELP = ("none, symmetric:R (or R), asymmetric:R, asymmetric-literature:R, "
              "cifar100-block:R, cifar100-superclass:R, pairflip:R, matrix:PATH, with R in [0, 1)")


@dataclass
class NoiseResult:
    """Noisy labels and what was measured about them."""

    labels: np.ndarray          # int64 [N] noisy labels
    spec: str                   # canonical spec, e.g. "symmetric:0.4"
    rate: float                 # fraction of labels that changed
    per_class_rate: np.ndarray  # [K] fraction changed among the samples of each true class
    transition: np.ndarray      # [K, K] empirical P(noisy = j | true = i); identity row if n_i = 0
    hash: str                   # sha256 hex (first 16) of labels as int64 little-endian bytes
    kind: str = "none"
    seed: int | None = None
    classes: int = 0
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def to_dict(self) -> dict:
        """A JSON-able summary (the per-class rates as a list; no label array)."""
        present = self.class_counts > 0
        pcr = self.per_class_rate[present] if present.any() else np.zeros(1)
        return {
            "spec": self.spec,
            "kind": self.kind,
            "seed": self.seed,
            "classes": int(self.classes),
            "n": int(self.labels.size),
            "changed": int(round(self.rate * self.labels.size)),
            "rate": float(self.rate),
            "per_class_rate_min": float(pcr.min()),
            "per_class_rate_max": float(pcr.max()),
            "per_class_rate": [float(r) for r in self.per_class_rate],
            "hash": self.hash,
        }

    def describe(self) -> str:
        """One line for the console: actual rates and the label hash."""
        d = self.to_dict()
        return (f"noise {self.spec}: {d['changed']} of {d['n']} labels changed "
                f"({100 * self.rate:.2f}%; per class {100 * d['per_class_rate_min']:.2f}"
                f"-{100 * d['per_class_rate_max']:.2f}%), seed {self.seed}, hash {self.hash}")


def label_hash(labels: np.ndarray) -> str:
    """First 16 hex digits of sha256 over the labels as int64 little-endian bytes."""
    data = np.ascontiguousarray(np.asarray(labels), dtype="<i8").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _parse_rate(text: str, spec: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise UsageError(f"--noise '{spec}': the rate must be a number in [0, 1) "
                         f"(specs: {_SPEC_HELP})") from None
    if not math.isfinite(rate) or rate < 0 or rate >= 1:
        raise UsageError(f"--noise '{spec}': the rate must be in [0, 1), got {text}")
    return rate


def parse_noise(spec: str) -> tuple[str, float | str]:
    """Split and check a noise spec: ``(kind, rate)``, or ``("matrix", path)``.

    ``"0"`` and ``"none"`` give ``("none", 0.0)``; a bare number R gives
    ``("symmetric", R)``. UsageError on anything else that is not valid.
    """
    text = str(spec).strip()
    if text == "":
        return "none", 0.0
    low = text.lower()
    if ":" not in text:
        if low in ("none", "clean", "off"):
            return "none", 0.0
        rate = _parse_rate(text, text)    # a bare number: symmetric
        return ("none", 0.0) if rate == 0 else ("symmetric", rate)
    head, arg = text.split(":", 1)
    kind = head.strip().lower().replace("_", "-")
    kind = _ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise UsageError(f"--noise '{text}': unknown kind '{head}' (specs: {_SPEC_HELP})")
    if kind == "matrix":
        path = arg.strip()
        if not path:
            raise UsageError("--noise matrix:PATH needs the path of a K x K .npy or .csv file")
        return "matrix", path
    if kind == "none":
        return "none", 0.0
    return kind, _parse_rate(arg.strip(), text)


def canonical_spec(kind: str, arg: float | str) -> str:
    if kind == "none":
        return "none"
    if kind == "matrix":
        return f"matrix:{arg}"
    return f"{kind}:{number_text(float(arg))}"


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_labels(labels, classes: int) -> np.ndarray:
    try:
        k = int(classes)
    except (TypeError, ValueError):
        raise UsageError(f"noise: the number of classes must be an integer, got {classes!r}") from None
    if k < 2:
        raise UsageError(f"noise: needs at least 2 classes, got {k}")
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise UsageError("noise: labels must be a 1-D array of integers")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise UsageError(f"noise: labels must lie in [0, {k - 1}], found {int(y.min())}..{int(y.max())}")
    return y


def _flip_exact(y: np.ndarray, noisy: np.ndarray, source: int, target_of, rate: float,
                rng: np.random.Generator) -> None:
    """Change round(rate * n) of the samples whose true label is ``source``."""
    idx = np.flatnonzero(y == source)
    m = _round_half_up(rate * idx.size)
    if m == 0:
        return
    chosen = np.sort(rng.choice(idx, size=m, replace=False))
    noisy[chosen] = target_of(chosen)


def load_transition_matrix(path: str, classes: int) -> np.ndarray:
    """Read and check a K x K row-stochastic matrix (.npy, or .csv/.txt text)."""
    if not os.path.isfile(path):
        raise UsageError(f"--noise matrix: no such file '{path}' (expected a {classes}x{classes} "
                         f".npy or .csv row-stochastic matrix)")
    try:
        if path.lower().endswith(".npy"):
            t = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read().replace(",", " ").replace(";", " ")
            rows = [r.split() for r in text.splitlines() if r.strip() and not r.lstrip().startswith("#")]
            t = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except Exception as exc:
        raise UsageError(f"--noise matrix: cannot read '{path}' as a numeric matrix "
                         f"({type(exc).__name__})") from None
    t = np.asarray(t, dtype=np.float64)
    if t.shape != (classes, classes):
        raise UsageError(f"--noise matrix: '{path}' has shape {t.shape}, expected "
                         f"({classes}, {classes}) for {classes} classes")
    if not np.isfinite(t).all() or (t < 0).any():
        raise UsageError(f"--noise matrix: '{path}' must hold finite, non-negative probabilities")
    sums = t.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > 1e-6)
    if bad.size:
        raise UsageError(f"--noise matrix: rows must sum to 1 (T[i, j] = P(noisy j | true i)); "
                         f"row {int(bad[0])} sums to {sums[bad[0]]:.6g}")
    return t


def _apportion(probs: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to n, proportional to probs (largest remainder)."""
    raw = probs * n
    counts = np.floor(raw).astype(np.int64)
    short = n - int(counts.sum())
    if short > 0:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def superclass_successor(coarse: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """next_class[i]: the next class (by index, cyclically) sharing i's coarse label."""
    coarse = np.asarray(coarse)
    if coarse.shape != y.shape:
        raise UsageError(f"cifar100-superclass noise: coarse labels must match the labels "
                         f"(got {coarse.shape}, expected {y.shape})")
    coarse = coarse.astype(np.int64)
    fine_to_coarse = np.full(classes, -1, np.int64)
    for f, c in zip(*np.unique(np.stack([y, coarse]), axis=1)):
        if fine_to_coarse[f] not in (-1, c):
            raise UsageError(f"cifar100-superclass noise: class {f} has two coarse labels "
                             f"({fine_to_coarse[f]} and {c})")
        fine_to_coarse[f] = c
    nxt = np.arange(classes)
    for c in np.unique(fine_to_coarse[fine_to_coarse >= 0]):
        members = np.flatnonzero(fine_to_coarse == c)
        nxt[members] = np.roll(members, -1)
    return nxt


def apply_noise(labels, spec: str, classes: int, *, seed: int, dataset: str | None = None,
                coarse: np.ndarray | None = None) -> NoiseResult:
    """Return the labels with the noise ``spec`` applied (see the module docstring).

    ``labels``: true labels in [0, classes). ``seed``: the noise RNG is
    ``np.random.default_rng(seed)``. ``dataset``: the dataset name, to reject
    CIFAR-specific kinds on other datasets. ``coarse``: per-sample CIFAR-100
    coarse labels, for ``cifar100-superclass``.
    """
    y = _check_labels(labels, classes)
    k = int(classes)
    kind, arg = parse_noise(spec)
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    if kind in ("none",) or (kind != "matrix" and float(arg) == 0.0):
        pass
    elif kind == "symmetric":
        rate = float(arg)
        for c in range(k):
            _flip_exact(y, noisy, c, lambda idx, c=c: (c + rng.integers(1, k, size=idx.size)) % k,
                        rate, rng)
    elif kind in ("asymmetric", "asymmetric-literature"):
        if k != 10 or (dataset is not None and dataset != "cifar10"):
            raise UsageError(f"--noise {kind} is the CIFAR-10 class map (10 classes, dataset "
                             f"cifar10), got {k} classes{f' on {dataset}' if dataset else ''}; "
                             "use pairflip:R or matrix:PATH for other datasets")
        rate = float(arg)
        if kind == "asymmetric":
            for s, t in CIFAR10_ASYM:
                _flip_exact(y, noisy, s, lambda idx, t=t: t, rate, rng)
        else:
            for s, t in CIFAR10_ASYM:   # sequential, on the current labels, floor counts
                idx = np.flatnonzero(noisy == s)
                m = int(rate * idx.size)
                if m:
                    noisy[np.sort(rng.choice(idx, size=m, replace=False))] = t
    elif kind == "cifar100-block":
        if k % 5:
            raise UsageError(f"--noise cifar100-block needs a number of classes divisible by 5, got {k}")
        nxt = np.arange(k) - np.arange(k) % 5 + (np.arange(k) + 1) % 5
        for c in range(k):
            _flip_exact(y, noisy, c, lambda idx, c=c: nxt[c], float(arg), rng)
    elif kind == "cifar100-superclass":
        if coarse is None:
            raise UsageError("--noise cifar100-superclass needs the CIFAR-100 coarse labels "
                             "(dataset cifar100); use cifar100-block:R for the literature's "
                             "index-block convention")
        nxt = superclass_successor(coarse, y, k)
        for c in range(k):
            if nxt[c] != c:
                _flip_exact(y, noisy, c, lambda idx, c=c: nxt[c], float(arg), rng)
    elif kind == "pairflip":
        for c in range(k):
            _flip_exact(y, noisy, c, lambda idx, c=c: (c + 1) % k, float(arg), rng)
    elif kind == "matrix":
        t = load_transition_matrix(str(arg), k)
        for c in range(k):
            idx = np.flatnonzero(y == c)
            if idx.size == 0:
                continue
            counts = _apportion(t[c], idx.size)
            noisy[rng.permutation(idx)] = np.repeat(np.arange(k), counts)
    else:  # pragma: no cover - parse_noise only returns known kinds
        raise UsageError(f"--noise: unknown kind {kind}")
    return summarize_noise(y, noisy, k, spec=canonical_spec(kind, arg), kind=kind, seed=seed)


def summarize_noise(true: np.ndarray, noisy: np.ndarray, classes: int, *, spec: str,
                    kind: str = "none", seed: int | None = None) -> NoiseResult:
    """Measure a pair (true, noisy): overall and per-class rates, transition, hash."""
    true = np.asarray(true, np.int64)
    noisy = np.asarray(noisy, np.int64)
    k = int(classes)
    counts = np.bincount(true * k + noisy, minlength=k * k).reshape(k, k).astype(np.float64)
    n_c = counts.sum(axis=1)
    trans = np.eye(k)
    has = n_c > 0
    trans[has] = counts[has] / n_c[has, None]
    per_class = np.zeros(k)
    per_class[has] = 1.0 - np.diag(counts)[has] / n_c[has]
    rate = float((noisy != true).mean()) if true.size else 0.0
    return NoiseResult(labels=noisy, spec=spec, rate=rate, per_class_rate=per_class,
                       transition=trans, hash=label_hash(noisy), kind=kind, seed=seed,
                       classes=k, class_counts=n_c.astype(np.int64))


def save_noisy_labels(path, result: NoiseResult) -> None:
    """Write ``labels``, ``hash``, ``spec``, ``seed`` and the rates to an .npz, atomically."""
    path = os.fspath(path)
    def write(fh):
        np.savez_compressed(fh, labels=np.asarray(result.labels, dtype="<i8"),
                            hash=np.array(result.hash), spec=np.array(result.spec),
                            seed=np.array(-1 if result.seed is None else int(result.seed)),
                            rate=np.array(result.rate),
                            per_class_rate=np.asarray(result.per_class_rate, np.float64))

    write_atomic(path, write)


def load_noisy_labels(path) -> tuple[np.ndarray, str, str]:
    """Read ``(labels, spec, hash)`` back and check the hash; UsageError if it does not match."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = z["labels"].astype(np.int64)
            spec, stored = str(z["spec"]), str(z["hash"])
    except Exception as exc:
        raise UsageError(f"cannot read noisy labels '{path}' ({type(exc).__name__}); "
                         "expected an .npz written by calibrate train") from None
    if label_hash(labels) != stored:
        raise UsageError(f"noisy labels '{path}': hash mismatch (file says {stored}, "
                         f"labels give {label_hash(labels)}); the file is damaged")
    return labels, spec, stored
