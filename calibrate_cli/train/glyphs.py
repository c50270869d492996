"""``glyphs``: an offline image-classification dataset with up to 2,600+ classes.

What it is
----------
Class k is one Unicode character, drawn with the DejaVu fonts that ship inside
matplotlib (``matplotlib/mpl-data/fonts/ttf``), so nothing is downloaded. Every
sample is a small grayscale image (default 24 x 24) of that character in one of
the DejaVu faces that contain it (Sans, Serif, Sans Mono, each regular, bold and
oblique/italic: up to 12 styles), under a random affine map and pixel noise.

The classes, in a fixed order: the digits 0-9, A-Z, a-z, then every other
character of DejaVu Sans (in code-point order) that is a letter, digit, symbol
or punctuation mark, has no Unicode decomposition (no accented copies of
another letter), has enough ink (at least 1% of the canvas) and does not look
like an earlier class: rendered in DejaVu Sans, centred on its ink box and
reduced to 16 x 16, its cosine similarity with every class kept before it must
stay below 0.93 (so ``l``, ``I`` and ``|`` are one class: ``I``; so are ``O``
and ``0``: ``0``). ``classes=K`` takes the first K, so K = 10 is the ten
digits, and the classes of a smaller K are a subset of those of a larger one.
The list holds :func:`max_classes` (2,663 with the fonts of matplotlib 3.x)
classes.

Choosing the list renders every candidate (a few seconds), so it is computed
once: the list for the fonts and renderer this package was released with ships
as ``calibrate_cli/data/glyph_classes.json``, and any other installation
computes it on first use and keeps it in a cache file
(``$CALIBRATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/calibrate``, else
``~/.cache/calibrate``). Both are keyed by a hash of the font file, the
FreeType and Pillow versions, the Unicode database version and the selection
rules above, so a list is only ever used where it would be computed the same.

Each sample (one NumPy generator, seeded, drives all of it):

* style: one of the faces containing the character, uniformly;
* affine map, about the image centre: rotation U(-15, 15) degrees, scale
  U(0.75, 1.05) (of a glyph drawn at 3/4 of the image height), aspect ratio
  exp(U(-0.15, 0.15)), shear U(-0.15, 0.15), shift U(-0.1, 0.1) of the image
  size in x and y, each face drawn once at 64 x 64, box-filtered to the
  image size, then sampled bilinearly;
* intensity: background U(0, 0.3), ink U(0.6, 1.0) (glyph light on dark), plus
  Gaussian pixel noise of standard deviation 0.08, clipped to [0, 1] and
  stored as uint8.

The train and test sets are drawn independently (different generator streams
of the same seed), ``train_per_class`` and ``test_per_class`` per class, in
class order (all samples of class 0, then class 1, ...). The images depend on
``(K, per-class counts, image size, seed)`` and on the FreeType version that
renders the fonts; on one installation they are bit-for-bit reproducible.

How hard it is: see docs/datasets.md for the measured accuracy of a quick
MLP at K = 10, 100 and 1000.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import unicodedata

import numpy as np

from ..errors import UsageError

#: Bump when the selection rules change in a way the key below does not see.
CLASS_LIST_VERSION = 1
_SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                        "glyph_classes.json")

#: Base canvas (pixels) on which each (class, face) is drawn once.
BASE = 64
#: Faces used for the styles of a class (the first one decides the class list).
FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
         "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
         "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
         "DejaVuSansMono-BoldOblique.ttf")
_FIRST = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CATEGORIES = {"Lu", "Ll", "Lt", "Lo", "Nd", "Nl", "No", "Sm", "Sc", "So", "Po", "Ps", "Pe",
               "Pd", "Pc", "Pi", "Pf"}
SIMILARITY_LIMIT = 0.93
MIN_INK = 0.01
#: Augmentation (see the module docstring).
ROTATION_DEG = 15.0
SCALE = (0.75, 1.05)
ASPECT_LOG = 0.15
SHEAR = 0.15
SHIFT = 0.10
BACKGROUND = (0.0, 0.3)
INK = (0.6, 1.0)
PIXEL_NOISE = 0.08
_GLYPH_FRACTION = 0.75   # the font size, as a fraction of the canvas


def font_dir() -> str:
    import matplotlib
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=None)
def _charmap(face: str) -> frozenset:
    from matplotlib import ft2font
    path = os.path.join(font_dir(), face)
    if not os.path.isfile(path):
        return frozenset()
    return frozenset(ft2font.FT2Font(path).get_charmap())


@functools.lru_cache(maxsize=None)
def _font(face: str):
    from PIL import ImageFont
    return ImageFont.truetype(os.path.join(font_dir(), face), int(_GLYPH_FRACTION * BASE))


@functools.lru_cache(maxsize=None)
def render_base(codepoint: int, face: str) -> np.ndarray | None:
    """The character drawn once: float32 [BASE, BASE] in [0, 1], ink box centred.

    A glyph larger than 90% of the canvas is shrunk to fit. None if the face
    draws nothing for it.
    """
    from PIL import Image
    mask = _font(face).getmask(chr(codepoint))
    w, h = mask.size
    if w == 0 or h == 0:
        return None
    a = np.asarray(mask, dtype=np.uint8).reshape(h, w)
    limit = 0.9 * BASE
    if max(w, h) > limit:
        f = limit / max(w, h)
        a = np.asarray(Image.fromarray(a).resize((max(1, round(w * f)), max(1, round(h * f))),
                                                 Image.BILINEAR))
        h, w = a.shape
    canvas = np.zeros((BASE, BASE), np.float32)
    y0, x0 = (BASE - h) // 2, (BASE - w) // 2
    canvas[y0:y0 + h, x0:x0 + w] = a.astype(np.float32) / 255.0
    return canvas


def _candidates() -> list[int]:
    cmap = _charmap(FACES[0])
    first = [ord(c) for c in _FIRST]
    rest = [cp for cp in sorted(cmap)
            if cp not in first and not (0xE000 <= cp <= 0xF8FF)
            and unicodedata.category(chr(cp)) in _CATEGORIES
            and not unicodedata.decomposition(chr(cp))]
    return first + rest


def _signature(img: np.ndarray) -> np.ndarray:
    """16 x 16 area average, unit length (for the look-alike test)."""
    f = BASE // 16
    v = img.reshape(16, f, 16, f).mean(axis=(1, 3)).ravel()
    return v / np.linalg.norm(v)


def _compute_classes() -> tuple[int, ...]:
    """The greedy selection of the module docstring (single-threaded: the similarity is an
    einsum, not a multithreaded BLAS product, which spins on a busy machine)."""
    cands = _candidates()
    kept: list[int] = []
    sigs = np.zeros((len(cands), 256), np.float64)
    for cp in cands:
        img = render_base(cp, FACES[0])
        if img is None or img.mean() < MIN_INK:
            continue
        s = _signature(img)
        if kept and float(np.einsum("ij,j->i", sigs[:len(kept)], s).max()) >= SIMILARITY_LIMIT:
            continue
        sigs[len(kept)] = s
        kept.append(cp)
    return tuple(kept)


def class_list_key() -> str:
    """Everything the class list depends on, hashed: the font file, the renderers' versions,
    the Unicode database and the selection rules."""
    import PIL
    from PIL import features

    h = hashlib.sha256()
    with open(os.path.join(font_dir(), FACES[0]), "rb") as fh:
        h.update(fh.read())
    h.update(repr((CLASS_LIST_VERSION, BASE, _GLYPH_FRACTION, SIMILARITY_LIMIT, MIN_INK, _FIRST,
                   sorted(_CATEGORIES), unicodedata.unidata_version, PIL.__version__,
                   features.version("freetype2"))).encode())
    return h.hexdigest()[:20]


def cache_dir() -> str:
    """Where computed class lists are kept (see the module docstring)."""
    root = os.environ.get("CALIBRATE_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "calibrate")
    return root


def _read_list(path: str, key: str) -> tuple[int, ...] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        entry = data[key] if key in data else None
        if entry is None:
            return None
        cps = tuple(int(c) for c in entry["classes"])
        return cps if len(cps) >= 2 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: compute it again


def class_list_record(classes, key: str) -> dict:
    import PIL
    from PIL import features

    return {key: {"classes": list(classes), "count": len(classes), "font": FACES[0],
                  "pillow": PIL.__version__, "freetype": features.version("freetype2"),
                  "unicode": unicodedata.unidata_version}}


@functools.lru_cache(maxsize=None)
def _all_classes() -> tuple[int, ...]:
    key = class_list_key()
    found = _read_list(_SHIPPED, key)
    if found is not None:
        return found
    cached = os.path.join(cache_dir(), f"glyph-classes-{key}.json")
    found = _read_list(cached, key)
    if found is not None:
        return found
    from ..utils.progress import slow_step

    with slow_step("glyphs: choosing the classes for these fonts (once, then cached)"):
        kept = _compute_classes()
    try:
        from ..utils.atomic import write_atomic

        write_atomic(cached, json.dumps(class_list_record(kept, key), allow_nan=False) + "\n")
    except Exception:  # an unwritable cache costs the computation next time, nothing more
        pass
    return kept


def class_codepoints(count: int | None = None) -> tuple[int, ...]:
    """The first ``count`` classes (code points), or all of them when None.

    The selection is greedy in a fixed candidate order, so the first K classes
    do not depend on how many are asked for.
    """
    every = _all_classes()
    return every if count is None else every[:count]


def max_classes() -> int:
    """How many classes the embedded dataset offers on this installation."""
    return len(class_codepoints(None))


def class_name(codepoint: int) -> str:
    ch = chr(codepoint)
    return f"U+{codepoint:04X} {ch} {unicodedata.name(ch, '').lower()}".rstrip()


def _styles(codepoints) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base images of every (class, face) pair, and for each class its slice."""
    images, start, count = [], [], []
    for cp in codepoints:
        start.append(len(images))
        for face in FACES:
            if cp in _charmap(face):
                img = render_base(cp, face)
                if img is not None:
                    images.append(img)
        count.append(len(images) - start[-1])
    return np.stack(images), np.array(start, np.int64), np.array(count, np.int64)


