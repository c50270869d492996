"""Progress for steps that may take a while, on a terminal only.

:func:`slow_step` wraps a block of work: if the block is still running after ``after`` seconds
(2 by default) and stderr is a terminal, a line ``⠋ <message>  12 s`` appears on stderr and
is refreshed until the block ends, then erased. Piped or redirected output never sees it, so
logs and ``--json`` output stay clean. With ``estimate`` (seconds) the line shows it, and with
``fraction`` (a function returning the part done, 0 to 1) the percentage:
``⠋ <message>  37 s of about 5 min, 12 %``. Nothing here imports anything heavy.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_ACTIVE = threading.local()


def log_line(message: str, stream=None) -> None:
    """``message`` and its newline to ``stream`` (default stderr) in one write, then flushed.
    ``print`` writes the two apart, and with unbuffered output (``PYTHONUNBUFFERED``, ``-u``) a
    process killed between them leaves a line without its end, onto which the next process's
    line (the grid's one-line error, say) is glued."""
    stream = sys.stderr if stream is None else stream
    stream.write(message + "\n")
    stream.flush()


def interactive(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def slow_step(message: str, *, after: float = 2.0, estimate: float | None = None, stream=None,
              fraction=None):
    """Show ``message`` and the elapsed seconds on a terminal once the block has run ``after``
    seconds; ``estimate`` (seconds) is shown beside it when known, and the percentage done
    when ``fraction`` (a function returning 0 to 1) is given. Nested calls show the
    outermost one only."""
    stream = sys.stderr if stream is None else stream
    if getattr(_ACTIVE, "on", False) or not interactive(stream):
        yield
        return
    _ACTIVE.on = True
    stop = threading.Event()
    shown = []
    t0 = time.perf_counter()
    hint = f" of about {_seconds(estimate)}" if estimate else ""

    def spin():
        if stop.wait(after):
            return
        i = 0
        while not stop.is_set():
            done = ""
            if fraction is not None:
                try:
                    done = f", {min(99.0, 100.0 * float(fraction())):.0f} %"
                except Exception:  # a progress display never fails the work
                    done = ""
            text = (f"\r{_FRAMES[i % len(_FRAMES)]} {message}  "
                    f"{time.perf_counter() - t0:.0f} s{hint}{done}")
            try:
                stream.write(text + "\x1b[K")
                stream.flush()
            except (OSError, ValueError):
                return
            shown.append(True)
            i += 1
            stop.wait(0.25)

    worker = threading.Thread(target=spin, name="calibrate-progress", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        _ACTIVE.on = False
        if shown:
            try:
                stream.write("\r\x1b[K")
                stream.flush()
            except (OSError, ValueError):
                pass


def _seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
