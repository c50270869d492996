"""The ``calibrate`` command: composes one module per command.

Each module in ``COMMANDS`` defines ``register(app)``. Modules must not import
torch at import time (the calibration commands start in well under a second);
commands that need it import it inside the function body.

Bare ``calibrate`` prints :func:`usage` (the five most used commands), not the whole help.
Help written to a pipe or a file is laid out :data:`HELP_WIDTH` columns wide, so that no
option name is cut (a terminal gets its own width).

Errors: a :class:`~calibrate_cli.errors.CalibrateError` raised anywhere under a
command, or a usage error found by the option parser, becomes one line on
stderr (``error: ...``) and its exit code; never a traceback. So do a missing
optional package (named with the extra to install), a full disk, and user code
(a loss of your own) that calls ``sys.exit``: it cannot end a command silently.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import os
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.26 vendors click (pyproject pins typer < 0.29: 0.29 imports pydantic at parse)
    from typer._click import exceptions as click
    from typer._click.utils import echo as _echo
except ImportError:  # pragma: no cover - older typer on the system click
    from click import exceptions as click
    from click import echo as _echo

from .._version import __version__
from ..errors import CalibrateError, cli_names, missing_package

COMMANDS = (
    "epsilon", "q", "transfer", "curve", "losses",
    "measure", "tables", "plot", "train", "validate",
)
#: What bare ``calibrate`` shows: the five most used commands, an example of each.
FIRST_COMMANDS = (
    ("epsilon --classes 1000", "the logit bias ε of MAE, K = 1000"),
    ("q --loss gce --from 10 --to 1000", "GCE's q at K = 1000 (a caution)"),
    ("transfer --loss sce --param alpha --from 100 --to 1000", "any parameter of any loss"),
    ("train", "train on embedded glyphs (torch)"),
    ("validate --losses 'ce,mae*' --noise 0.4", "compare losses on noisy labels"),
)
#: Columns of help written to a pipe or a file: wide enough for every option name whole.
HELP_WIDTH = 120


def usage() -> str:
    """The short usage of bare ``calibrate``: at most 80 columns."""
    rows = [f"calibrate {example}" for example, _ in FIRST_COMMANDS]
    col = max(len(r) for r in rows if len(r) <= 42) + 2
    lines = ["Usage: calibrate COMMAND [OPTIONS]", "",
             "The logit bias ε and K-dependent hyperparameters of noise-robust losses,",
             "computed from the number of classes K.", "", "Most used:"]
    for row, (_, what) in zip(rows, FIRST_COMMANDS):
        lines += ([f"  {row:<{col}}{what}"] if len(row) < col else
                  [f"  {row}", f"  {'':<{col}}{what}"])
    lines += ["", f"All {len(COMMANDS)} commands: calibrate --help.  One command: "
                  "calibrate COMMAND --help."]
    return "\n".join(lines)


def _wants_help(argv: list[str]) -> bool:
    return any(a in ("--help", "-h") for a in argv)


def _help_width(argv: list[str]) -> None:
    """Help to a pipe or a file: wide enough that no option name is cut with '…'."""
    if (_wants_help(argv) and not sys.stdout.isatty()
            and not os.environ.get("TERMINAL_WIDTH") and not os.environ.get("COLUMNS")):
        from typer import rich_utils

        rich_utils.MAX_WIDTH = HELP_WIDTH


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Group(TyperGroup):
    """Turns every expected error into ``error: <one line>`` on stderr."""

    def list_commands(self, ctx):  # keep the order of COMMANDS in --help
        return [c for c in COMMANDS if c in self.commands] + [
            c for c in self.commands if c not in COMMANDS
        ]

    def make_context(self, *args, **kwargs):  # the group's --help is printed here
        with _stdout_guard():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):  # a command, its --help and its output
        with _stdout_guard():
            return super().invoke(ctx)

    def main(self, args=None, prog_name=None, **kwargs):
        kwargs.pop("standalone_mode", None)
        argv = list(sys.argv[1:] if args is None else args)
        if sys.stdout is None:  # started with stdout closed (>&-): printing says so
            sys.stdout = _ClosedStdout()
        if not argv:  # bare 'calibrate': the short usage, once, and success
            with _stdout_guard(quiet=True):
                _echo(usage())
            sys.exit(0)
        command = _requested(argv)
        _help_width(argv)
        try:
            with cli_names():  # messages name the options (--classes), not Python arguments
                rv = super().main(args=args, prog_name=prog_name or "calibrate",
                                  standalone_mode=False, **kwargs)
        except _ReaderGone:  # `calibrate ... | head -1`: the reader has what it wanted
            _reader_gone()
        except _StdoutFailed as exc:
            _fail(str(exc), 4)
        except CalibrateError as exc:
            _fail(str(exc), exc.exit_code)
        except _NoArgsIsHelp as exc:  # a group without arguments: its help, and success
            _echo(exc.ctx.get_help())
            sys.exit(0)
        except SystemExit as exc:  # click itself never exits here (standalone_mode=False)
            if _wants_help(argv):  # rich ends help whose reader left (| head) with SystemExit
                sys.exit(exc.code)
            _fail(f"user code called sys.exit({exc.code!r}) inside 'calibrate {command or ''}' "
                  "(a loss must return its value, not end the process); the command was "
                  "stopped", 2)
        except click.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx is not None else "calibrate"
            _fail(f"{_one_line(exc.format_message())} (see '{cmd} --help')", 2)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except typer.Abort:
            _fail("aborted", 130)
        except BrokenPipeError:
            _reader_gone()
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as exc:  # a bug: still one line unless debugging
            if os.environ.get("CALIBRATE_DEBUG"):
                raise
            known = None
            if isinstance(exc, ImportError):
                known = missing_package(exc, command)
            elif isinstance(exc, OSError):
                from ..utils.atomic import _storage_error

                known = _storage_error("a file", exc)
            if known is not None:
                _fail(str(known), known.exit_code)
            _fail(f"internal error: {type(exc).__name__}: {exc} "
                  "(set CALIBRATE_DEBUG=1 for a traceback and please report it)", 3)
        sys.exit(rv if isinstance(rv, int) else 0)


class _Never(Exception):
    """Matches nothing (an exception class an older click does not have)."""


_NoArgsIsHelp = getattr(click, "NoArgsIsHelpError", _Never)


def _fail(message: str, code: int) -> None:
    try:
        _echo(f"error: {_one_line(message)}", err=True)
    except (OSError, ValueError):  # stderr closed or full: the exit code still says it
        pass
    sys.exit(code)


# ------------------------------------------------------------ a closed or full stdout
#: Exit code when the reader of stdout went away (128 + SIGPIPE, what a shell reports).
READER_GONE = 141


class _ReaderGone(Exception):
    """stdout's reader closed the pipe (``| head``): not an error of the command."""


