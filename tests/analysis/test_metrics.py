"""Metrics against independent definitions: RISE's CausalMetric written out with numpy/scipy, Quantus'
Pointing Game tie rule, the paper's standard error."""
import logging

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate, gaussian_filter

from analysis.metrics import (auc, aupr, blur, curves_for, perturbation_curves, pointing_game, rise_kernel, standard_error,
                              step_counts)
from tests.conftest import make_hooked, random_images


def rise_gkern(klen=11, nsig=5):
    """RISE's evaluation.gkern: a delta smoothed by scipy's gaussian_filter."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    return gaussian_filter(inp, nsig)


def rise_causal_metric(model, img, explanation, mode, step, c):
    """RISE's CausalMetric.single_run, one forward per step, numpy pixel copies (step pixels per step)."""
    _, ch, h, w = img.shape
    hw = h * w
    n_steps = (hw + step - 1) // step
    img_np = img[0].numpy().astype(np.float64)
    k = rise_gkern()
    blurred = np.stack([correlate(img_np[i], k, mode="constant", cval=0.0) for i in range(ch)])
    start, finish = (img_np.copy(), np.zeros_like(img_np)) if mode == "del" else (blurred, img_np.copy())
    order = np.argsort(-explanation.reshape(hw), kind="stable")  # descending, ties in raster order
    scores = []
    for i in range(n_steps + 1):
        with torch.no_grad():
            x = torch.from_numpy(start).float()[None]
            scores.append(model(x).softmax(-1)[0, c].item())
        coords = order[step * i:step * (i + 1)]
        start.reshape(ch, hw)[:, coords] = finish.reshape(ch, hw)[:, coords]
    return np.array(scores)


