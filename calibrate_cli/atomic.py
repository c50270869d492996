"""Atomic file writes: every file the tool writes goes through :func:`write_atomic`.

The data go to a temporary file in the destination's folder, which is then renamed over
the destination (``os.replace`` is atomic on POSIX and Windows). A crash, a full disk or
Ctrl-C therefore leaves either the old file or the new one, never a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Union

from .errors import UsageError

Payload = Union[bytes, str, Callable[[BinaryIO], None]]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_folder(path: str | os.PathLike, option: str) -> str:
    """Create folder ``path`` (and its parents) if needed and check that it can be written;
    a :class:`UsageError` naming ``option`` otherwise. Returns the path."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} '{path}' exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} '{path}' cannot be created: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{option} '{path}' is not writable")
    return path


def write_atomic(path: str | os.PathLike, data: Payload, *, make_dirs: bool = True) -> None:
    """Write ``data`` (bytes, text as UTF-8, or a function given the open binary file) to ``path``.

    Missing folders are created when ``make_dirs``; a folder that cannot be created or written
    is a :class:`UsageError` naming the path. The file gets the permissions a plain ``open``
    would give it (``0666 & ~umask``), not ``mkstemp``'s 0600.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if make_dirs:
            os.makedirs(folder, exist_ok=True)
        elif not os.path.isdir(folder):
            raise UsageError(f"cannot write '{path}': folder '{folder}' does not exist")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    except OSError as exc:
        raise UsageError(f"cannot write '{path}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
