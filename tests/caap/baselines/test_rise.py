import math

import torch
import torch.nn.functional as F

from caap.baselines.rise import RISE, RiseMasks
from tests.caap.baselines.toy import one_patch_setup
from tests.conftest import make_hooked, random_images


def slow_rise_masks(n, size, grid, p, seed):
    """The reference recipe mask by mask: cells, upsample to (s+1)*cell, crop at the shift."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.rand(n, 1, grid, grid, generator=g) < p
    sh = torch.randint(0, math.ceil(size[0] / grid), (n,), generator=g)
    sw = torch.randint(0, math.ceil(size[1] / grid), (n,), generator=g)
    up = ((grid + 1) * math.ceil(size[0] / grid), (grid + 1) * math.ceil(size[1] / grid))
    out = []
    for i in range(n):
        big = F.interpolate(cells[i:i + 1].float(), size=up, mode="bilinear", align_corners=False)[0, 0]
        out.append(big[sh[i]:sh[i] + size[0], sw[i]:sw[i] + size[1]])
    return torch.stack(out)


def test_rise_equals_an_explicit_weighted_sum_over_masks():
    model = make_hooked("vit")
    images = random_images(model, 2, seed=2)
    n, grid, p = 12, 5, 0.4
    rise = RISE(model, n_masks=n, grid=grid, p_keep=p, seed=3, batch_size=7)
    got = rise.attribute_pixels(images, target=torch.tensor([1, 4]))
    masks = slow_rise_masks(n, (64, 64), grid, p, seed=3)
    assert torch.equal(RiseMasks(n, (64, 64), grid, p, seed=3)(5, 12)[:, 0], masks[5:12])
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
