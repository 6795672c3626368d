import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caap.baselines.rise import RISE, RiseMasks
from tests.caap.baselines.toy import one_patch_setup
from tests.conftest import make_hooked, random_images


def reflect_upsample(cells, out_h, out_w):
    """scikit-image's resize(order=1, mode="reflect", anti_aliasing=False) written out pixel by pixel:
    pixel centres at (o + 0.5) * n_in / n_out - 0.5 cells, the grid padded by numpy's "reflect" (edge not
    repeated), then the two-point linear blend per axis."""
    s_h, s_w = cells.shape
    padded = np.pad(np.asarray(cells, dtype=np.float64), 1, mode="reflect")  # index i -> i + 1
    out = np.empty((out_h, out_w))
    for r in range(out_h):
        y = (r + 0.5) * s_h / out_h - 0.5
        y0 = math.floor(y)
        fy = y - y0
        for c in range(out_w):
            x = (c + 0.5) * s_w / out_w - 0.5
            x0 = math.floor(x)
            fx = x - x0
            a, b = padded[y0 + 1, x0 + 1], padded[y0 + 1, x0 + 2]
            d, e = padded[y0 + 2, x0 + 1], padded[y0 + 2, x0 + 2]
            out[r, c] = (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * d + fx * e)
    return out


def slow_rise_masks(cells, shifts, size, grid):
    """The reference recipe mask by mask: upsample the cells to (s+1)*cell, crop at the shift."""
    up = ((grid + 1) * math.ceil(size[0] / grid), (grid + 1) * math.ceil(size[1] / grid))
    out = []
    for i in range(len(cells)):
        big = reflect_upsample(cells[i, 0].numpy(), *up)
        out.append(big[shifts[i, 0]:shifts[i, 0] + size[0], shifts[i, 1]:shifts[i, 1] + size[1]])
    return torch.tensor(np.stack(out))


def fixed_masks(size, grid):
    """RiseMasks with hand-picked cells (a checkerboard, one lit corner, a lit edge row, all on) and shifts
    at both ends of their range and in between."""
    masks = RiseMasks(4, size, grid, 0.5, seed=0)
    checker = (torch.arange(grid)[:, None] + torch.arange(grid)[None, :]) % 2 == 0
    corner = torch.zeros(grid, grid, dtype=torch.bool)
    corner[0, -1] = True
    edge = torch.zeros(grid, grid, dtype=torch.bool)
    edge[-1] = True
    masks.cells = torch.stack([checker, corner, edge, torch.ones(grid, grid, dtype=torch.bool)])[:, None]
    ch, cw = masks.cell
    masks.shifts = torch.tensor([[0, 0], [ch - 1, cw - 1], [ch // 2, 0], [0, cw - 1]])
    return masks


@pytest.mark.parametrize("size,grid", [((64, 64), 5), ((64, 64), 7), ((48, 40), 3), ((20, 20), 1)])
def test_masks_reflect_at_the_border_like_the_reference(size, grid):
    masks = fixed_masks(size, grid)
    got = masks(0, 4, dtype=torch.float64)[:, 0]
    expected = slow_rise_masks(masks.cells, masks.shifts, size, grid)
    assert got.shape == (4, *size)
    assert (got - expected).abs().max() <= 1e-12
    assert torch.equal(masks(1, 3, dtype=torch.float64)[:, 0], got[1:3])  # chunking changes nothing
    # what scikit-image runs inside resize(mode="reflect"): scipy's zoom, grid_mode, mode "mirror"
    from scipy.ndimage import zoom

    up = masks.up_size
    for i in range(4):
        cells = masks.cells[i, 0].numpy().astype(np.float64)
        big = zoom(cells, (up[0] / grid, up[1] / grid), order=1, mode="mirror", grid_mode=True)
        r, c = masks.shifts[i].tolist()
        assert np.abs(big[r:r + size[0], c:c + size[1]] - got[i].numpy()).max() <= 1e-12
    if grid > 1:  # the old clamped upsampling (torch bilinear) differs along the border
        clamped = F.interpolate(masks.cells[:1].double(), size=up, mode="bilinear", align_corners=False)[0, 0]
        assert (clamped[:size[0], :size[1]] - got[0]).abs().max() > 0.1


def test_masks_equal_scikit_image_resize_when_it_is_installed():
    transform = pytest.importorskip("skimage.transform")
    size, grid = (64, 64), 7
    masks = fixed_masks(size, grid)
    got = masks(0, 4)[:, 0]  # float32, as the reference stores them
    for i in range(4):
        cells = masks.cells[i, 0].numpy().astype("float32")
        big = transform.resize(cells, masks.up_size, order=1, mode="reflect", anti_aliasing=False)
        r, c = masks.shifts[i].tolist()
        assert np.abs(big[r:r + size[0], c:c + size[1]] - got[i].numpy()).max() <= 1e-6


def test_rise_equals_an_explicit_weighted_sum_over_masks():
    model = make_hooked("vit")
    images = random_images(model, 2, seed=2)
    n, grid, p = 12, 5, 0.4
    rise = RISE(model, n_masks=n, grid=grid, p_keep=p, seed=3, batch_size=7)
    got = rise.attribute_pixels(images, target=torch.tensor([1, 4]))
    g = torch.Generator().manual_seed(3)  # the draws RiseMasks makes from its seed, in its order
    cells = torch.rand(n, 1, grid, grid, generator=g) < p
    shifts = torch.stack([torch.randint(0, math.ceil(64 / grid), (n,), generator=g) for _ in range(2)], 1)
    masks = slow_rise_masks(cells, shifts, (64, 64), grid).float()
    assert torch.allclose(RiseMasks(n, (64, 64), grid, p, seed=3)(5, 12)[:, 0], masks[5:12], atol=1e-6)
    assert masks.min() >= 0 and masks.max() <= 1 and not torch.equal(masks[0], masks[1])
    for b, t in enumerate([1, 4]):
        expected = torch.zeros(64, 64)
        for i in range(n):  # blank "mean" = 0 after normalization: the image times the mask
            with torch.no_grad():
                prob = model((images[b] * masks[i])[None]).softmax(-1)[0, t]
            expected += prob * masks[i]
        expected /= n * p
        assert torch.allclose(got[b], expected, atol=1e-5)
    patches = rise.attribute(images, target=torch.tensor([1, 4]))
    assert patches.shape == (2, 4, 4)
    assert torch.allclose(patches[1, 2, 3], got[1, 32:48, 48:64].mean(), atol=1e-6)


def test_rise_is_deterministic_with_a_seed():
    model = make_hooked("dinov2")
    images = random_images(model, 1, seed=5)
    a = RISE(model, n_masks=16, seed=1).attribute(images, 2)
    b = RISE(model, n_masks=16, seed=1).attribute(images, 2)
    c = RISE(model, n_masks=16, seed=2).attribute(images, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with torch.inference_mode():
        assert torch.equal(RISE(model, n_masks=16, seed=1).attribute(images, 2), a)


def test_rise_ranks_the_informative_patch_first():
    model, patch, image, target = one_patch_setup()
    sal = RISE(model, n_masks=2000, grid=4, seed=0).attribute(image, target=target)
    assert int(sal.flatten().argmax()) == patch
