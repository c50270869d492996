"""Training throughput of ``calibrate train``'s loop against a minimal PyTorch loop.

Both train the same model (MLP1024, the same seeded initialisation), on the same
data (the embedded glyphs, normalised, one tensor on the device), with the same
batch size, optimiser (SGD, momentum 0.9) and loss (cross entropy), for the
same number of epochs, in this process, interleaved (minimal, calibrate,
minimal, calibrate, ...). The minimal loop is what one writes by hand:

    for each epoch: perm = randperm(N); for each batch: forward, F.cross_entropy,
    zero_grad, backward, step

``calibrate train``'s loop also computes its per-epoch metrics (training loss,
accuracy on noisy and clean labels, logit statistics; summed on the device),
applies the logit-bias wrapper (ε = 0 here) and the learning-rate schedule.
Throughput: training samples per second over the epochs after the first
(warm-up). Printed: the best of the repeats for each loop, and the median over
repeats of the ratio calibrate / minimal within one repeat (the two loops of a
repeat run back to back, so slow phases of a shared machine hit both).
Evaluation time is excluded from both. Target: median paired ratio >= 0.95.

Usage: python benchmarks/bench_train.py [--classes 100] [--per-class 100] [--batch-size 256]
       [--epochs 5] [--repeats 5] [--device auto] [--progress]
       [--model mlp1024] [--data glyphs|synthetic] [--shape 3,32,32] [--precision fp32|bf16]

On a GPU, the issue's ResNet-34 measurement on CIFAR-100-shaped data (50,000 random 3×32×32
images, K = 100; random pixels cost the same as real ones) is

    python benchmarks/bench_train.py --device cuda --model resnet34 --data synthetic \
        --classes 100 --per-class 500 --batch-size 128 --precision bf16 --repeats 3

and prints samples/s and the epoch time of both loops.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from calibrate_cli.train import loop
from calibrate_cli.train.config import resolve_config
from calibrate_cli.train.data import load_dataset
from calibrate_cli.train.models import create_model


def synthetic_bundle(classes: int, per_class: int, shape: tuple[int, int, int], seed: int = 0):
    """Random uint8 images of ``shape`` (C, H, W), ``per_class`` per class, in memory."""
    from calibrate_cli.train.data import DatasetBundle, Split

    c, h, w = shape
    rng = np.random.default_rng(seed)
    n = classes * per_class
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    train = Split(labels=labels, images=rng.integers(0, 256, (n, h, w, c), dtype=np.uint8))
    test = Split(labels=labels[:classes * 2].copy(),
                 images=rng.integers(0, 256, (classes * 2, h, w, c), dtype=np.uint8))
    return DatasetBundle(name="synthetic", classes=classes, channels=c, image_size=h,
                         mean=(0.5,) * c, std=(0.29,) * c, train=train, test=test,
                         class_names=[str(i) for i in range(classes)],
                         description=f"synthetic uniform images {c}x{h}x{w}, seed {seed}")


def _autocast(device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def minimal_loop(bundle, device, batch: int, epochs: int, lr: float, seed: int,
                 model_name: str = "mlp1024", precision: str = "fp32") -> float:
    """Samples/s of a hand-written loop over epochs 2..E."""
    x = torch.from_numpy(bundle.train.images).to(device).permute(0, 3, 1, 2).float() / 255
    m = torch.tensor(bundle.mean, device=device)[None, :, None, None]
    s = torch.tensor(bundle.std, device=device)[None, :, None, None]
    x = ((x - m) / s).contiguous()
    y = torch.from_numpy(bundle.train.labels).to(device)
    model = create_model(model_name, num_classes=bundle.classes, in_channels=bundle.channels,
                         image_size=bundle.image_size, seed=seed).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    n = y.numel()
    rates = []
    for epoch in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            with _autocast(device, precision):
                out = model(x[idx])
            loss = F.cross_entropy(out.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        if epoch > 0:
            rates.append(n / (time.perf_counter() - t0))
    return statistics.mean(rates)


def calibrate_loop(bundle, device: str, batch: int, epochs: int, lr: float, seed: int,
                   progress: bool, model_name: str = "mlp1024", precision: str = "fp32") -> float:
    """Samples/s of calibrate train's loop over epochs 2..E (its own per-epoch timing)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config(cli_values=dict(
            dataset="glyphs", classes=bundle.classes, model=model_name, loss="ce", augment="none",
            batch_size=batch, epochs=epochs, lr=lr, momentum=0.9, weight_decay=0.0,
            grad_clip=0.0, schedule="constant", seed=seed, device=device, precision=precision,
            threads=torch.get_num_threads(),  # the minimal loop's threads, not the load-based default
            out=f"{tmp}/run"))
        res = loop.train(cfg, bundle=bundle, progress=progress)
    return statistics.mean(r["samples_per_s"] for r in res.history[1:])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--progress", action="store_true", help="show calibrate's progress bar")
    ap.add_argument("--model", default="mlp1024", help="any model of calibrate train")
    ap.add_argument("--data", choices=("glyphs", "synthetic"), default="glyphs")
    ap.add_argument("--shape", default="3,32,32", help="C,H,W of --data synthetic")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    a = ap.parse_args(argv)
    device = loop.pick_device(a.device)
    if a.data == "glyphs":
        bundle = load_dataset("glyphs", classes=a.classes, train_per_class=a.per_class,
                              test_per_class=2, seed=0)
    else:
        bundle = synthetic_bundle(a.classes, a.per_class, tuple(int(v) for v in a.shape.split(",")))
    n = len(bundle.train)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{bundle.name} K = {a.classes}, {n} training images "
          f"{bundle.channels}x{bundle.image_size}x{bundle.image_size}, {a.model}, {a.precision}, "
          f"batch {a.batch_size}, {a.epochs} epochs (first excluded), {a.repeats} repeats")
    mins, cals = [], []
    for r in range(a.repeats):
        mins.append(minimal_loop(bundle, device, a.batch_size, a.epochs, 0.01, 0, a.model,
                                 a.precision))
        cals.append(calibrate_loop(bundle, a.device, a.batch_size, a.epochs, 0.01, 0, a.progress,
                                   a.model, a.precision))
        print(f"  repeat {r + 1}: minimal {mins[-1]:9.0f} samples/s   "
              f"calibrate {cals[-1]:9.0f} samples/s", flush=True)
    best_min, best_cal = max(mins), max(cals)
    ratio = best_cal / best_min
    paired = statistics.median(c / m for c, m in zip(cals, mins))
    print(f"minimal loop     {best_min:9.0f} samples/s (best of {a.repeats})")
    print(f"calibrate train  {best_cal:9.0f} samples/s (best of {a.repeats})")
    print(f"epoch time       {n / best_min:9.2f} s minimal, {n / best_cal:.2f} s calibrate "
          f"({n} images, training steps only)")
    print(f"ratio            {ratio:9.3f}  best / best")
    print(f"ratio            {paired:9.3f}  median of the paired (interleaved) repeats "
          f"(target >= 0.95: {'met' if paired >= 0.95 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
