"""The recipes of docs/integrations.md (and the README), run as they are written.

Each recipe is the ```python block after its ``<!-- recipe: NAME -->`` marker; a copy in the
README must be the same text. A test supplies what a recipe calls "yours" (a small model and data) and
checks what it must have done. Lightning and transformers come with the ``test`` extra; where
one is missing its test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import sys
import types

import pytest

torch = pytest.importorskip("torch")

import calibrate_cli as cal  # noqa: E402
from helpers import REPO, two_ranks  # noqa: E402

torch.set_num_threads(1)
DOCS = os.path.join(REPO, "docs", "integrations.md")
README = os.path.join(REPO, "README.md")
RECIPES = ("plain-loop", "lightning", "hf-trainer", "timm", "ddp")
_MISSING = "{} is not installed (the test extra brings it)"


def _recipes(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return dict(re.findall(r"<!-- recipe: ([\w-]+) -->\s*```python\n(.*?)```", text, re.S))


def recipe(name: str) -> str:
    return _recipes(DOCS)[name]


def test_the_readme_shows_the_docs_recipes():
    # the README shows the plain loop; every recipe it shows is the docs' text, which runs here
    docs, readme = _recipes(DOCS), _recipes(README)
    assert set(docs) == set(RECIPES)
    assert "plain-loop" in readme and all(readme[name] == docs[name] for name in readme)


def _problem(k=20, n=240, d=16, seed=0):
    """Separable clusters: a linear model learns them in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(k, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    x = centres[y] + torch.randn(n, d, generator=g)
    return x, y


def _net(d=16, k=20, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, k))


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_plain_loop():
    x, y = _problem()
    model = _net()

    def shuffled():
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32,
                                           shuffle=True,
                                           generator=torch.Generator().manual_seed(0))

    s = cal.nn.measure_logit_std(_net(), shuffled())  # the same network and first batches
    before = _accuracy(model, x, y)
    ns = {"model": model, "train_loader": shuffled(), "K": 20, "epochs": 5}
    exec(recipe("plain-loop"), ns)
    crit = ns["criterion"]
    assert isinstance(crit, cal.nn.MAE) and crit.logit_std == s
    assert crit.epsilon == cal.epsilon(20, logit_std=s).epsilon
    assert before < 0.15 and _accuracy(model, x, y) > 0.9  # MAE* learns the clusters


def test_lightning(tmp_path, monkeypatch):
    L = pytest.importorskip("lightning", reason=_MISSING.format("lightning"))
    monkeypatch.chdir(tmp_path)  # Lightning writes lightning_logs/ into the working directory
    x, y = _problem()
    net = _net()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    s = cal.nn.measure_logit_std(_net(), loader)
    ns = {"net": net, "train_loader": loader, "K": 20, "epochs": 2}
    exec(recipe("lightning"), ns)
    model = ns["model"]
    assert model.criterion.logit_std == s and model.criterion.epsilon > 0.5
    assert model.trainer.current_epoch == 2 and _accuracy(net, x, y) > 0.5
    (ckpt,) = (tmp_path / "lightning_logs").rglob("*.ckpt")
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert "criterion._extra_state" in state
    fresh = ns["Classifier"](_net(seed=1), num_classes=20, train_loader=loader)
    assert fresh.criterion.epsilon != model.criterion.epsilon  # another network, another std
    fresh.load_state_dict(state)  # what Lightning does when it resumes from the checkpoint
    assert fresh.criterion.epsilon == model.criterion.epsilon
    assert isinstance(L.LightningModule, type)


