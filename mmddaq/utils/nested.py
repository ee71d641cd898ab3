"""Helpers for nested outputs (tensors inside lists, tuples and dicts)."""
from typing import Any, Callable, List

import torch


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with ``fn`` applied to every tensor inside it (structure
    kept, other leaves unchanged)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def detach_nested(value: Any) -> Any:
    """``value`` with every tensor inside it detached (structure kept)."""
    return map_tensors(value, torch.Tensor.detach)


def flatten_tensors(value: Any) -> List[torch.Tensor]:
    """Every tensor inside ``value``, depth first; other leaves dropped."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flatten_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_tensors(v)]
    return []
