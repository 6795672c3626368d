"""Infidelity / Max-Sensitivity: Captum's functions on the method's map, with the documented settings."""
import pytest
import torch
from captum.metrics import infidelity, sensitivity_max

from analysis.metrics import Context, get_metric, to_pixels
from analysis.metrics.random_logit import image_seed
from caap import get_method
from tests.conftest import make_hooked, random_images


def test_infidelity_equals_captum_by_hand():
    model = make_hooked("vit")
    image = random_images(model, 1)
    m = torch.rand(1, *model.cfg.grid_size, generator=torch.Generator().manual_seed(0))
    ctx = Context(model, image, 1, None, None, sample="x", seed=0, batch_size=4)
    got = get_metric("infidelity").score(ctx, ["a"], [m])[0]["infidelity"]
    gen = torch.Generator().manual_seed(image_seed(0, "x"))

    def perturb(x):
        noise = torch.randn(x.shape, generator=gen) * 0.1
        return noise, x - noise

    attribution = to_pixels(m, image.shape[-2:])[:, None].expand(-1, 3, -1, -1)
    expected = infidelity(lambda x: model(x).softmax(-1), perturb, image, attribution, target=1,
                          n_perturb_samples=16, normalize=True)
    assert got == pytest.approx(float(expected[0]), rel=1e-5) and got > 0


def test_max_sensitivity_is_zero_for_an_input_independent_map_and_positive_for_grad_cam():
    model = make_hooked("vit")
    image = random_images(model, 1)
    grad_cam = get_method("grad-cam", model).attribute
    explain = {"const": lambda x, t: torch.ones(x.shape[0], *model.cfg.grid_size), "grad-cam": grad_cam}
    ctx = Context(model, image, 1, None, None, explain, sample="x", batch_size=4)
    maps = [explain[n](image, torch.tensor([1])) for n in explain]
    rows = get_metric("max-sensitivity").score(ctx, list(explain), maps)
    assert rows[0]["max_sens"] == 0.0 and rows[1]["max_sens"] > 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(image_seed(0, "x") + 1)
        expected = sensitivity_max(lambda x, target: (grad_cam(x[0], target).detach(),), (image,), perturb_radius=0.02,
                                   n_perturb_samples=10, target=torch.tensor([1]))
    assert rows[1]["max_sens"] == pytest.approx(float(expected[0]), rel=1e-5)
