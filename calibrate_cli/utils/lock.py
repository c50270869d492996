"""One writer per output folder: an operating-system lock on the folder.

``calibrate train``, ``validate``, ``tables`` and ``plot all`` write a set of files that belong
together (a checkpoint and its metrics, a grid's runs, a table set, a figure set). Two processes
writing into one folder would mix or overwrite each other's files, so each takes an exclusive,
non-blocking lock on its folder first; a second process is refused with a
:class:`~calibrate_cli.errors.UsageError`.

The lock is ``flock`` on the folder itself (POSIX; no lock file is left behind) or
``msvcrt.locking`` on a file ``.calibrate.lock`` in it (Windows). The operating system releases it
when the process ends in any way, ``kill -9`` included, so a stale lock cannot outlive its holder.
"""

from __future__ import annotations

import atexit
import os

from ..errors import UsageError

_HELD: dict[str, "FolderLock"] = {}


class FolderLock:
    """An exclusive lock on folder ``path`` (which must exist); ``option`` names it in errors.

    Use as a context manager, or :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, path: str | os.PathLike, option: str = "--out") -> None:
        self.shown = os.fspath(path)
        self.path = os.path.abspath(self.shown)
        self.option = option
        self._fd: int | None = None

    # ------------------------------------------------------------------ public
    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            return self
        for _ in range(3):  # the folder may be replaced between open and lock: lock the new one
            fd = self._open()
            if not self._try_lock(fd):
                os.close(fd)
                raise UsageError(
                    f"{self.option} '{self.shown}' is in use by another calibrate process; "
                    "wait for it to finish or choose another folder")
            if self._same_folder(fd):
                self._fd = fd
                return self
            self._unlock(fd)
            os.close(fd)
        raise UsageError(f"{self.option} '{self.shown}': cannot lock the folder (it keeps "
                         "being replaced)")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self._unlock(fd)
            os.close(fd)
        _HELD.pop(self.path, None)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---------------------------------------------------------------- platform
    def _open(self) -> int:
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                return os.open(os.path.join(self.path, ".calibrate.lock"),
                               os.O_RDWR | os.O_CREAT, 0o666)
            return os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise UsageError(f"{self.option} '{self.shown}' cannot be opened: "
                             f"{exc.strerror or exc}") from None

    @staticmethod
    def _try_lock(fd: int) -> bool:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                return False
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    @staticmethod
    def _unlock(fd: int) -> None:
        # explicit unlock: forked children (DataLoader workers) share the descriptor
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                os.lseek(fd, 0, 0)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass

    def _same_folder(self, fd: int) -> bool:
        if os.name == "nt":  # pragma: no cover - Windows
            return True
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def lock_folder(path: str | os.PathLike, option: str = "--out") -> FolderLock:
    """Lock folder ``path`` now; a :class:`UsageError` if another process holds it."""
    return FolderLock(path, option).acquire()


def hold_folder(path: str | os.PathLike, option: str = "--out") -> str:
    """Lock folder ``path`` until the running command ends (or the process exits); returns it.

    Inside a command of the command line the lock is released when the command's context
    closes, so several commands run in one process (tests) do not block each other.
    """
    lock = lock_folder(path, option)
    _HELD[lock.path] = lock
    ctx = _current_context()
    if ctx is not None:
        ctx.call_on_close(lock.release)
    else:
        atexit.register(lock.release)
    return os.fspath(path)


def _current_context():
    """The running command's click context, or None outside the command line."""
    try:  # typer >= 0.26 vendors click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on the system click
        try:
            from click import get_current_context
        except ImportError:
            return None
    return get_current_context(silent=True)
