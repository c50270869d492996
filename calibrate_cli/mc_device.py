r"""The Monte Carlo draws and their reductions with torch, on a GPU (``--device cuda``) or on the
CPU (``--device torch-cpu``, the same code path, for tests and machines without NumPy speed).

Only imported when a device is asked for: the calibration commands import no torch otherwise.

What runs on the device: drawing the K - 1 other logits of every sample (torch's generator,
seeded per (seed, K, chunk), so results differ from the NumPy draws within the Monte Carlo
error and are reproducible on the same device type), the per-K reductions (ln Σ e^z and Σ z for
NCE and the control variates, NFL's power sums, biTemp's moments, ln S′ of RCE's clamp) and,
for losses or parameters without a reduction, δ_k of whole logit vectors by autograd of the
loss's torch implementation.
The reduced statistics come back to the host, where the per-z_k evaluation is cheap.
All in float64.
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError

DEVICES = "cpu (NumPy, default), cuda, cuda:N, torch-cpu, auto"
CHUNK_ELEMS_DEVICE = 1 << 24  # logits per chunk on a device (128 MiB of float64)


def check_device_name(text: str | None) -> str:
    """The normalised ``--device`` name, or a UsageError (imports nothing)."""
    name = (text or "cpu").strip().lower()
    if name not in ("cpu", "numpy", "auto", "torch-cpu", "cuda") and not (
            name.startswith("cuda:") and name[5:].isdigit()):
        raise UsageError(f"--device must be one of {DEVICES}, got '{text}'")
    return name


def parse_device(text: str | None) -> str | None:
    """The torch device string for ``--device``, or None for the NumPy path (``cpu``).

    ``auto``: CUDA when torch is installed and sees a GPU, else NumPy.
    """
    name = check_device_name(text)
    if name in ("cpu", "numpy"):
        return None
    try:
        import torch
    except ImportError:
        if name == "auto":
            return None
        raise UsageError(f"--device {name} needs torch (pip install torch)") from None
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else None
    if name == "torch-cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no CUDA device (use --device cpu)")
    if ":" in name and int(name[5:]) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return name


class TorchBackend:
    """Draws, reductions and whole-vector δ_k on one torch device."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self._values = None

    def rows_per_chunk(self, n: int) -> int:
        return max(1, CHUNK_ELEMS_DEVICE // max(n, 1))

    def sample(self, dist, key: tuple, shape: tuple[int, int]):
        """Draws of ``dist`` (centred) of ``shape``, seeded by ``key`` = (seed, K, chunk)."""
        torch = self.torch
        seed = int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        from .logits import Empirical, Gaussian

        if isinstance(dist, Gaussian):
            z = torch.randn(shape, generator=gen, device=self.device, dtype=torch.float64)
            return z * dist.std
        if isinstance(dist, Empirical):
            if self._values is None:
                self._values = torch.as_tensor(dist.values, dtype=torch.float64, device=self.device)
            idx = torch.randint(0, self._values.numel(), shape, generator=gen, device=self.device)
            return self._values[idx]
        # any other distribution: draw on the host, compute on the device
        rng = np.random.default_rng(list(key))
        return torch.as_tensor(dist.sample(rng, shape), dtype=torch.float64, device=self.device)

    def reduce(self, reducer, draws):
        """``reducer`` applied to device draws: the torch version where there is one."""
        from .losses.registry import lse_and_sum

        if reducer is lse_and_sum:
            return lse_and_sum_torch(draws)
        if getattr(reducer, "accepts_torch", False):
            return reducer(draws)
        return reducer(draws.cpu().numpy())

    def full_delta(self, term, zk: float, draws) -> np.ndarray:
        """δ_k of whole vectors (correct class in column 0) by autograd of the torch loss."""
        torch = self.torch
        logits = torch.empty((draws.shape[0], draws.shape[1] + 1), dtype=torch.float64,
                             device=self.device)
        logits[:, 0] = zk
        logits[:, 1:] = draws
        logits.requires_grad_(True)
        target = torch.zeros(draws.shape[0], dtype=torch.long, device=self.device)
        loss = term.loss.torch_loss(term.params)(logits, target)
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        return grad[:, 0].detach().cpu().numpy()


# ---------------------------------------------------------------- reducers
def lse_and_sum_torch(z) -> np.ndarray:
    import torch

    return torch.stack([torch.logsumexp(z, dim=1), z.sum(dim=1)], dim=1).cpu().numpy()


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy()


def nfl_reduce_torch(z):
    """:class:`~calibrate_cli.losses.nfl_series.NFLReduce` on a torch tensor (same statistics)."""
    import torch

    from .losses.nfl_series import TAU, NFLDraws, powers_needed

    m, n = z.shape
    lse = torch.logsumexp(z, dim=1)
    logpi = z - lse[:, None]
    pi = torch.exp(logpi)
    mask = pi > TAU
    counts = mask.sum(dim=1)
    width = int(counts.max()) if m else 0
    if width:
        top = torch.topk(torch.where(mask, logpi, torch.full_like(logpi, -torch.inf)), width, dim=1)
        explicit = top.values
        pi = torch.where(mask, torch.zeros_like(pi), pi)
        b0 = (logpi.sum(dim=1) - torch.where(torch.isfinite(explicit), explicit,
                                             torch.zeros_like(explicit)).sum(dim=1))
    else:
        explicit = torch.empty((m, 0), dtype=z.dtype, device=z.device)
        b0 = logpi.sum(dim=1)
    r = pi.max(dim=1).values
    P = powers_needed(float(r.max()))
    a = torch.empty((m, P), dtype=z.dtype, device=z.device)
    b = torch.empty((m, P), dtype=z.dtype, device=z.device)
    a[:, 0] = n - counts
    b[:, 0] = b0
    power = pi
    for k in range(1, P):
        a[:, k] = power.sum(dim=1)
        b[:, k] = (power * logpi).sum(dim=1)
        if k + 1 < P:
            power = power * pi
    return NFLDraws(_np(lse), _np(z.sum(dim=1)), _np(explicit), _np(r), _np(a), _np(b))


def bitemp_reduce_torch(z, t2_min: float, t1_min: float):
    """:class:`~calibrate_cli.losses.bitemp_series.BiTempReduce` on a torch tensor."""
    import math

    import torch
    from scipy.special import ndtri

    from .losses.bitemp_series import (ALL_EXPLICIT, EXPECTED_EXPLICIT, RHO_FREE, WIDTH_CAP,
                                       BiTempDraws, moments_needed)

    m, n = z.shape
    mean = z.mean(dim=1)
    d = z - mean[:, None]
    dmax = d.max(dim=1).values
    if n <= ALL_EXPLICIT:
        return BiTempDraws(_np(mean), _np(d), _np(dmax), np.zeros(m), np.zeros((m, 1)), n)
    absd = d.abs()
    kappa = torch.clamp(torch.sqrt((d * d).mean(dim=1)) * float(ndtri(1 - EXPECTED_EXPLICIT / (2 * n))),
                        min=RHO_FREE * math.e * math.log(n))
    mask = absd > kappa[:, None]
    width = min(int(mask.sum(dim=1).max()), WIDTH_CAP)
    if width:
        top = torch.topk(torch.where(mask, absd, torch.full_like(absd, -1.0)), width, dim=1)
        taken = top.values >= 0
        explicit = torch.where(taken, torch.gather(d, 1, top.indices),
                               torch.full_like(top.values, -torch.inf))
        live = torch.ones_like(d, dtype=torch.bool)
        live.scatter_(1, top.indices, ~taken)
    else:
        explicit = torch.empty((m, 0), dtype=z.dtype, device=z.device)
        live = torch.ones_like(d, dtype=torch.bool)
    h = torch.where(live, absd, torch.zeros_like(absd)).max(dim=1).values
    P = moments_needed(float(h.max()), n, t2_min, t1_min)
    x = torch.where(live, d / torch.where(h > 0, h, torch.ones_like(h))[:, None],
                    torch.zeros_like(d))
    mom = torch.empty((m, P), dtype=z.dtype, device=z.device)
    mom[:, 0] = live.sum(dim=1)
    power = x
    for k in range(1, P):
        mom[:, k] = power.sum(dim=1)
        if k + 1 < P:
            power = power * x
    return BiTempDraws(_np(mean), _np(explicit), _np(dmax), _np(h), _np(mom), n)
