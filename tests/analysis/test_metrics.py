import pytest
import torch

from analysis.metrics import auc, aupr, blur, perturbation_curves, pointing_game
from tests.conftest import make_hooked, random_images


def test_curves_follow_the_ranking():
    model = make_hooked("vit")  # 64x64 input
    x = random_images(model, 2, seed=1)
    target = torch.tensor([1, 4])
    ranking = torch.arange(64 * 64, dtype=torch.float32).flip(0).view(64, 64)  # row-major first = most important
    maps = torch.stack([ranking, ranking.t()])
    dele = perturbation_curves(model, x, maps, target, mode="deletion", n_steps=4, batch_size=3)
    ins = perturbation_curves(model, x, maps, target, mode="insertion", n_steps=4)
    with torch.no_grad():
        prob = lambda img, i: model(img).softmax(-1)[0, target[i]].item()  # noqa: E731
        half_deleted = x[0:1].clone()
        half_deleted[..., :32, :] = 0  # the top half: 2048 highest-ranked pixels of image 0
        left_inserted = blur(x[1:2]).clone()
        left_inserted[..., :, :16] = x[1:2, :, :, :16]  # 1024 highest of image 1 (transposed ranking)
        assert dele[0, 0].item() == pytest.approx(prob(x[0:1], 0), abs=1e-6)
        assert dele[0, 2].item() == pytest.approx(prob(half_deleted, 0), abs=1e-6)
        assert dele[0, 4].item() == pytest.approx(prob(torch.zeros_like(x[0:1]), 0), abs=1e-6)
        assert ins[1, 1].item() == pytest.approx(prob(left_inserted, 1), abs=1e-6)
        assert ins[1, 4].item() == pytest.approx(prob(x[1:2], 1), abs=1e-6)
    assert dele.shape == ins.shape == (2, 5)


def test_patch_level_maps_are_upsampled():
    model = make_hooked("vit")
    x = random_images(model, 1)
    coarse = torch.rand(1, 4, 4)
    fine = torch.nn.functional.interpolate(coarse[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    a = perturbation_curves(model, x, coarse, torch.tensor([0]), n_steps=3)
    b = perturbation_curves(model, x, fine, torch.tensor([0]), n_steps=3)
    assert torch.allclose(a, b)


def test_auc():
    assert auc(torch.ones(1, 5)).item() == pytest.approx(1.0)
    assert auc(torch.linspace(0, 1, 11)[None]).item() == pytest.approx(0.5)
    assert auc(torch.tensor([[1.0, 0.0, 0.0]])).item() == pytest.approx(0.25)


def test_aupr_and_pointing_game():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 8:24] = True
    perfect = mask.float()
    assert aupr(perfect, mask) == pytest.approx((1.0, 1.0))
    inverted = aupr(1 - perfect, mask)
    assert inverted == pytest.approx((0.125, 0.875))  # chance level: the prevalences of foreground and background
    g = torch.Generator().manual_seed(0)
    noise = aupr(torch.rand(32, 32, generator=g), mask)
    assert noise[0] == pytest.approx(mask.float().mean().item(), abs=0.05)
    peak = torch.zeros(4, 4)
    peak[1, 2] = 1  # patch-level map: its maximum upsamples into the foreground
    assert pointing_game(peak, mask)
    peak = torch.zeros(4, 4)
    peak[3, 0] = 1
    assert not pointing_game(peak, mask)
    with pytest.raises(ValueError, match="both foreground and background"):
        aupr(perfect, torch.ones(32, 32, dtype=torch.bool))


def test_bad_arguments():
    model = make_hooked("vit")
    x = random_images(model, 1)
    with pytest.raises(ValueError, match="mode must be"):
        perturbation_curves(model, x, torch.rand(1, 4, 4), torch.tensor([0]), mode="erase")
    with pytest.raises(ValueError, match="attributions batch 2"):
        perturbation_curves(model, x, torch.rand(2, 4, 4), torch.tensor([0]))
