"""The validity map's protocol and paths, shared by build.py (the cells and their verdicts) and
render.py (the tables, figures and summaries)."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DATA = os.path.join(HERE, "data")
K1000 = os.path.join(os.path.dirname(HERE), "k1000")  # the headline experiment's sweeps (SGD)
PACKAGE_VERDICTS = os.path.join(REPO, "calibrate_cli", "data", "validity.json")

HOLDS, SHIFTED = 0.95, 0.8
SYM, PAIR = "symmetric:0.4", "pairflip:0.4"
OPTIMIZERS = {"sgd": "SGD (lr 0.1, momentum 0.9)", "adamw": "AdamW (lr 1e-3)"}
OPTIMIZER_NAMES = {"sgd": "SGD", "adamw": "AdamW"}
CNN8_K1000 = ("one 20-epoch run at K = 1000 is 1 to 1.5 hours of one CPU core (18 s per epoch "
              "at K = 100, ten times the images at K = 1000), beyond this map's CPU budget")
# the models beside mlp1024 (MAE's ε only): (optimizer, K, model, why a cell is not measured)
BUDGET = "not run within this map's CPU budget"
SECOND_MODELS = (("sgd", 100, "cnn8", None), ("adamw", 100, "cnn8", None),
                 ("sgd", 1000, "cnn8", CNN8_K1000), ("adamw", 1000, "cnn8", CNN8_K1000),
                 ("sgd", 1000, "mlp256x3", None), ("adamw", 1000, "mlp256x3", None))
# GCE's q carried from K_ref to K: (optimizer, K_ref, K, budget, model, why not measured)
TRANSFERS = tuple((opt, k_ref, k, budget, "mlp1024", None) for opt in OPTIMIZERS
                  for k_ref, k, budget in ((10, 100, "fixed epochs"), (10, 1000, "fixed epochs"),
                                           (100, 1000, "fixed epochs"),
                                           (100, 1000, "matched steps"))) + (
    ("sgd", 10, 100, "fixed epochs", "cnn8", None),
    ("adamw", 10, 100, "fixed epochs", "cnn8", None),
    ("sgd", 10, 1000, "fixed epochs", "cnn8", CNN8_K1000),
    ("adamw", 10, 1000, "fixed epochs", "cnn8", CNN8_K1000))
