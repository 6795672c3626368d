"""Patch selection operators S(p_i): the patch and its spatial neighbours (CAAP paper, Sec. 3.1)."""
from __future__ import annotations

from typing import Callable, Union

Selection = Union[str, Callable[[int, int, tuple[int, int]], list[tuple[int, int]]]]
SELECTIONS = ("none", "box", "manhattan")


def neighbourhood(row: int, col: int, grid_size: tuple[int, int], selection: Selection = "box",
                  radius: int = 1) -> list[int]:
    """Row-major patch indices of ``S(p)`` for the patch at ``(row, col)``, clipped at the border.

    ``"none"``: the patch alone; ``"box"``: Chebyshev distance <= radius (3x3 for radius 1);
    ``"manhattan"``: L1 distance <= radius; a callable ``f(row, col, grid_size) -> [(r, c), ...]``
    chooses its own cells (cells outside the grid are dropped; the patch itself must be included)."""
    gh, gw = grid_size
    if callable(selection):
        cells = [(int(r), int(c)) for r, c in selection(row, col, grid_size)]
        if (row, col) not in cells:
            raise ValueError(f"selection callable must include the patch itself ({row}, {col}); got {cells}")
    else:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS} or a callable; got {selection!r}")
        if not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius must be a non-negative int; got {radius!r}")
        r = 0 if selection == "none" else radius
        cells = [(row + dr, col + dc) for dr in range(-r, r + 1) for dc in range(-r, r + 1)
                 if selection != "manhattan" or abs(dr) + abs(dc) <= r]
    seen: dict[int, None] = {}
    for r_, c_ in cells:
        if 0 <= r_ < gh and 0 <= c_ < gw:
            seen.setdefault(r_ * gw + c_, None)
    return list(seen)


def all_neighbourhoods(grid_size: tuple[int, int], selection: Selection = "box", radius: int = 1) -> list[list[int]]:
    """``S(p_i)`` for every patch ``i`` in row-major order."""
    gh, gw = grid_size
    return [neighbourhood(r, c, grid_size, selection, radius) for r in range(gh) for c in range(gw)]
