import pytest
import torch

from caap.blanks import blank_context, blank_image, blank_pixels
from caap.selection import all_neighbourhoods, neighbourhood
from tests.conftest import make_hooked


def test_box_manhattan_none_and_border_clipping():
    grid = (4, 5)
    assert sorted(neighbourhood(1, 1, grid, "box", 1)) == [0, 1, 2, 5, 6, 7, 10, 11, 12]
    assert sorted(neighbourhood(0, 0, grid, "box", 1)) == [0, 1, 5, 6]
    assert sorted(neighbourhood(3, 4, grid, "box", 1)) == [13, 14, 18, 19]
    assert sorted(neighbourhood(1, 1, grid, "manhattan", 1)) == [1, 5, 6, 7, 11]
    assert len(neighbourhood(2, 2, grid, "manhattan", 2)) == 12  # 13-cell diamond minus (4, 2), outside the 4-row grid
    assert neighbourhood(2, 3, grid, "none") == [13]
    assert len(neighbourhood(2, 2, grid, "box", 2)) == 20
    assert len(all_neighbourhoods(grid)) == 20


def test_callable_selection():
    def horizontal(row, col, grid):
        return [(row, col - 1), (row, col), (row, col + 1)]

    assert neighbourhood(0, 0, (3, 3), horizontal) == [0, 1]
    with pytest.raises(ValueError, match="must include the patch itself"):
        neighbourhood(0, 0, (3, 3), lambda r, c, g: [(1, 1)])


@pytest.mark.parametrize("kwargs,match", [
    (dict(selection="circle"), "selection must be one of"),
    (dict(selection="box", radius=-1), r"radius must be an int >= 0; got -1"),
])
def test_bad_selection(kwargs, match):
    with pytest.raises(ValueError, match=match):
        neighbourhood(0, 0, (3, 3), **kwargs)


def test_blanks_in_pixel_space_and_normalized():
    model = make_hooked("vit")
    mean, std = torch.tensor(model.cfg.mean), torch.tensor(model.cfg.std)
    white = blank_image(model, "white")
    assert white.shape == (1, 3, 64, 64)
    assert torch.allclose(white[0, :, 0, 0], (1 - mean) / std)
    assert torch.allclose(blank_image(model, "black")[0, :, 3, 3], -mean / std)
    assert blank_image(model, "mean").abs().max() < 1e-6
    noisy = blank_pixels("noisy", (64, 64), model.cfg.mean, seed=1)
    assert torch.equal(noisy, blank_pixels("noisy", (64, 64), model.cfg.mean, seed=1))
    assert not torch.equal(noisy, blank_pixels("noisy", (64, 64), model.cfg.mean, seed=2))
    assert 0 <= noisy.min() and noisy.max() <= 1 and noisy.std() > 0.1
    blurred = blank_pixels("blur_noisy", (64, 64), model.cfg.mean, seed=1)
    tv = lambda p: (p[:, 1:] - p[:, :-1]).abs().mean()  # noqa: E731
    assert tv(blurred) < 0.3 * tv(noisy)
    custom = torch.rand(3, 64, 64)
    assert torch.allclose(blank_image(model, custom)[0], (custom - mean.view(3, 1, 1)) / std.view(3, 1, 1))


def test_bad_blanks_are_refused():
    model = make_hooked("vit")
    with pytest.raises(ValueError, match="blank must be one of"):
        blank_image(model, "grey")
    with pytest.raises(ValueError, match=r"blank tensor must have shape \[3, 64, 64\]"):
        blank_image(model, torch.rand(3, 32, 32))


def test_blank_context_is_cached_per_model_and_kind():
    model = make_hooked("vit")
    assert blank_context(model, "white") is blank_context(model, "white")
    assert blank_context(model, "white") is not blank_context(model, "black")
    assert blank_context(model, "noisy", seed=0) is not blank_context(model, "noisy", seed=1)
    assert blank_context(make_hooked("vit"), "white") is not blank_context(model, "white")


def test_box_and_manhattan_match_their_distance_definitions_for_every_radius():
    """Brute force over all cells: box = Chebyshev <= r, manhattan = L1 <= r; radii past the grid (capped
    enumeration) included."""
    grid = (4, 5)
    cells = [(r, c) for r in range(4) for c in range(5)]
    for radius in (0, 1, 2, 3, 6, 7, 8, 1000):
        for row, col in cells:
            box = sorted(r * 5 + c for r, c in cells if max(abs(r - row), abs(c - col)) <= radius)
            l1 = sorted(r * 5 + c for r, c in cells if abs(r - row) + abs(c - col) <= radius)
            assert sorted(neighbourhood(row, col, grid, "box", radius)) == box
            assert sorted(neighbourhood(row, col, grid, "manhattan", radius)) == l1
