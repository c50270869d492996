"""Atomic file writes: every file the tool writes goes through :func:`write_atomic`.

The data go to a temporary file in the destination's folder, which is then renamed over
the destination (``os.replace`` is atomic on POSIX and Windows). A crash, a full disk or
Ctrl-C therefore leaves either the old file or the new one, never a half-written file.
A full disk (or quota, or read-only file system) is a :class:`~calibrate_cli.errors.StorageError`
saying so. Only ``kill -9`` (or a power cut) in the middle of a write can leave the temporary
file, ``.tmp-*``, behind: :func:`clean_temporaries` removes them from a folder whose lock
(:mod:`calibrate_cli.utils.lock`) the caller holds.
"""

from __future__ import annotations

import errno
import os
import tempfile
from typing import BinaryIO, Callable, Union

from ..errors import StorageError, UsageError

Payload = Union[bytes, str, Callable[[BinaryIO], None]]
#: Prefix of the temporary files of :func:`write_atomic`.
TMP_PREFIX = ".tmp-"
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EFBIG}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_folder(path: str | os.PathLike, option: str, *, lock: bool = False) -> str:
    """Create folder ``path`` (and its parents) if needed and check that it can be written;
    a :class:`UsageError` naming ``option`` otherwise. Returns the path.

    ``lock``: also lock the folder until the running command ends
    (:func:`calibrate_cli.utils.lock.hold_folder`): a second process is refused, and temporaries
    that a killed writer left there are removed.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} '{path}' exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} '{path}' cannot be created: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{option} '{path}' is not writable")
    if lock:
        from .lock import hold_folder

        hold_folder(path, option)
        clean_temporaries(path)
    return path


def check_folder(path: str | os.PathLike, option: str) -> str:
    """What :func:`make_folder` checks, without creating anything: ``path`` is a writable
    folder, or could be created (its nearest existing ancestor is a writable folder)."""
    path = os.fspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{option} '{path}' exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{option} '{path}' is not writable")
        return path
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{option} '{path}' cannot be created: '{parent}' is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} '{path}' cannot be created: '{parent}' is not writable")
    return path


def clean_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the temporaries :func:`write_atomic` left in ``folder`` when its process was
    killed mid-write; call it only while holding the folder's lock. Returns their names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        p = os.path.join(folder, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(p) and not os.path.islink(p):
            try:
                os.unlink(p)
                removed.append(name)
            except OSError:
                pass
    return removed


def _storage_error(path: str, exc: OSError) -> StorageError | None:
    if exc.errno not in _FULL:
        return None
    what = {errno.EROFS: "the file system is read-only",
            errno.EFBIG: "the file is too large for the file system"}.get(
        exc.errno, "the disk is full (or the quota is used up)")
    return StorageError(f"cannot write '{path}': {what}; free some space and run the command "
                        "again (files already written are intact)")


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
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX,
                                   suffix="-" + os.path.basename(path))
    except OSError as exc:
        raise (_storage_error(path, exc)
               or UsageError(f"cannot write '{path}': {exc.strerror or exc}")) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            full = _storage_error(path, exc)
            if full is not None:
                raise full from None
        raise