def _prefilter(bases: np.ndarray, size: int) -> np.ndarray:
    """Area-resample the [M, BASE, BASE] base images to [M, size, size] (anti-aliasing)."""
    from PIL import Image
    if size == BASE:
        return bases.astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(b, mode="F").resize((size, size), Image.BOX),
                                np.float32) for b in bases])


def _warp(table: np.ndarray, res: int, style: np.ndarray, inv: np.ndarray, shift: np.ndarray,
          size: int) -> np.ndarray:
    """Bilinear samples of the prefiltered styles at an affine grid: [N, size, size].

    ``table`` holds the M styles of res x res pixels flattened, plus one 0 at the
    end (read for points outside the canvas). Output point q (normalised to
    [-1, 1]) comes from base point p = inv (q - shift).
    """
    g = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    qy, qx = np.meshgrid(g, g, indexing="ij")
    qx = qx[None] - shift[:, 0, None, None]
    qy = qy[None] - shift[:, 1, None, None]
    half = np.float32(res / 2)
    fx = (inv[:, 0, 0, None, None] * qx + inv[:, 0, 1, None, None] * qy + 1) * half - 0.5
    fy = (inv[:, 1, 0, None, None] * qx + inv[:, 1, 1, None, None] * qy + 1) * half - 0.5
    x0f = np.floor(fx)
    y0f = np.floor(fy)
    wx = fx - x0f
    wy = fy - y0f
    x0 = x0f.astype(np.int32)
    y0 = y0f.astype(np.int32)
    base = (style.astype(np.int64) * (res * res))[:, None, None]
    zero = table.size - 1

    def tap(yy, xx):
        ok = (xx >= 0) & (xx < res) & (yy >= 0) & (yy < res)
        return table[np.where(ok, base + yy * res + xx, zero)]

    return ((1 - wy) * ((1 - wx) * tap(y0, x0) + wx * tap(y0, x0 + 1))
            + wy * ((1 - wx) * tap(y0 + 1, x0) + wx * tap(y0 + 1, x0 + 1)))