def test_hf_trainer(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers", reason=_MISSING.format("transformers"))
    pytest.importorskip("accelerate", reason=_MISSING.format("accelerate"))
    k = 20
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=k)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(1)
    train_dataset = [{"input_ids": torch.randint(0, 64, (8,), generator=g),
                      "attention_mask": torch.ones(8, dtype=torch.long), "labels": i % k}
                     for i in range(64)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=8,
        gradient_accumulation_steps=2, report_to=[], save_strategy="no", logging_steps=1,
        use_cpu=True, disable_tqdm=True)
    calls = []
    forward = cal.nn.CalibratedLoss.forward

    def counted(self, logits, target):
        calls.append((tuple(logits.shape), tuple(target.shape), torch.is_grad_enabled()))
        return forward(self, logits, target)

    monkeypatch.setattr(cal.nn.CalibratedLoss, "forward", counted)
    ns = {"model": model, "train_dataset": train_dataset, "training_args": args,
          "data_collator": transformers.default_data_collator}
    exec(recipe("hf-trainer"), ns)
    crit, trainer = ns["criterion"], ns["trainer"]
    assert isinstance(crit, cal.nn.MAE) and crit.classes == k
    assert crit.epsilon == cal.epsilon(k, logit_std=crit.logit_std).epsilon
    # 3 optimiser steps of 2 accumulated batches of 8, each through the criterion
    assert trainer.state.global_step == 3 and calls == [((8, k), (8,), True)] * 6
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # MAE ≤ 2 per sample: a logged loss above 2 would mean the accumulation was mis-scaled
    assert len(losses) == 3 and all(0 < v < 2 for v in losses)


def test_timm_train_script_block():
    """timm itself does not import beside a CPU-only torch (see the docs); this is the block
    with the objects of timm's train.py at that point, and the call its ClassificationTask
    makes: ``loss = criterion(model(input), target)`` inside ``amp_autocast()``."""
    x, y = _problem(k=50)
    model = _net(k=50)
    loader_train = [(x[i:i + 48], y[i:i + 48]) for i in range(0, 240, 48)]
    args = types.SimpleNamespace(num_classes=50)
    ns = {"args": args, "model": model, "loader_train": loader_train,
          "device": torch.device("cpu")}
    exec(recipe("timm"), ns)
    train_loss_fn = ns["train_loss_fn"]
    assert train_loss_fn.logit_std == cal.nn.measure_logit_std(model, loader_train)
    inputs, target = loader_train[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(inputs)
        loss = train_loss_fn(output, target)
    assert output.dtype == torch.bfloat16 and loss.dtype == torch.float32 and loss.shape == ()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


DDP_PREAMBLE = """
import json, os, sys
import torch
import calibrate_cli as cal
torch.set_num_threads(1)
K, epochs = 20, 2
def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, K))
g = torch.Generator().manual_seed(1)
data = torch.utils.data.TensorDataset(torch.randn(96, 16, generator=g),
                                      torch.randint(0, K, (96,), generator=g))
sampler = torch.utils.data.distributed.DistributedSampler(
    data, num_replicas=int(os.environ["WORLD_SIZE"]), rank=int(os.environ["RANK"]), seed=0)
train_loader = torch.utils.data.DataLoader(data, batch_size=16, sampler=sampler)
own_std = cal.nn.measure_logit_std(make_model(), train_loader, broadcast=False)
"""

DDP_POSTAMBLE = """
print(json.dumps({"own_std": own_std, "std": criterion.logit_std, "epsilon": criterion.epsilon,
                  "weights": [float(p.detach().double().sum()) for p in model.parameters()]}))
"""


@pytest.mark.slow
def test_ddp_torchrun_two_processes(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(DDP_PREAMBLE + recipe("ddp") + DDP_POSTAMBLE)
    procs, outs, _ = two_ranks([sys.executable, str(script)], cwd=tmp_path,
                               extra_env={"CUDA_VISIBLE_DEVICES": ""})
    assert all(p.returncode == 0 for p in procs), outs
    r0, r1 = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert r0["own_std"] != r1["own_std"]  # each shard measures differently ...
    assert r0["std"] == r1["std"] == r0["own_std"]  # ... and both train with rank 0's number
    assert r0["epsilon"] == r1["epsilon"] == cal.epsilon(20, logit_std=r0["own_std"]).epsilon
    assert r0["weights"] == r1["weights"]  # DDP kept the processes in step
