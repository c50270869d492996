"""Errors the command line turns into one line on stderr and an exit code.

Exit codes follow the command-line guidelines the project adopted:

* 2 -- usage: an input is invalid (bad number, unknown loss, unreadable file);
* 1 -- the inputs are valid but the requested quantity has no solution.
"""

from __future__ import annotations


class CalibrateError(Exception):
    """An error with a message meant for the user (one line) and an exit code."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CalibrateError):
    """An invalid input: the message names the input and its valid range."""

    exit_code = 2


class NoSolutionError(CalibrateError):
    """Valid inputs, but no value in the valid range satisfies the criterion."""

    exit_code = 1