def _draw(labels: np.ndarray, styles, size: int, rng: np.random.Generator,
          chunk: int = 2048) -> np.ndarray:
    """Images (uint8 [N, size, size, 1]) of the classes in ``labels``."""
    images_base, start, count = styles
    table = np.append(_prefilter(images_base, size).ravel(), np.float32(0))
    n = labels.size
    style = start[labels] + np.floor(rng.random(n) * count[labels]).astype(np.int64)
    theta = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, n))
    scale = rng.uniform(*SCALE, n)
    aspect = np.exp(rng.uniform(-ASPECT_LOG, ASPECT_LOG, n))
    shear = rng.uniform(-SHEAR, SHEAR, n)
    shift = rng.uniform(-SHIFT, SHIFT, (n, 2)) * 2          # of the [-1, 1] extent
    back = rng.uniform(*BACKGROUND, n)
    ink = rng.uniform(*INK, n)
    # forward map: q = R(theta) [[1, shear], [0, 1]] diag(scale*aspect, scale/aspect) p + shift
    c, s = np.cos(theta), np.sin(theta)
    sx, sy = scale * aspect, scale / aspect
    fwd = np.empty((n, 2, 2))
    fwd[:, 0, 0] = c * sx
    fwd[:, 0, 1] = (c * shear - s) * sy
    fwd[:, 1, 0] = s * sx
    fwd[:, 1, 1] = (s * shear + c) * sy
    inv = np.linalg.inv(fwd).astype(np.float32)
    out = np.empty((n, size, size, 1), np.uint8)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        glyph = _warp(table, size, style[lo:hi], inv[lo:hi], shift[lo:hi].astype(np.float32), size)
        img = back[lo:hi, None, None] + (ink[lo:hi] - back[lo:hi])[:, None, None] * glyph
        img = img + rng.normal(0.0, PIXEL_NOISE, img.shape)
        out[lo:hi, :, :, 0] = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return out