def test_rise_kernel_and_blur_match_rise():
    assert torch.allclose(rise_kernel().double(), torch.from_numpy(rise_gkern()), atol=1e-7)
    x = torch.randn(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    ref = np.stack([correlate(x[0, i].numpy().astype(np.float64), rise_gkern(), mode="constant") for i in range(3)])
    assert np.allclose(blur(x)[0].numpy(), ref, atol=1e-5)  # old default (sigma 10, 61 px, reflect) fails


def test_curves_equal_rise_causal_metric_at_default_protocol():
    model = make_hooked("vit")  # 64x64 input: 64 pixels per step, 65 points
    x = random_images(model, 1, seed=3)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(64, 64, generator=g)
    with torch.no_grad():
        c = int(model(x).argmax())
    for mode, rise_mode in (("deletion", "del"), ("insertion", "ins")):
        ours = perturbation_curves(model, x, a[None], torch.tensor([c]), mode=mode, batch_size=7)
        ref = rise_causal_metric(model, x, a.numpy(), rise_mode, 64, c)
        assert ours.shape == (1, 65)
        assert np.allclose(ours[0].numpy(), ref, atol=1e-5)
        rise_auc = (ref.sum() - ref[0] / 2 - ref[-1] / 2) / (len(ref) - 1)
        assert auc(ours)[0].item() == pytest.approx(rise_auc, abs=1e-6)


def test_one_stream_across_modes_and_images_equals_rise_per_image():
    """Both modes of three images (different targets) in one batched stream, batches straddling image and
    mode boundaries (7 copies per batch, 65 points per curve), equal RISE run image by image."""
    model = make_hooked("vit")
    x = random_images(model, 3, seed=5)
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(3, 4, 4, generator=g)  # patch-level, upsampled bilinearly
    targets = torch.tensor([1, 4, 6])
    both = curves_for(model, x, maps, targets, batch_size=7)
    pixels = torch.nn.functional.interpolate(maps[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    for i in range(3):
        for mode, rise_mode in (("deletion", "del"), ("insertion", "ins")):
            ref = rise_causal_metric(model, x[i:i + 1], pixels[i, 0].numpy(), rise_mode, 64, int(targets[i]))
            assert np.allclose(both[mode][i].numpy(), ref, atol=1e-5), (i, mode)
    with pytest.raises(ValueError, match="modes must be"):
        curves_for(model, x, maps, targets, modes=("erase",))


def test_step_counts():
    assert step_counts(224 * 224, 224).tolist()[:3] == [0, 224, 448] and len(step_counts(224 * 224, 224)) == 225
    assert step_counts(10, 4).tolist() == [0, 4, 8, 10]  # the last step is capped
    assert step_counts(10, 4, n_steps=2).tolist() == [0, 5, 10]
    with pytest.raises(ValueError, match="not both"):
        step_counts(10, 4, pixels_per_step=2, n_steps=2)


def test_patch_level_maps_are_upsampled_and_batches_agree():
    model = make_hooked("vit")
    x = random_images(model, 2)
    coarse = torch.rand(2, 4, 4)
    fine = torch.nn.functional.interpolate(coarse[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    a = perturbation_curves(model, x, coarse, torch.tensor([0, 3]), n_steps=3, batch_size=1)
    b = perturbation_curves(model, x, fine, torch.tensor([0, 3]), n_steps=3, memory_budget_gb=4.0)
    assert torch.allclose(a, b, atol=1e-6)


def test_auc():
    assert auc(torch.ones(1, 5)).item() == pytest.approx(1.0)
    assert auc(torch.linspace(0, 1, 11)[None]).item() == pytest.approx(0.5)
    assert auc(torch.tensor([[1.0, 0.0, 0.0]])).item() == pytest.approx(0.25)


def test_aupr_and_ignore():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 8:24] = True
    perfect = mask.float()
    assert aupr(perfect, mask) == pytest.approx((1.0, 1.0))
    assert aupr(1 - perfect, mask) == pytest.approx((0.125, 0.875))  # chance: the prevalences
    wrong = perfect.clone()
    wrong[20:24, :] = 1.0  # background rows scored as high as the object ...
    ignore = torch.zeros_like(mask)
    ignore[20:24, :] = True  # ... but they are ignored
    assert aupr(wrong, mask, ignore) == pytest.approx((1.0, 1.0))
    assert aupr(wrong, mask)[0] < 1.0
    with pytest.raises(ValueError, match="both foreground and background"):
        aupr(perfect, torch.ones(32, 32, dtype=torch.bool))


def test_pointing_game_ties_as_quantus(caplog):
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:, 4:] = True
    tied = torch.zeros(8, 8)
    tied[0, 0] = tied[6, 6] = 1.0  # the first arg-max is background, a tied one foreground
    quantus_hit = bool(np.any(mask.flatten().numpy()[np.argwhere(tied.flatten().numpy() == tied.max().item())]))
    assert pointing_game(tied, mask) is quantus_hit is True
    peak = torch.zeros(4, 4)
    peak[3, 0] = 1
    assert not pointing_game(peak, mask)
    mask[0, 0] = True  # a constant map "points" at pixel 0: a miss, with a warning
    with caplog.at_level(logging.WARNING):
        assert pointing_game(torch.ones(8, 8), mask) is False
    assert "constant" in caplog.text


def test_standard_error_is_the_papers():
    hits = [1.0] * 64 + [0.0] * 64
    assert round(100 * standard_error(hits), 2) == 4.42  # the paper's 50.00 ± 4.42 at n = 128 (ddof=1: 4.44)


def test_bad_inputs():
    model = make_hooked("vit")
    x = random_images(model, 1)
    with pytest.raises(ValueError, match="mode must be"):
        perturbation_curves(model, x, torch.rand(1, 4, 4), torch.tensor([0]), mode="erase")
    with pytest.raises(ValueError, match="attributions batch 2"):
        perturbation_curves(model, x, torch.rand(2, 4, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"target must be in \[0, 7\); got \[99\]"):
        perturbation_curves(model, x, torch.rand(1, 4, 4), 99)
    bad = torch.rand(1, 4, 4)
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        perturbation_curves(model, x, bad, 0)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:8] = True
    with pytest.raises(ValueError, match="NaN/Inf"):
        aupr(bad[0], mask)
    with pytest.raises(ValueError, match="NaN/Inf"):
        pointing_game(torch.full((4, 4), float("inf")), mask)