class _StdoutFailed(Exception):
    """stdout cannot be written (closed, a full disk): one line on stderr, exit 4."""


class _ClosedStdout(io.TextIOBase):
    """What sys.stdout is when the process was started with it closed: writing fails."""

    encoding, errors = "utf-8", "strict"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")


@contextlib.contextmanager
def _stdout_guard(quiet: bool = False):
    """Errors writing stdout become :class:`_ReaderGone` (the pipe's reader left) or
    :class:`_StdoutFailed` (closed, full), before click turns the first into ``sys.exit(1)``
    and the others into a traceback. A full disk under a file write is a StorageError
    already (:func:`~calibrate_cli.utils.atomic.write_atomic`) and passes through."""
    try:
        yield
    except SystemExit as exc:  # rich ends output whose pipe closed with SystemExit(1)
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None or tb.tb_frame.f_code.co_name != "on_broken_pipe":
            raise
        if quiet:
            _reader_gone()
        raise _ReaderGone() from None
    except OSError as exc:
        if isinstance(exc, CalibrateError) or exc.errno not in _STDOUT_ERRNOS:
            raise
        if exc.errno == errno.EPIPE:
            if quiet:
                _reader_gone()
            raise _ReaderGone() from None
        from ..utils.atomic import _storage_error

        why = _storage_error("stdout", exc)
        text = (str(why) if why is not None else
                f"cannot write the output to stdout: {exc.strerror or exc} (start the command "
                "with stdout open, or redirect it to a file or /dev/null)")
        if quiet:
            _fail(text, 4)
        raise _StdoutFailed(text) from None


_STDOUT_ERRNOS = {errno.EPIPE, errno.EBADF, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC),
                  errno.EFBIG, errno.EIO}


def _reader_gone() -> None:
    """Exit quietly with :data:`READER_GONE`; stdout points to /dev/null first, so that the
    interpreter's final flush does not complain about the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's stream)
        pass
    sys.exit(READER_GONE)


def _version(value: bool) -> None:
    if value:
        _echo(f"calibrate {__version__}")
        raise typer.Exit()


def build_app(only: str | None = None) -> typer.Typer:
    """The Typer app with every command, or only the command ``only``.

    ``main`` builds it with the one command named on the command line, so a
    calibration command never imports the modules of the training commands.
    """
    app = typer.Typer(
        cls=_Group,
        name="calibrate",
        rich_markup_mode="rich",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        help=(
            "Logit bias ε and K-dependent hyperparameters for noise-robust losses, "
            "computed exactly from the number of classes K (Staats, Thamm, Rosenow, AAAI 2025)."
        ),
        epilog=(
            "Examples:  calibrate epsilon --classes 1000   |   "
            "calibrate train --loss mae --logit-bias auto   |   calibrate losses"
        ),
    )
    app.callback()(_root)
    for name in COMMANDS if only is None else (only,):
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:  # a command not written yet
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        mod.register(app)
    return app


def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """calibrate: ε and hyperparameters of bounded losses from the number of classes."""


def _requested(argv: list[str]) -> str | None:
    """The command named first on the command line, if it is one of ours."""
    for arg in argv:
        if arg.startswith("-"):
            return None  # a root option (--help, --version) comes first: load everything
        return arg if arg in COMMANDS else None
    return None


def __getattr__(name: str):  # ``from calibrate_cli.cli.app import app``: every command
    if name == "app":
        globals()["app"] = build_app()
        return globals()["app"]
    raise AttributeError(name)


def main() -> None:
    """Console-script entry point."""
    build_app(_requested(sys.argv[1:]))()
