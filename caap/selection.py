"""Patch selection operators S(p_i): the patch and its spatial neighbours (CAAP paper, Sec. 3.1)."""
from __future__ import annotations

import numbers
from typing import Callable, Union

from vit_lens.validation import check_int

Selection = Union[str, Callable[[int, int, tuple[int, int]], list[tuple[int, int]]]]
SELECTIONS = ("none", "box", "manhattan")


def _callable_cells(selection: Callable, row: int, col: int, grid_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Call a selection callable and check it returned (row, col) pairs of ints."""
    name = getattr(selection, "__name__", type(selection).__name__)
    result = selection(row, col, grid_size)
    allowed = "a list of (row, col) pairs of ints"
    if result is None or isinstance(result, (str, bytes)) or not hasattr(result, "__iter__"):
        raise TypeError(f"selection callable {name} must return {allowed}; for patch ({row}, {col}) it "
                        f"returned {result!r}")
    cells = []
    for cell in result:
        try:
            r, c = cell
        except (TypeError, ValueError):
            raise TypeError(f"selection callable {name} must return {allowed}; for patch ({row}, {col}) it "
                            f"returned the element {cell!r}") from None
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in (r, c)):
            raise TypeError(f"selection callable {name} must return {allowed}; for patch ({row}, {col}) it "
                            f"returned the cell {cell!r}")
        cells.append((int(r), int(c)))
    if (row, col) not in cells:
        raise ValueError(f"selection callable must include the patch itself ({row}, {col}); got {cells}")
    return cells


def neighbourhood(row: int, col: int, grid_size: tuple[int, int], selection: Selection = "box",
                  radius: int = 1) -> list[int]:
    """Row-major patch indices of ``S(p)`` for the patch at ``(row, col)``, clipped at the border.

    ``"none"``: the patch alone; ``"box"``: Chebyshev distance <= radius (3x3 for radius 1);
    ``"manhattan"``: L1 distance <= radius; a callable ``f(row, col, grid_size) -> [(r, c), ...]``
    chooses its own cells (cells outside the grid are dropped; the patch itself must be included).
    Only cells inside the grid are enumerated, so the cost is at most the grid size whatever the radius:
    any radius >= ``grid_h + grid_w - 2`` gives the whole grid for both operators."""
    gh, gw = grid_size
    if callable(selection):
        cells = _callable_cells(selection, row, col, grid_size)
    else:
        if not isinstance(selection, str) or selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS} or a callable; got {selection!r}")
        radius = check_int(radius, "radius", minimum=0)
        r = 0 if selection == "none" else min(radius, gh + gw)
        cells = [(rr, cc) for rr in range(max(0, row - r), min(gh, row + r + 1))
                 for cc in range(max(0, col - r), min(gw, col + r + 1))
                 if selection != "manhattan" or abs(rr - row) + abs(cc - col) <= r]
    seen: dict[int, None] = {}
    for r_, c_ in cells:
        if 0 <= r_ < gh and 0 <= c_ < gw:
            seen.setdefault(r_ * gw + c_, None)
    return list(seen)


def all_neighbourhoods(grid_size: tuple[int, int], selection: Selection = "box", radius: int = 1) -> list[list[int]]:
    """``S(p_i)`` for every patch ``i`` in row-major order."""
    gh, gw = grid_size
    return [neighbourhood(r, c, grid_size, selection, radius) for r in range(gh) for c in range(gw)]
