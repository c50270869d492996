"""calibrate: logit bias and hyperparameters of noise-robust losses from the number of classes.

    >>> import calibrate_cli as cal
    >>> cal.epsilon(1000).epsilon          # MAE*'s logit bias at K = 1000
    >>> cal.q(100, 1000).value             # GCE's q carried from K = 100 to 1000
    >>> cal.transfer("nce-agce", "alpha", 100, 1000, preset="cifar100").value
    >>> cal.mean_delta([0.0, 5.0], 1000, "gce").value
    >>> crit = cal.nn.loss("mae", classes=1000, logit_bias="auto")   # a torch module (MAE*)

Names are imported on first use (``import calibrate_cli`` itself is cheap, and only
``cal.nn`` imports torch). The equations are in the docstrings of :mod:`calibrate_cli.api`.
"""

from ._version import __version__

_EXPORTS = {
    "epsilon": "api", "q": "api", "transfer": "api", "mean_delta": "api",
    "Averager": "engine.average", "Average": "engine.average",
    "Gaussian": "engine.logits", "Empirical": "engine.logits", "from_array": "engine.logits", "load_logits": "engine.logits",
    "solve_epsilon": "engine.solve", "solve_transfer": "engine.solve", "solve_q": "engine.solve",
    "EpsilonResult": "engine.solve", "TransferResult": "engine.solve",
    "get_loss": "losses", "list_losses": "losses", "resolve_params": "losses",
    "CalibrateError": "errors", "UsageError": "errors", "NoSolutionError": "errors",
}

_SUBMODULES = ("nn",)  # cal.nn: the losses as torch modules (imports torch)

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'calibrate_cli' has no attribute '{name}'")
