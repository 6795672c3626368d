"""Option and input checks shared by every attribution method: one clear error naming the parameter, the
value given and what is allowed.

Each method checks its own options in ``__init__`` with these helpers (so the per-method knowledge, which
options are ints or floats and their ranges, lives in the method). ``bool`` is never a number here
(``True`` is an ``int`` in Python, so ``start_layer=True`` would silently mean 1); floats must be finite.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from torch import Tensor

from vit_lens.validation import check_finite


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def _outside(value, low, high, low_open: bool, high_open: bool) -> bool:
    return ((low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high)))


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None,
              none_ok: bool = False) -> int | None:
    """An integer (Python or numpy, never bool) in ``[low, high]`` (either bound optional); returned as a
    Python int. ``none_ok``: None is allowed and returned as is."""
    if value is None and none_ok:
        return None
    allowed = f"an int{_interval(low, high, False, False)}{' or None' if none_ok else ''}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}; got {_shown(value)}")
    if _outside(value, low, high, False, False):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return int(value)


def check_float(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, none_ok: bool = False) -> float | None:
    """A finite real number (int or float, never bool) in the interval given by ``low``/``high`` (closed
    unless ``low_open``/``high_open``); returned as a Python float. ``none_ok``: None passes as is."""
    if value is None and none_ok:
        return None
    allowed = f"a finite number{_interval(low, high, low_open, high_open)}{' or None' if none_ok else ''}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}; got {_shown(value)}")
    if not math.isfinite(value) or _outside(value, low, high, low_open, high_open):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return float(value)


def check_int_pair(value: Any, name: str, *, low: int = 1) -> tuple[int, int]:
    """An int ``>= low`` for both axes, or a ``(height, width)`` pair of them (never bools)."""
    allowed = f"an int >= {low} or a (height, width) pair of ints >= {low}"
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in pair):
        raise TypeError(f"{name} must be {allowed}; got {_shown(value)}")
    if any(v < low for v in pair):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return int(pair[0]), int(pair[1])


def check_choice(value: Any, name: str, choices: tuple) -> Any:
    """One of ``choices`` (compared with ``==``, strings only match strings)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {choices}; got {_shown(value)}")
    return value


def check_flag(value: Any, name: str, *, none_ok: bool = True) -> bool | None:
    """``True``/``False`` (or None when ``none_ok``), e.g. ``progress``: 0/1 or strings are refused."""
    if (value is None and none_ok) or isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be True or False{' or None' if none_ok else ''}; got {_shown(value)}")


def check_finite_tensor(value: Tensor, name: str) -> Tensor:
    """A floating-point tensor without NaN/inf (an option such as a baseline image)."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got "
                        f"{f'dtype {value.dtype}' if isinstance(value, Tensor) else _shown(value)}")
    check_finite(value, name)
    return value


def check_nonempty(images: Tensor, name: str = "images") -> None:
    """Refuse an empty batch (``check_images`` of the models checks rank, dtype, size and finite pixels,
    but leaves the batch size to the methods)."""
    if images.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image; got an empty batch of shape {tuple(images.shape)}")


def check_method_images(model, images: Any, name: str = "images") -> None:
    """What every method checks first: ``model.check_images`` (a float tensor ``[batch, chan, H, W]`` of the
    model's size and dtype, finite pixels) and a non-empty batch."""
    model.check_images(images, name)
    check_nonempty(images, name)
