"""The configuration of one training run: one dataclass, one source of defaults.

Resolution order, later wins:

1. the field defaults of :class:`TrainConfig`;
2. the dataset's protocol (:data:`PROTOCOLS`, the recipes of the robust-loss
   literature: APL, ALFs, ANL, ε-softmax), for the fields the protocol sets;
3. a ``--config FILE`` (YAML or JSON, keys as the field names, ``-`` or ``_``);
4. options given on the command line.

The resolved configuration is written as ``config.json`` beside the results.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ..errors import UsageError, install_hint
from ..utils.numbers import number_text

#: Datasets ``load_dataset`` knows (kept in step with calibrate_cli/train/data.py).
DATASETS = ("glyphs", "cifar10", "cifar100", "fashion-mnist", "imagefolder", "webvision",
            "webvision-mini", "ilsvrc12-val")
#: Other spellings users type for a dataset.
DATASET_ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fmnist": "fashion-mnist",
                   "fashionmnist": "fashion-mnist"}
#: Datasets with no files to read: everything else needs ``--data-dir``.
EMBEDDED = ("glyphs",)
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTS = ("auto", "none", "flip", "crop-flip", "crop-flip-rotate")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class TrainConfig:
    """Every setting of one training run (``calibrate train --help`` documents each)."""

    # data
    dataset: str = "glyphs"
    data_dir: str | None = None
    classes: int | None = None              # None: the dataset's own K
    train_samples_per_class: int | None = None   # glyphs (and subsets): None = dataset default
    test_samples_per_class: int | None = None
    image_size: int | None = None
    data_seed: int = 0                      # glyph draws and per-class subsets (fixed across runs)
    noise: str = "none"                     # e.g. symmetric:0.4 (see calibrate_cli/train/noise.py)
    noise_seed: int | None = None           # None: the run's seed
    augment: str = "auto"
    imagenet_val_dir: str | None = None     # WebVision: also evaluate on ILSVRC12 val
    workers: int = 4                        # DataLoader workers, file-backed datasets only
    # model
    model: str = "mlp1024"
    zero_init_residual: bool = False
    sync_bn: bool = False
    # loss
    loss: str = "ce"
    loss_preset: str | None = None
    loss_params: dict = field(default_factory=dict)
    logit_bias: str = "0"                   # a number, or "auto" (solved for K and the measured std)
    bias_criterion: str = "match"
    bias_branch: str = "below"              # match criterion: the root below or above the peak
    calibrate: str | None = None            # a loss parameter to recalibrate for K (e.g. q)
    calibrate_from: int | None = None       # reference K of the literature value
    logit_std: float | None = None          # None: measured on the first batches at init
    measure_batches: int = 4
    # optimisation
    epochs: int = 20
    batch_size: int = 128                   # global batch (all processes together)
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    step_size: int = 1                      # step schedule: multiply by gamma every step_size epochs
    gamma: float = 0.1
    warmup_epochs: int = 0
    grad_clip: float = 5.0                  # max gradient 2-norm; 0 = no clipping
    # run
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    threads: int | None = None              # CPU threads of torch (None: torch's default)
    eval_batch_size: int = 1024
    out: str | None = None
    tensorboard: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Dataset protocols (the recipe of APL, Ma et al. 2020; ALFs, Zhou et al. 2021; ANL, Ye et al.
#: 2023; ε-softmax, 2024). CIFAR-10: APL/ALFs/ANL; CIFAR-100:
#: ALFs/ANL/ε-softmax (ResNet-34); WebVision-mini: APL/ANL (batch 512 over 4
#: GPUs). Fashion-MNIST: the MNIST protocol of ALFs with the paper's MLP1024.
#: glyphs: this tool's choice, sized for a 2-core CPU in minutes (see docs/training.md).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "glyphs": dict(model="mlp1024", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0,
                   schedule="cosine", epochs=12, batch_size=256, grad_clip=0.0, augment="none",
                   train_samples_per_class=None, test_samples_per_class=None),
    "cifar10": dict(model="cnn8", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4,
                    schedule="cosine", epochs=120, batch_size=128, grad_clip=5.0,
                    augment="crop-flip"),
    "cifar100": dict(model="resnet34", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-5,
                     schedule="cosine", epochs=200, batch_size=128, grad_clip=5.0,
                     augment="crop-flip-rotate"),
    "fashion-mnist": dict(model="mlp1024", optimizer="sgd", lr=0.01, momentum=0.9,
                          weight_decay=1e-3, schedule="cosine", epochs=50, batch_size=128,
                          grad_clip=5.0, augment="none"),
    "webvision-mini": dict(model="resnet50", optimizer="sgd", lr=0.4, momentum=0.9, nesterov=True,
                           weight_decay=3e-5, schedule="step", step_size=1, gamma=0.97,
                           epochs=250, batch_size=512, grad_clip=5.0, zero_init_residual=True,
                           augment="auto", classes=50),
    "webvision": dict(model="resnet50", optimizer="sgd", lr=0.4, momentum=0.9, nesterov=True,
                      weight_decay=3e-5, schedule="step", step_size=1, gamma=0.97,
                      epochs=250, batch_size=512, grad_clip=5.0, zero_init_residual=True,
                      augment="auto"),
    "imagefolder": dict(model="resnet18", optimizer="sgd", lr=0.1, momentum=0.9,
                        weight_decay=1e-4, schedule="cosine", epochs=100, batch_size=128,
                        grad_clip=5.0, augment="auto"),
}

#: Fields that change the result of training: a resumed run must keep them.
#: (``epochs`` may grow; the others -- device, workers, output -- may change.)
RESULT_FIELDS = (
    "dataset", "classes", "train_samples_per_class", "test_samples_per_class", "image_size",
    "data_seed", "noise", "noise_seed", "augment", "model", "zero_init_residual", "sync_bn", "loss",
    "loss_preset", "loss_params", "logit_bias", "bias_criterion", "bias_branch", "calibrate", "calibrate_from",
    "logit_std", "measure_batches", "batch_size", "optimizer", "lr", "momentum", "nesterov",
    "weight_decay", "schedule", "step_size", "gamma", "warmup_epochs", "grad_clip", "seed",
    "precision",
)

_FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def field_names() -> tuple[str, ...]:
    return tuple(_FIELD_TYPES)


#: Command-line spellings accepted in a --config file besides the field names.
_KEY_ALIASES = {"train_per_class": "train_samples_per_class",
                "test_per_class": "test_samples_per_class", "preset": "loss_preset"}


def _norm_key(key: str) -> str:
    k = str(key).strip().replace("-", "_")
    return _KEY_ALIASES.get(k, k)


def load_config_file(path: str) -> dict:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a dict of fields."""
    if not os.path.isfile(path):
        raise UsageError(f"--config: no such file '{path}'")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:  # binary, unreadable
        raise UsageError(f"--config {path}: cannot read it as text ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120]})") from None
    try:
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise UsageError("--config: reading YAML needs the package 'pyyaml', which is "
                                 f"not installed: {install_hint('pyyaml', 'train')}; or give "
                                 "a .json file") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except UsageError:
        raise
    except Exception as exc:  # a syntax error in the file
        raise UsageError(f"--config {path}: cannot parse it ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    return {_norm_key(k): v for k, v in data.items()}


def read_saved_config(path: str) -> dict:
    """The ``config`` of a run's config.json; a UsageError if the file is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
        config = record.get("config", {}) if isinstance(record, dict) else None
        if not isinstance(config, dict):
            raise ValueError("no 'config' mapping")
        return config
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: '{path}' is not a readable config.json of a calibrate run "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); restore "
                         "it, or start a new run in another --out") from None


def resolve_config(*, file_values: Mapping[str, Any] | None = None,
                   cli_values: Mapping[str, Any] | None = None,
                   base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults < dataset protocol < ``base`` (a saved config.json) < file < command line.

    ``cli_values`` holds only the options the user gave (not their defaults).
    """
    layers = [dict(base or {}), dict(file_values or {}), dict(cli_values or {})]
    for layer in layers:
        unknown = sorted(k for k in layer if k not in _FIELD_TYPES)
        if unknown:
            raise UsageError(f"unknown setting(s) {', '.join(unknown)} "
                             f"(known: {', '.join(_FIELD_TYPES)})")
    dataset = TrainConfig.dataset
    for layer in layers:
        dataset = layer.get("dataset", dataset)
    dataset = check_dataset(dataset)
    values = TrainConfig().to_dict()
    values.update(PROTOCOLS.get(dataset, {}))
    for layer in layers:
        values.update(layer)
    values["dataset"] = dataset
    cfg = TrainConfig(**{k: values[k] for k in _FIELD_TYPES})
    return validate_config(cfg)


def dataset_key(name: Any) -> str:
    """The canonical name of a dataset (aliases resolved); UsageError listing the known ones."""
    key = str(name).strip().lower().replace("_", "-")
    key = DATASET_ALIASES.get(key, key)
    if key not in DATASETS:
        raise UsageError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    return key


def check_dataset(name: Any) -> str:
    key = dataset_key(name)
    if key == "ilsvrc12-val":
        raise UsageError("ilsvrc12-val is an evaluation set only: train on webvision or "
                         "webvision-mini and pass --imagenet-val-dir")
    return key


def _as_int(name, v, low=None, allow_none=False):
    if v is None and allow_none:
        return None
    try:
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, str):  # "1e3" in a config file: an integer in float notation
            t = v.strip().replace("_", "")
            v = int(t) if t.lstrip("+-").isdigit() else float(t)
        if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            raise ValueError
        iv = int(v)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{_flag(name)} must be an integer, got {v!r}") from None
    if low is not None and iv < low:
        raise UsageError(f"{_flag(name)} must be >= {low}, got {iv}")
    return iv


