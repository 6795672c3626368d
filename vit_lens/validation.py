"""Argument checks shared by the entry points: one clear error naming the parameter, the value given and
what is allowed. ``bool`` is never accepted where a number is expected (``True`` is an ``int`` in Python)."""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """An integer (Python or numpy, not bool) ``>= minimum``; returned as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{'' if minimum is None else f' >= {minimum}'}; got {_shown(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def check_positive_real(value: Any, name: str) -> float:
    """A finite real number ``> 0`` (not bool); returned as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number > 0; got {_shown(value)}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_finite(tensor: Tensor, name: str) -> None:
    """Refuse tensors holding NaN or +-inf (they turn every attribution into NaN without an error).

    Cost: one pass over the tensor (no copy for finite float tensors)."""
    if not tensor.is_floating_point() and not tensor.is_complex():
        return
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int((~finite).sum()) - n_nan
    raise ValueError(f"{name} must hold finite values; got {n_nan} NaN and {n_inf} infinite entries "
                     f"(shape {tuple(tensor.shape)})")