def generate(classes: int, train_per_class: int, test_per_class: int, image_size: int = 24,
             seed: int = 0):
    """``(train_images, train_labels, test_images, test_labels, class_names)``.

    Images are uint8 [N, image_size, image_size, 1], labels int64, in class order.
    """
    limit = max_classes()
    if not 2 <= classes <= limit:
        raise UsageError(f"glyphs: --classes must be in [2, {limit}], got {classes}")
    if image_size < 8 or image_size > 128:
        raise UsageError(f"glyphs: --image-size must be in [8, 128], got {image_size}")
    cps = class_codepoints(classes)
    styles = _styles(cps)
    out = []
    for split, per_class in ((0, train_per_class), (1, test_per_class)):
        rng = np.random.default_rng([int(seed), split])
        labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
        out += [_draw(labels, styles, image_size, rng), labels]
    return out[0], out[1], out[2], out[3], [class_name(cp) for cp in cps]


if __name__ == "__main__":  # python -m calibrate_cli.train.glyphs: rewrite the shipped list
    _key = class_list_key()
    _kept = _compute_classes()
    with open(_SHIPPED, "w", encoding="utf-8") as _fh:
        _fh.write(json.dumps(class_list_record(_kept, _key), allow_nan=False) + "\n")
    print(f"{_SHIPPED}: {len(_kept)} classes, key {_key}")