def _as_float(name, v, low=None, high=None, low_open=False):
    try:
        if isinstance(v, bool):
            raise ValueError
        fv = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{_flag(name)} must be a number, got {v!r}") from None
    if not math.isfinite(fv):
        raise UsageError(f"{_flag(name)} must be finite, got {v!r}")
    if low is not None and (fv < low or (low_open and fv == low)):
        raise UsageError(f"{_flag(name)} must be {'>' if low_open else '>='} {low:g}, got {fv:g}")
    if high is not None and fv > high:
        raise UsageError(f"{_flag(name)} must be <= {high:g}, got {fv:g}")
    return fv


def _as_bool(name, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return v.strip().lower() in ("true", "yes", "1", "on")
    raise UsageError(f"{_flag(name)} must be true or false, got {v!r}")


def _choice(name, v, choices):
    key = str(v).strip().lower()
    if key not in choices:
        raise UsageError(f"{_flag(name)} must be one of {', '.join(choices)}, got {v!r}")
    return key


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_logit_bias(value: Any) -> float | str:
    """``auto`` or a finite number (``none`` = 0)."""
    key = str(value).strip().lower()
    if key == "auto":
        return "auto"
    if key in ("none", "off", ""):
        return 0.0
    try:
        eps = float(key)
    except ValueError:
        raise UsageError(f"--logit-bias must be a number or 'auto', got {value!r}") from None
    from ..engine.logits import MAX_LOGIT_BIAS

    if not math.isfinite(eps) or abs(eps) > MAX_LOGIT_BIAS:
        raise UsageError(f"--logit-bias must be a finite number in [-{MAX_LOGIT_BIAS:g}, "
                         f"{MAX_LOGIT_BIAS:g}] or 'auto', got {value!r}")
    return eps


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check every field (types and ranges); UsageError naming the first bad one."""
    c = cfg
    c.classes = _as_int("classes", c.classes, 2, allow_none=True)
    c.train_samples_per_class = _as_int("train_samples_per_class", c.train_samples_per_class, 1,
                                        allow_none=True)
    c.test_samples_per_class = _as_int("test_samples_per_class", c.test_samples_per_class, 1,
                                       allow_none=True)
    c.image_size = _as_int("image_size", c.image_size, 4, allow_none=True)
    c.data_seed = _as_int("data_seed", c.data_seed, 0)
    c.noise = str(c.noise).strip() or "none"
    c.noise_seed = _as_int("noise_seed", c.noise_seed, 0, allow_none=True)
    c.augment = _choice("augment", c.augment, AUGMENTS)
    c.workers = _as_int("workers", c.workers, 0)
    c.model = str(c.model).strip().lower()
    c.zero_init_residual = _as_bool("zero_init_residual", c.zero_init_residual)
    c.sync_bn = _as_bool("sync_bn", c.sync_bn)
    c.loss = str(c.loss).strip()
    if not isinstance(c.loss_params, dict):
        raise UsageError(f"loss_params must be a mapping name: value, got {c.loss_params!r}")
    c.loss_params = {str(k): _as_float(f"set {k}", v) for k, v in c.loss_params.items()}
    bias = parse_logit_bias(c.logit_bias)
    c.logit_bias = bias if bias == "auto" else number_text(bias)
    c.bias_criterion = _choice("bias_criterion", c.bias_criterion, ("match", "peak"))
    c.bias_branch = _choice("bias_branch", c.bias_branch, ("below", "above"))
    if c.logit_bias != "auto" and (c.bias_criterion != "match" or c.bias_branch != "below"):
        raise UsageError("--bias-criterion and --bias-branch choose how --logit-bias auto is "
                         f"solved; this run has --logit-bias {c.logit_bias} (add --logit-bias auto)")
    if c.bias_criterion == "peak" and c.bias_branch != "below":
        raise UsageError("--bias-branch applies to --bias-criterion match only (peak has one ε)")
    c.calibrate = None if c.calibrate in (None, "", "none") else str(c.calibrate).strip()
    c.calibrate_from = _as_int("calibrate_from", c.calibrate_from, 2, allow_none=True)
    if c.logit_std is not None:
        c.logit_std = _as_float("logit_std", c.logit_std, 0.0, 10.0, low_open=True)
    c.measure_batches = _as_int("measure_batches", c.measure_batches, 1)
    c.epochs = _as_int("epochs", c.epochs, 1)
    c.batch_size = _as_int("batch_size", c.batch_size, 1)
    c.optimizer = _choice("optimizer", c.optimizer, OPTIMIZERS)
    c.lr = _as_float("lr", c.lr, 0.0, low_open=True)
    c.momentum = _as_float("momentum", c.momentum, 0.0, 1.0)
    if c.momentum >= 1.0:
        raise UsageError(f"--momentum must be in [0, 1), got {c.momentum:g}")
    c.nesterov = _as_bool("nesterov", c.nesterov)
    if c.nesterov and c.optimizer == "sgd" and c.momentum == 0:
        raise UsageError("--nesterov needs --momentum > 0")
    c.weight_decay = _as_float("weight_decay", c.weight_decay, 0.0)
    c.schedule = _choice("schedule", c.schedule, SCHEDULES)
    c.step_size = _as_int("step_size", c.step_size, 1)
    c.gamma = _as_float("gamma", c.gamma, 0.0, 1.0, low_open=True)
    c.warmup_epochs = _as_int("warmup_epochs", c.warmup_epochs, 0)
    if c.warmup_epochs >= c.epochs:
        raise UsageError(f"--warmup-epochs ({c.warmup_epochs}) must be smaller than --epochs ({c.epochs})")
    c.grad_clip = _as_float("grad_clip", c.grad_clip, 0.0)
    c.seed = _as_int("seed", c.seed, 0)
    c.device = _choice("device", c.device, DEVICES)
    c.precision = _choice("precision", c.precision, PRECISIONS)
    c.compile = _as_bool("compile", c.compile)
    c.threads = _as_int("threads", c.threads, 1, allow_none=True)
    c.eval_batch_size = _as_int("eval_batch_size", c.eval_batch_size, 1)
    c.tensorboard = _as_bool("tensorboard", c.tensorboard)
    if c.data_dir is not None:
        c.data_dir = os.path.expanduser(str(c.data_dir))
        if dataset_key(c.dataset) == "glyphs":  # it would be ignored: say so
            raise UsageError("--data-dir: the glyphs are embedded and read from no folder; leave "
                             "--data-dir out, or choose a --dataset that is read from files")
    if c.imagenet_val_dir is not None:
        c.imagenet_val_dir = os.path.expanduser(str(c.imagenet_val_dir))
    if c.out is not None:
        c.out = os.path.expanduser(str(c.out))
    # the model name and the loss are checked against their registries here too
    from ..losses import get_loss, resolve_params

    spec = get_loss(c.loss)
    resolve_params(spec, c.loss_preset, c.loss_params)  # raises UsageError for a bad name/value
    if c.calibrate is not None:
        spec.param(c.calibrate)
        if c.calibrate_from is None and not c.loss_preset:
            raise UsageError(f"--calibrate {c.calibrate}: give the class count its value holds "
                             "for with --calibrate-from K (or a --preset, whose K is used)")
    from .noise import parse_noise  # raises UsageError for a bad spec

    parse_noise(c.noise)
    _check_model_name(c.model)
    return c


def _check_model_name(name: str) -> None:
    """Like models.parse_model_name, without importing torch."""
    import re

    ok = (re.fullmatch(r"mlp\d+(x\d+)?", name) or name == "cnn8"
          or re.fullmatch(r"resnet(18|34|50)(-(cifar|imagenet))?", name.replace("_", "-")))
    if not ok:
        raise UsageError(f"unknown model '{name}' (known: mlp1024, cnn8, resnet18, resnet34, "
                         "resnet50; mlp<W>x<D>; resnet18/34/50 with -cifar or -imagenet)")


def changed_result_fields(old: Mapping[str, Any], new: TrainConfig) -> list[str]:
    """Fields of ``RESULT_FIELDS`` that differ between a saved config and ``new``."""
    nd = new.to_dict()
    out = []
    for k in RESULT_FIELDS:
        if k in old and old[k] != nd[k]:
            out.append(k)
    return out


def default_out_dir(cfg: TrainConfig, root: str = "runs") -> str:
    """``runs/<dataset>-<model>-<loss>-s<seed>``, numbered ``-2``, ``-3``, ... when taken."""
    slug = f"{cfg.dataset}-{cfg.model}-{slugify(cfg.loss)}-s{cfg.seed}"
    path = os.path.join(root, slug)
    n = 2
    while os.path.exists(path):
        path = os.path.join(root, f"{slug}-{n}")
        n += 1
    return path


def slugify(text: str) -> str:
    out = []
    for ch in str(text).lower():
        if ch.isalnum() or ch in "-._":
            out.append(ch)
        elif ch == "*":
            out.append("-star")
        elif ch == "@":
            out.append("-at-")
        else:
            out.append("-")
    s = "".join(out).strip("-")
    while "--" in s:
        s = s.replace("--", "-")
    return s or "run"
