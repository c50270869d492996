"""Option types shared by the commands: integers written the way people write them.

``--classes 1e7`` and ``--classes 10000000`` are the same number; so are ``1e3`` and
``1000.0``. :data:`INT` accepts an integer, or a number in float notation whose value is an
integer (exactly, and at most 2^53 so that the float is exact), and rejects ``2.5`` or
``many`` with the option's name in the message. Use it as
``typer.Option(..., click_type=INT)``.
"""

from __future__ import annotations

import math

try:  # typer >= 0.26 vendors click
    from typer._click import types as _types
except ImportError:  # pragma: no cover - older typer on the system click
    from click import types as _types


def parse_int(text) -> int:
    """``text`` as an int if it is an integer in integer or float notation; ValueError if not."""
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, int):
        return text
    s = str(text).strip().replace("_", "")
    try:
        return int(s)
    except ValueError:
        pass
    v = float(s)  # ValueError for words
    if not math.isfinite(v) or not v.is_integer() or abs(v) > 2 ** 53:
        raise ValueError(text)
    return int(v)


class IntLike(_types.ParamType):
    """An integer, also in float notation when its value is an integer (``1e7``)."""

    name = "integer"

    def convert(self, value, param, ctx):
        try:
            return parse_int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an integer (1e7 and 1000.0 are accepted, 2.5 is not)",
                      param, ctx)


INT = IntLike()
