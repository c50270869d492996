"""The loss registry: one :class:`LossSpec` per loss, the single source of truth.

Every other part of the tool (command-line help, ``calibrate losses``, the
averaging engine, tables, the trainer, ``calibrate_cli.nn``) reads the specs
registered here; nothing keeps its own list of loss names, parameters or presets.

The specs are declared in ``specs.py`` from the building blocks of ``base.py``
(see there for what a spec supplies); this module reads them and answers
look-ups by name or alias. The names of ``base.py`` stay importable from here.
"""

from __future__ import annotations

import difflib
import numbers
from typing import Mapping, Sequence

from ..errors import ArgumentTypeError, UsageError
from . import specs  # noqa: F401  (declares every loss)
from .base import (  # noqa: F401  (re-exported: importable from here as before)
    LossSpec,
    Param,
    Params,
    Preset,
    SigmaKernel,
    Term,
    _logsumexp,
    declared,
    lse_and_sum,
    register,
)

__all__ = [
    "LossSpec", "Param", "Params", "Preset", "SigmaKernel", "Term", "_logsumexp", "declared",
    "lse_and_sum", "register", "check_params", "get_loss", "get_preset", "list_losses",
    "loss_names", "parse_assignments", "resolve_params",
]

_REGISTRY: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}


def _index(spec: LossSpec) -> None:
    key = spec.name
    if key in _REGISTRY or key in _ALIASES:
        raise ValueError(f"duplicate loss name {key}")
    _REGISTRY[key] = spec
    for a in spec.aliases:
        _ALIASES[_norm(a)] = key


def _ensure_loaded() -> None:
    """Index the declared specs (all of ``specs.py``, and any declared since)."""
    for spec in declared()[len(_REGISTRY):]:
        _index(spec)


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace("+", "-")


def list_losses() -> list[LossSpec]:
    """All registered losses, in registration order."""
    _ensure_loaded()
    return list(_REGISTRY.values())


def loss_names() -> list[str]:
    return [s.name for s in list_losses()]


def get_loss(name: str) -> LossSpec:
    """Look a loss up by name or alias (``genCE`` = ``gce``, ``NCE+AGCE`` = ``nce-agce``).

    ``package.module:function`` loads a user's torch loss (δ_k by autograd).
    """
    _ensure_loaded()
    if not isinstance(name, str):
        raise ArgumentTypeError(f"loss must be a loss name (see 'calibrate losses') or "
                                f"package.module:function, got {name!r}")
    if ":" in name:
        from .user import user_loss

        return user_loss(name)
    key = _norm(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key in _ALIASES:
        return _REGISTRY[_ALIASES[key]]
    candidates = list(_REGISTRY) + list(_ALIASES)
    near = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    near = list(dict.fromkeys(_ALIASES.get(n, n) for n in near))
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise UsageError(
        f"unknown loss '{name}'{hint} (known: {', '.join(_REGISTRY)}; "
        "or package.module:function for your own torch loss)"
    )


def parse_assignments(items: Sequence[str] | None) -> dict[str, float]:
    """Parse ``--set name=value`` options."""
    out: dict[str, float] = {}
    for item in items or ():
        if "=" not in item:
            raise UsageError(f"--set expects name=value, got '{item}'")
        key, _, val = item.partition("=")
        key = key.strip()
        try:
            out[key] = float(val)
        except ValueError:
            raise UsageError(f"--set {key}: '{val}' is not a number") from None
    return out


def resolve_params(
    spec: LossSpec,
    preset: str | None = None,
    overrides: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Defaults, then the preset's values, then explicit overrides; all checked."""
    values = spec.defaults()
    if preset:
        values.update(get_preset(spec, preset).values)
    for key, val in (overrides or {}).items():
        spec.param(key)  # raises for an unknown name
        values[key] = _number(spec, key, val)
    check_params(spec, values)
    return values


def _number(spec: LossSpec, key: str, value) -> float:
    """A parameter's value as a float: a real number or its text, not a bool."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ArgumentTypeError(f"{spec.name}: {key} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{spec.name}: {key} must be a number, got {value!r}") from None


def check_params(spec: LossSpec, values: Mapping[str, float]) -> None:
    for p in spec.params:
        v = values[p.name]
        if not p.contains(v):
            raise UsageError(
                f"{spec.name}: {p.name} = {v:g} is outside its valid range {p.range_text()}"
            )


def get_preset(spec: LossSpec, name: str) -> Preset:
    if not isinstance(name, str):
        raise ArgumentTypeError(f"preset must be a preset's name, got {name!r}")
    key = name.strip().lower()
    if key in spec.presets:
        return spec.presets[key]
    known = ", ".join(spec.presets) or "none"
    raise UsageError(f"loss '{spec.name}' has no preset '{name}' (its presets: {known})")
