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

from ..errors import UsageError

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
        from ..losses.registry import lse_and_sum

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


# the torch versions of NFL's and biTemp's reducers live beside their NumPy versions
from ..losses.bitemp_series import bitemp_reduce_torch  # noqa: E402,F401
from ..losses.nfl_series import nfl_reduce_torch  # noqa: E402,F401
