"""Helpers for nested outputs (tensors inside lists, tuples and dicts)."""
from typing import Any, List

import torch


def detach_nested(value: Any) -> Any:
    """``value`` with every tensor inside it detached (structure kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(detach_nested(v) for v in value)
    if isinstance(value, dict):
        return {k: detach_nested(v) for k, v in value.items()}
    return value


def flatten_tensors(value: Any) -> List[torch.Tensor]:
    """Every tensor inside ``value``, depth first; other leaves dropped."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flatten_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_tensors(v)]
    return []
