"""Errors the command line turns into one line on stderr and an exit code.

Exit codes (the README's "Errors and exit codes" lists them for users):

* 1 -- the inputs are valid but there is no result: the requested quantity has no solution,
  or training diverged (a non-finite loss);
* 2 -- usage: an input is invalid (bad number, unknown loss, unreadable file), an optional
  package is missing, the output folder is in use by another process, or user code (a loss of
  your own) failed or tried to end the process;
* 3 -- internal error (a bug; see :mod:`calibrate_cli.cli.app`);
* 4 -- a file could not be written: the disk is full, over quota or read-only;
* 130 -- interrupted (Ctrl-C);
* 141 -- the reader of stdout went away (``calibrate ... | head -1``): nothing is printed.

Each error is also the matching built-in exception, so Python code catches it as usual:
:class:`UsageError` and :class:`NoSolutionError` are ``ValueError`` (:class:`ArgumentTypeError`,
an argument of the wrong type, is also a ``TypeError``), :class:`RunError` is a
``RuntimeError`` and :class:`StorageError` an ``OSError``.

Messages name an input as the caller gave it: the command line's option inside a command
(``--classes``), the Python argument elsewhere (``classes``): :func:`option` says which, and
:func:`cli_names` is the command line's context (:mod:`calibrate_cli.cli.app` enters it).
"""

from __future__ import annotations

import contextlib
import contextvars

_CLI = contextvars.ContextVar("calibrate_cli_names", default=False)


def option(cli: str, python: str | None = None) -> str:
    """The name of an input in a message: ``cli`` (``--logit-std``) inside a command, else the
    Python argument: ``python``, or ``cli`` without its dashes and with ``_`` for ``-``."""
    if _CLI.get():
        return cli
    return python or cli.lstrip("-").replace("-", "_")


@contextlib.contextmanager
def cli_names():
    """Within: messages name the command line's options (see :func:`option`)."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


class CalibrateError(Exception):
    """An error with a message meant for the user (one line) and an exit code."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CalibrateError, ValueError):
    """An invalid input: the message names the input and its valid range."""

    exit_code = 2


class ArgumentTypeError(UsageError, TypeError):
    """An input of the wrong type (a list where a tensor is expected, a bool for a number)."""


class NoSolutionError(CalibrateError, ValueError):
    """Valid inputs, but no value in the valid range satisfies the criterion."""

    exit_code = 1


class RunError(CalibrateError, RuntimeError):
    """Valid inputs, but the run produced no result (training diverged)."""

    exit_code = 1


class StorageError(CalibrateError, OSError):
    """A file could not be written: disk full, quota exceeded, read-only file system."""

    exit_code = 4


#: Optional packages: import name -> (package to install, extra of calibrate-cli that has it).
OPTIONAL_PACKAGES = {
    "torch": ("torch", "train"),
    "matplotlib": ("matplotlib", "plot"),
    "PIL": ("pillow", "plot"),
    "yaml": ("pyyaml", "train"),
    "tensorboard": ("tensorboard", "tensorboard"),
}
#: Commands whose optional packages come with the ``train`` extra.
_TRAIN_COMMANDS = ("train", "validate", "measure")
#: PyTorch's index of CPU-only builds (PyPI's Linux torch is the larger CUDA build).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def install_hint(package: str, extra: str) -> str:
    """The commands that install ``package``: by its own name (from a wheel or anywhere), or
    from a clone of calibrate with the extra that has it."""
    hint = f"pip install {package}"
    if package == "torch":
        hint += f" (CPU only: pip install torch --index-url {TORCH_CPU_INDEX})"
    return f"{hint}; from a clone of calibrate: pip install '.[{extra}]'"


def missing_package(exc: ImportError, command: str | None = None) -> CalibrateError | None:
    """The usage error naming what to install for a missing optional package; None when
    ``exc`` is not about one of :data:`OPTIONAL_PACKAGES`."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name not in OPTIONAL_PACKAGES:
        return None
    package, extra = OPTIONAL_PACKAGES[name]
    if command in _TRAIN_COMMANDS and extra != "tensorboard":
        extra = "train"  # the train extra has torch, matplotlib (and pillow) and pyyaml
    what = f"'calibrate {command}'" if command else "this command"
    return UsageError(f"{what} needs the package '{package}', which is not installed: "
                      f"{install_hint(package, extra)}")
