"""Logit distributions p_z of a freshly initialised network.

The other K - 1 logits z_j (j != k) are independent draws from p_z; the
correct-class logit z_k is the variable of <δ_k>(z_k). Softmax is invariant
under a common shift, so every distribution works internally in the frame of
its own mean (``centered`` values) and ``mean`` says where that frame sits.

Two kinds:

* :class:`Gaussian` -- N(mean, std²), the paper's fit (Figure 5).
* :class:`Empirical` -- the measured values themselves (a ``.npy``, ``.npz`` or
  ``.pt`` file of logits, shape [N, K] or flat). Rows of an [N, K] array are
  centred on their own mean first (softmax ignores a per-input offset); a flat
  array is centred on its global mean.

Each gives a quadrature rule (nodes, weights) with E[f(z - mean)] ≈ Σ w_i f(x_i),
used by the exact engine, a sampler, used by Monte Carlo, and the partial exponential moments
ln M_n(U) = ln E[e^{n x} 1(x < U)] of exactly what the sampler draws (x = z - mean), used by the
reduced Monte Carlo of RCE's softmax clamp (losses/rce_series.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError, option

#: Default logit std: see README "Choosing the logit distribution" for the measurement.
DEFAULT_LOGIT_STD = 0.5
DEFAULT_ATOMS = 2048
#: The widest logit distribution accepted (Gaussian --logit-std, or the std of measured
#: logits): networks at initialisation measure 0.1 to 0.6 (README), so 10 leaves a wide margin.
#: The engine is checked against Monte Carlo up to it.
MAX_STD = 10.0
#: Centred measured logits beyond this are rejected (e^z would overflow in the averages).
MAX_ABS = 300.0
#: The largest logit bias |ε| accepted as a number (``train --logit-bias``, ``cal.nn``'s
#: ``logit_bias``): computed biases stay below 30 up to K = 10^9, and beyond 100 the biased
#: logit alone decides every float32 softmax.
MAX_LOGIT_BIAS = 100.0


class LogitDistribution:
    """Base class: ``mean``, ``std``, ``quadrature()``, ``sample()``, ``describe()``."""

    mean: float
    std: float

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> dict:
        raise NotImplementedError  # pragma: no cover

    def exp_moment_exact(self) -> float:
        """E[exp(z - mean)] of the distribution itself (control variates need it exact)."""
        return self.exp_moment()

    def log_exp_moment_exact(self) -> float:
        """ln E[exp(z - mean)], finite where the moment itself would overflow."""
        return math.log(self.exp_moment_exact())

    def exp_moment(self) -> float:
        """m = E[exp(z - mean)], the mean-field scale of Σ_j e^{z_j}."""
        x, w = self.quadrature()
        return float(np.sum(w * np.exp(x)))

    def log_partial_moment(self, U: np.ndarray, n: int) -> np.ndarray | None:
        """ln M_n(U) = ln E[e^{n x} 1(x < U)] over the sampling distribution of the centred
        logits x (elementwise in U, -inf where the set is empty), or None where the
        distribution has no such formula (then its users fall back to whole vectors)."""
        return None


@dataclass(frozen=True)
class Gaussian(LogitDistribution):
    """N(mean, std²). Quadrature: the trapezoidal rule in the standard variable.

    Nodes ζ_i = i·h on [-L, L] with L = 9 + std (the weight e^{std·ζ - ζ²/2}
    of E[e^z] peaks at ζ = std; e^{-81/2} ≈ 2.6e-18 beyond) and
    h = min(0.25, 0.1/std). The integrands exp(-t e^{std ζ}) stay bounded in a
    strip of half-width π/(4·std), so the trapezoidal error is of order
    exp(-π²/(2·std·h)) ≈ e^{-49} (and e^{-2π²/h²} for the Gaussian itself).
    """

    mean: float = 0.0
    std: float = DEFAULT_LOGIT_STD

    def __post_init__(self):
        check_gaussian(self.mean, self.std)

    def quadrature(self):
        return _gauss_rule(self.std)

    def sample(self, rng, shape):
        return rng.standard_normal(shape) * self.std

    def describe(self):
        return {"kind": "gaussian", "mean": self.mean, "std": self.std}

    def exp_moment_exact(self) -> float:
        return math.exp(0.5 * self.std ** 2)

    def log_exp_moment_exact(self) -> float:
        return 0.5 * self.std ** 2

    def log_partial_moment(self, U, n):
        """Closed form: E[e^{nx} 1(x < U)] = e^{n²s²/2} Φ((U - n s²)/s), x ~ N(0, s²), with
        ln Φ by ``log_ndtr`` (accurate far in either tail)."""
        from scipy.special import log_ndtr

        s = self.std
        return 0.5 * (n * s) ** 2 + log_ndtr((np.asarray(U, dtype=float) - n * s * s) / s)


_RULES: dict[float, tuple[np.ndarray, np.ndarray]] = {}


def _gauss_rule(std: float):
    if std not in _RULES:
        h = min(0.25, 0.1 / std)
        L = 9.0 + std
        zeta = np.arange(-math.ceil(L / h), math.ceil(L / h) + 1) * h
        w = np.exp(-0.5 * zeta * zeta)
        w /= w.sum()
        _RULES[std] = (zeta * std, w)
    return _RULES[std]


def check_gaussian(mean: float, std: float) -> None:
    if not (isinstance(mean, (int, float)) and math.isfinite(mean)) or abs(mean) > 1e3:
        raise UsageError(f"{option('--logit-mean')} must be a finite number in [-1000, 1000], "
                         f"got {mean!r}")
    if not (isinstance(std, (int, float)) and math.isfinite(std)) or not 0 < std <= MAX_STD:
        raise UsageError(f"{option('--logit-std')} must be in (0, {MAX_STD:g}], got {std!r}")


@dataclass(frozen=True, eq=False)
class Empirical(LogitDistribution):
    """The empirical distribution of measured logits (already centred).

    ``values``: centred logits (flat). Monte Carlo draws from all of them. The
    exact engine uses ``atoms`` equal-mass atoms (the means of consecutive
    groups of the sorted values; every value when there are fewer, or when
    ``atoms = 0``), which keeps the mean exact and the cost independent of N.
    """

    values: np.ndarray
    mean: float = 0.0
    source: str = ""
    centering: str = "rows"
    atoms: int = DEFAULT_ATOMS
    _rule: list = field(default_factory=list, repr=False)
    _partial: dict = field(default_factory=dict, repr=False)

    @property
    def std(self) -> float:  # type: ignore[override]
        return float(np.std(self.values))

    def quadrature(self):
        if not self._rule:
            v = np.sort(self.values)
            n = v.size
            if self.atoms and n > self.atoms:
                edges = np.linspace(0, n, self.atoms + 1).round().astype(int)
                sums = np.add.reduceat(v, edges[:-1])
                counts = np.diff(edges)
                x, w = sums / counts, counts / n
            else:
                x, w = v, np.full(n, 1.0 / n)
            self._rule.append((x, w))
        return self._rule[0]

    def sample(self, rng, shape):
        return rng.choice(self.values, size=shape, replace=True)

    def log_partial_moment(self, U, n):
        """ln((1/N) Σ_{v_i < U} e^{n v_i}) over all N values (what :meth:`sample` draws
        uniformly). Two levels, so that memory stays N/PREFIX_BLOCK numbers per n: the log of
        the prefix sums at every PREFIX_BLOCK-th sorted value, once per n, plus per query the
        at most PREFIX_BLOCK - 1 values between that point and U (a query costs O(PREFIX_BLOCK))."""
        U = np.asarray(U, dtype=float)
        v, prefix = self._prefix(int(n))
        flat = U.ravel()
        out = np.empty(flat.shape)
        B = PREFIX_BLOCK
        for s in range(0, flat.size, 1 << 15):  # bounded memory for many queries
            q = flat[s:s + (1 << 15)]
            i = np.searchsorted(v, q, side="left")  # values strictly below U
            b = i // B
            idx = b[:, None] * B + np.arange(B)
            live = idx < i[:, None]
            a = np.where(live, n * v[np.minimum(idx, v.size - 1)], -np.inf)
            top = np.maximum(prefix[b], a.max(axis=1))  # the largest term: no overflow below
            safe = np.where(np.isfinite(top), top, 0.0)
            with np.errstate(divide="ignore"):
                out[s:s + q.size] = safe + np.log(np.exp(prefix[b] - safe)
                                                  + np.exp(a - safe[:, None]).sum(axis=1))
        return (out - math.log(v.size)).reshape(U.shape)

    def _prefix(self, n: int):
        """(sorted values, ln Σ_{j < b·PREFIX_BLOCK} e^{n v_j} for b = 0 … ⌈N/B⌉), cached per n."""
        cache = self._partial
        if n not in cache:
            v = cache.setdefault("sorted", np.sort(self.values))
            B = PREFIX_BLOCK
            nb = v.size // B  # complete blocks (a query's block start never passes the end)
            a = n * v[:nb * B].reshape(nb, B)
            top = a[:, -1]  # sorted: each block's largest
            block = top + np.log(np.exp(a - top[:, None]).sum(axis=1))
            cache[n] = (v, np.concatenate([[-np.inf], log_cumsum_exp(block)]))
        return cache[n]

    def exp_moment_exact(self) -> float:
        return math.exp(self.log_exp_moment_exact())

    def log_exp_moment_exact(self) -> float:
        v = self.values
        top = float(np.max(v))
        return top + math.log(float(np.mean(np.exp(v - top))))

    def describe(self):
        v = self.values
        return {
            "kind": "empirical", "source": self.source, "n": int(v.size),
            "centering": self.centering, "mean": self.mean, "std": self.std,
            "atoms": int(min(self.atoms or v.size, v.size)),
        }


#: Sorted values per stored prefix sum of :meth:`Empirical.log_partial_moment`.
PREFIX_BLOCK = 64


def log_cumsum_exp(a: np.ndarray) -> np.ndarray:
    """ln Σ_{j ≤ i} e^{a_j} for every i, by plain cumulative sums (rounding ~ √i·ε relative)
    over segments within which the running maximum grows by at most 600 (no overflow, and what
    underflows is below e^{-145} of the sum), joined in log space."""
    out = np.empty(a.shape)
    run = np.maximum.accumulate(a)
    carry = -np.inf
    start = 0
    while start < a.size:
        end = int(np.searchsorted(run, run[start] + 600.0, side="right"))
        m = run[end - 1]
        with np.errstate(divide="ignore"):
            part = m + np.log(np.cumsum(np.exp(a[start:end] - m)))
        out[start:end] = np.logaddexp(carry, part)
        carry = out[end - 1]
        start = end
    return out


def centre_rows(z: np.ndarray) -> np.ndarray:
    """Logits [N, K] minus each row's mean, flattened: softmax ignores a common shift of a row,
    so these values are the distribution the engine averages over (and their std is what
    ``--logit-std`` means)."""
    z = np.asarray(z, dtype=float)
    return (z - z.mean(axis=1, keepdims=True)).ravel()


def from_array(arr, *, source: str = "array", atoms: int = DEFAULT_ATOMS) -> Empirical:
    """An :class:`Empirical` from logits of shape [N, K] (rows centred) or flat."""
    if np.iscomplexobj(arr):
        raise UsageError(f"{source}: logits are complex numbers; give real logits")
    a = np.asarray(arr, dtype=float)
    if a.ndim == 0 or a.size < 2:
        raise UsageError(f"{source}: need at least 2 logits, got shape {a.shape}")
    if a.ndim > 2:
        raise UsageError(f"{source}: logits must have shape [N, K] or be flat, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UsageError(f"{source}: logits contain NaN or infinite values")
    if a.ndim == 2 and a.shape[1] >= 2:
        mean = float(a.mean())
        centred = centre_rows(a)
        centering = "rows"
    else:
        a = a.ravel()
        mean = float(a.mean())
        centred = a - mean
        centering = "global"
    std = float(np.std(centred))
    if not std > 0:
        raise UsageError(f"{source}: logits have zero spread")
    if std > MAX_STD:
        raise UsageError(
            f"{source}: the logits have std {std:.4g} (centred per {'row' if centering == 'rows' else 'array'}), "
            f"beyond the supported {MAX_STD:g}; networks at initialisation show 0.1 to 0.6. "
            "Were they measured after training, or scaled?")
    top = float(np.max(np.abs(centred)))
    if top > MAX_ABS:
        raise UsageError(
            f"{source}: a logit lies {top:.4g} from its {'row' if centering == 'rows' else 'array'} mean, "
            f"beyond the supported {MAX_ABS:g}")
    if atoms < 0:
        raise UsageError(f"{option('--atoms')} must be an integer >= 0, got {atoms!r}")
    return Empirical(centred, mean=mean, source=source, centering=centering, atoms=atoms)


def load_logits(path: str, *, atoms: int = DEFAULT_ATOMS) -> Empirical:
    """Read measured logits from ``.npy``, ``.npz`` (array ``logits``) or ``.pt``."""
    return from_array(read_logits_array(path), source=path, atoms=atoms)


def read_logits_array(path: str) -> np.ndarray:
    """The array of a logits file as stored ([N, K] or flat); UsageError naming the problem."""
    if not os.path.exists(path):
        raise UsageError(f"logits file '{path}' does not exist (expected .npy, .npz or .pt)")
    _check_regular_file(path)
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            _check_magic(path, _NPY_MAGIC, "a NumPy .npy file")
            arr = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            _check_magic(path, _ZIP_MAGIC, "a NumPy .npz (zip) file")
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.keys())
                if "logits" not in keys:
                    raise UsageError(
                        f"'{path}' has no array named 'logits' (it holds {', '.join(keys) or 'none'}); "
                        "save it with numpy.savez(path, logits=array)")
                arr = f["logits"]
        elif ext in (".pt", ".pth"):
            import torch  # only for this format

            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj.get("logits", obj)
            if not hasattr(obj, "numpy"):
                raise UsageError(f"'{path}' does not hold a tensor (or a dict with 'logits')")
            if obj.is_complex():
                raise UsageError(f"'{path}': logits are complex numbers (dtype {obj.dtype}); "
                                 "give real logits")
            arr = obj.detach().double().numpy()
        else:
            raise UsageError(f"logits file '{path}': unknown extension '{ext}' (use .npy, .npz or .pt)")
    except UsageError:
        raise
    except Exception as exc:  # unreadable / corrupt
        text = str(exc)
        if "Object arrays" in text:  # a .npy header that says dtype object: real pickles
            text = ("it holds pickled (object) data, which is never loaded (loading it could "
                    "run code); save a numeric array")
        elif "pickled" in text:  # numpy's guess for any content without a .npy header
            text = "its array is not stored in NumPy's .npy format (corrupt or another format)"
        else:
            text = f"{type(exc).__name__}: {text}"
        raise UsageError(f"cannot read logits file '{path}': {text}") from None
    if not np.issubdtype(np.asarray(arr).dtype, np.number):
        raise UsageError(f"'{path}': logits must be numeric, got dtype {np.asarray(arr).dtype}")
    if np.iscomplexobj(arr):
        raise UsageError(f"'{path}': logits are complex numbers (dtype {np.asarray(arr).dtype}); "
                         "give real logits")
    return np.asarray(arr)


_NPY_MAGIC = (b"\x93NUMPY",)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an empty one: the second)


def _check_regular_file(path: str) -> None:
    """Refuse what is not a regular file before opening it: reading a named pipe (FIFO) or a
    device would wait for a writer forever, a folder cannot be read at all."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UsageError(f"cannot read logits file '{path}': {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return
    kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) else "not a regular file")
    raise UsageError(f"logits file '{path}' is {kind}; give a regular .npy, .npz or .pt file "
                     "(save the logits to a file first)")


def _check_magic(path: str, magics: tuple[bytes, ...], what: str) -> None:
    """UsageError unless the file starts like ``what`` (numpy would otherwise take any
    unknown content for a pickle and say so)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not any(head.startswith(m) for m in magics):
        found = "it is empty" if not head else "it does not start with the format's header"
        raise UsageError(f"cannot read logits file '{path}': not {what} ({found}; "
                         "corrupt, truncated, or another format with this extension)")
