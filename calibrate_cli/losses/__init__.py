"""Loss registry: ``get_loss``, ``list_losses``, ``resolve_params`` (see registry.py)."""

from .registry import (
    LossSpec,
    Param,
    Preset,
    SigmaKernel,
    Term,
    check_params,
    get_loss,
    get_preset,
    list_losses,
    loss_names,
    parse_assignments,
    resolve_params,
)

__all__ = [
    "LossSpec", "Param", "Preset", "SigmaKernel", "Term", "check_params", "get_loss",
    "get_preset", "list_losses", "loss_names", "parse_assignments", "resolve_params",
]
