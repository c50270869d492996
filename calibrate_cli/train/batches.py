"""Batches for the training loop: the epoch order, global batches split across processes,
batched on-device augmentation, and the in-memory and file-backed splits.

In-memory datasets live on the device as one normalised float tensor [N, C, H, W]; an epoch
draws a permutation from ``torch.Generator`` seeded with (seed, epoch) and slices it into
global batches of ``batch_size``. The last, smaller batch is kept. File-backed datasets use a
DataLoader with workers over the same index order. Under several processes each takes its
contiguous share of every global batch (:mod:`calibrate_cli.train.runtime`).

Every random draw of an epoch is seeded from (seed, epoch, rank), so a resumed run draws what
an uninterrupted one would.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CalibrateError
from .config import TrainConfig
from .runtime import Dist

#: Augmentation of --augment auto, per dataset (the literature's CIFAR recipes); none otherwise.
_AUG_AUTO = {"cifar10": "crop-flip", "cifar100": "crop-flip-rotate"}


def _augment_kind(cfg: TrainConfig, dataset: str) -> str:
    if cfg.augment != "auto":
        return cfg.augment
    return _AUG_AUTO.get(dataset, "none")


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Batched augmentation of normalised images [N, C, H, W] on their device.

    ``flip``: horizontal flip with probability ½. ``crop-flip``: zero-pad 4 pixels
    (zero of the normalised scale) and crop back at a uniform offset, then flip.
    ``crop-flip-rotate``: also rotate by a uniform angle in [-20°, 20°] (bilinear).
    """
    if kind == "none":
        return x
    n, c, h, w = x.shape
    dev = x.device
    if kind in ("crop-flip", "crop-flip-rotate"):
        pad = 4
        xp = F.pad(x, (pad, pad, pad, pad))
        oi = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
        oj = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
        rows = (oi[:, None] + torch.arange(h, device=dev))[:, :, None]      # [N, H, 1]
        cols = (oj[:, None] + torch.arange(w, device=dev))[:, None, :]      # [N, 1, W]
        idx = torch.arange(n, device=dev)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)
    if kind == "crop-flip-rotate":
        ang = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (20 * math.pi / 180)
        cos, sin = torch.cos(ang), torch.sin(ang)
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``: a CPU generator seeded with (seed, epoch)."""
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + int(epoch) + 1)
    return torch.randperm(n, generator=g)


def global_batches(n: int, batch: int, seed: int, epoch: int) -> list[torch.Tensor]:
    return list(torch.split(epoch_order(n, seed, epoch), batch))


class MemoryData:
    """An in-memory split as one normalised float tensor on the device."""

    def __init__(self, images: np.ndarray, noisy: np.ndarray, clean: np.ndarray,
                 mean, std, device: torch.device):
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        m = torch.tensor(mean, dtype=torch.float32, device=device)[None, :, None, None]
        s = torch.tensor(std, dtype=torch.float32, device=device)[None, :, None, None]
        self.x = ((x - m) / s).contiguous()
        self.y = torch.as_tensor(noisy, dtype=torch.long, device=device)
        self.clean = torch.as_tensor(clean, dtype=torch.long, device=device)
        self.n = int(self.y.numel())

    def batches(self, idx_list, dist: Dist, aug: str, gen: torch.Generator | None):
        """Yield (x, y_noisy, y_clean, n_global) for this process's share of each global batch."""
        dev = self.x.device
        for gidx in idx_list:
            part = gidx.tensor_split(dist.world)[dist.rank].to(dev) if dist.enabled else gidx.to(dev)
            x = self.x.index_select(0, part)
            if aug != "none":
                x = augment_batch(x, aug, gen)
            yield x, self.y.index_select(0, part), self.clean.index_select(0, part), int(gidx.numel())


class _FileDataset(torch.utils.data.Dataset):
    """Decodes image files to uint8 [C, S, S]: random-resized crop + flip (train) or
    resize to S·256/224 and centre crop S (test). Draws seeded by (seed, epoch, index)."""

    def __init__(self, files, noisy, clean, size: int, train: bool, seed: int):
        self.files, self.noisy, self.clean = files, np.asarray(noisy), np.asarray(clean)
        self.size, self.train, self.seed, self.epoch = int(size), train, int(seed), 0

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from .readers import read_image

        s = self.size
        if self.train:
            img = read_image(self.files[i])
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            h, w = img.shape[:2]
            for _ in range(10):
                area = h * w * rng.uniform(0.08, 1.0)
                ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
                cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
                if 0 < cw <= w and 0 < ch <= h:
                    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                    break
            else:
                ch = cw = min(h, w)
                top, left = (h - ch) // 2, (w - cw) // 2
            crop = torch.from_numpy(img[top:top + ch, left:left + cw].copy()).permute(2, 0, 1)
            crop = F.interpolate(crop[None].float(), size=(s, s), mode="bilinear",
                                 align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            if rng.random() < 0.5:
                crop = crop.flip(2)
            out = crop
        else:
            img = read_image(self.files[i], size=int(round(s * 256 / 224)))
            h, w = img.shape[:2]
            top, left = (h - s) // 2, (w - s) // 2
            out = torch.from_numpy(img[top:top + s, left:left + s].copy()).permute(2, 0, 1)
        return out, int(self.noisy[i]), int(self.clean[i])


class FileData:
    """A file-backed split read by a DataLoader with workers, in the same global order."""

    def __init__(self, files, noisy, clean, mean, std, size, train, seed, workers, device):
        self.ds = _FileDataset(files, noisy, clean, size, train, seed)
        self.n = len(files)
        self.device = device
        self.workers = workers
        self.mean = torch.tensor(mean, device=device)[None, :, None, None] * 255
        self.std = torch.tensor(std, device=device)[None, :, None, None] * 255

    def batches(self, idx_list, dist: Dist, aug: str, gen):
        shares = [(g.tensor_split(dist.world)[dist.rank] if dist.enabled else g).tolist()
                  for g in idx_list]
        sizes = [int(g.numel()) for g in idx_list]
        with warnings.catch_warnings():  # --workers above the CPU count is the user's choice
            warnings.filterwarnings("ignore", message=".*worker processes? in total.*")
            loader = torch.utils.data.DataLoader(
                self.ds, batch_sampler=shares, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", persistent_workers=False)
            batches = iter(loader)
        nb = self.device.type == "cuda"
        try:
            for (x, y, c), n_global in zip(batches, sizes):
                x = x.to(self.device, non_blocking=nb).float().sub_(self.mean).div_(self.std)
                yield x, y.to(self.device, non_blocking=nb), c.to(self.device, non_blocking=nb), n_global
        except CalibrateError as exc:  # from a worker: torch prepends the worker's traceback
            raise type(exc)(worker_message(str(exc))) from None


def worker_message(text: str) -> str:
    """The original one-line message of an error a DataLoader worker raised: torch re-raises it
    in the main process with "Caught ... in DataLoader worker process N. Original Traceback
    ..." in front; the message is the last line, after the exception's class name."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    if not lines or "DataLoader worker" not in lines[0]:
        return str(text)
    m = re.match(r"^\s*[\w.]+: (.*)$", lines[-1])
    return m.group(1) if m else lines[-1].strip()


def make_split(split, noisy, clean, bundle, device, *, train: bool, seed: int, workers: int):
    if split.images is not None:
        return MemoryData(split.images, noisy, clean, bundle.mean, bundle.std, device)
    return FileData(split.files, noisy, clean, bundle.mean, bundle.std, bundle.image_size,
                    train, seed, workers, device)
