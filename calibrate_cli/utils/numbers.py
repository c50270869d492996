"""One canonical text for a number that names a setting (a folder, a label, a config value).

``f"{x:g}"`` keeps six significant digits, so ``--logit-bias 1.23456789`` would train with
1.23457 and a sweep point ``q=0.1234567`` would be reported as one value and trained as
another. :func:`number_text` is exact: ``float(number_text(x)) == x`` for every finite x, and
short values keep their short form (``4`` not ``4.0``, ``0.1`` not ``0.10000000000000001``).
"""

from __future__ import annotations

import math


def number_text(x: float) -> str:
    """The shortest text that reads back as ``x`` (``repr``), without a trailing ``.0``."""
    x = float(x)
    if not math.isfinite(x):
        return repr(x)
    if x == 0:
        return "0"  # also -0.0
    s = repr(x)
    if s.endswith(".0"):
        s = s[:-2]
    return s
