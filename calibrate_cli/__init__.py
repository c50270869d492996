"""calibrate: logit bias and hyperparameters of noise-robust losses from the number of classes."""
from ._version import __version__
