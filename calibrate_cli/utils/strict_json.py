"""Strict JSON: what every JSON file and every ``--json`` output of the tool is written with.

JSON has no NaN or infinity (Python's ``json`` writes ``NaN`` and ``Infinity`` unless told not
to, and strict parsers such as ``jq`` or JavaScript's ``JSON.parse`` refuse them). So a number
that is not finite is written as ``null`` (it means "no value": a run that diverged says so in
its status, not with a NaN), NumPy scalars and arrays become plain numbers and lists, and the
text is produced with ``allow_nan=False``, so that nothing else can slip through.
"""

from __future__ import annotations

import json
import math
from typing import Any


def clean(x: Any) -> Any:
    """``x`` with every non-finite float as None, NumPy values as Python ones, tuples as
    lists and mapping keys as text."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return clean(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def dumps(obj: Any, *, indent: int | None = None, ensure_ascii: bool = False) -> str:
    """``obj`` as strict JSON text (see the module's docstring)."""
    return json.dumps(clean(obj), indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)
