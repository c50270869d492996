"""Where a training run executes: its process among several, its device, its precision, its seeds.

Several processes (``torchrun``; ``WORLD_SIZE > 1``): DistributedDataParallel,
backend nccl on CUDA and gloo otherwise. Every process draws the same
permutation and takes its contiguous share (``tensor_split``) of each *global*
batch, so the global batch size is ``batch_size`` whatever the number of
processes. A process's loss is ``Σ_shard L_ε · W / n_global`` (W processes,
n_global samples in the global batch); DDP averages gradients over the W
processes, so the gradient is that of the mean over the global batch, exactly
as in one process. Augmentation draws are seeded with seed + rank. Only rank 0
prints and writes files. Models with batch norm see per-process batch
statistics unless ``sync_bn``.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError


@dataclass
class Dist:
    """Where this process stands among the processes of a run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Dist:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method="env://")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available, then MPS, then CPU. An unavailable choice is a UsageError."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available (use --device auto or cpu)")
        # one process: the current device (a grid's worker may have been given another GPU)
        index = local_rank % torch.cuda.device_count() if local_rank else torch.cuda.current_device()
        return torch.device("cuda", index)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError("--device mps: MPS is not available (use --device auto or cpu)")
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA devices that support it, fp32 elsewhere."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UsageError(f"--precision fp16 needs a CUDA device (this run uses {device.type}); "
                         "use --precision bf16, fp32 or auto")
    if name == "bf16" and device.type not in ("cuda", "cpu"):
        raise UsageError(f"--precision bf16 runs on CUDA or CPU, not {device.type}; "
                         "use --precision fp32 or auto")
    return name


def autocast_for(device: torch.device, precision: str):
    """The context the forward passes run in: autocast to bf16/fp16, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
