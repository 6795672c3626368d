"""Metric entry points refuse what they would otherwise silently misread (issue 18): non-integer class
targets (2.9 was truncated to class 2, True read as class 1) and batched maps given to the per-image
localization metrics."""
import pytest
import torch

from analysis.evaluate import score_attribution
from analysis.metrics import aupr, curves_for, perturbation_curves, pointing_game
from tests.conftest import make_hooked, random_images

MODEL = make_hooked("vit")  # 7 classes, 64 px, 4x4 patches
X = random_images(MODEL, 2)
MAPS = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("target,error,regex", [
    (2.9, TypeError, r"target must be .*got 2\.9 \(float\)"),
    (True, TypeError, r"target must be .*got True \(bool\)"),
    (torch.tensor([1.0, 2.5]), TypeError, r"target must hold integer class indices; got dtype torch\.float32"),
    (torch.tensor([True, False]), TypeError, r"target must hold integer class indices; got dtype torch\.bool"),
    ("3", TypeError, r"target must be .*got '3' \(str\)"),
    (None, ValueError, r"target must be an int class index or one per image .*got None"),
    ([0, 1, 2], ValueError, r"target must be an int or one class per image \(shape \[2\]\); got shape \(3,\)"),
    (-1, ValueError, r"target must be in \[0, 7\); got \[-1, -1\]"),
])
def test_perturbation_curves_refuse_non_class_targets(target, error, regex):
    with pytest.raises(error, match=regex):
        perturbation_curves(MODEL, X, MAPS, target, n_steps=2)
    with pytest.raises(error, match=regex):
        curves_for(MODEL, X, MAPS, target, n_steps=2)


def test_integer_targets_still_work_and_float_targets_are_not_truncated():
    """The int, numpy and tensor spellings of class 2 give the same curve; 2.9 is refused, not class 2."""
    import numpy as np

    ref = perturbation_curves(MODEL, X, MAPS, 2, n_steps=2)
    for same in (torch.tensor([2, 2]), np.int64(2), [2, 2]):
        assert torch.equal(perturbation_curves(MODEL, X, MAPS, same, n_steps=2), ref)
    with pytest.raises(TypeError, match=r"target must hold integer class indices; got dtype torch\.float32"):
        score_attribution(MODEL, X[:1], MAPS[:1], 2.9)
    with pytest.raises(TypeError, match=r"target must hold integer class indices; got dtype torch\.bool"):
        score_attribution(MODEL, X[:1], MAPS[:1], True)


@pytest.mark.parametrize("metric", [aupr, pointing_game])
def test_localization_metrics_take_one_image(metric):
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:16] = True
    with pytest.raises(ValueError, match=r"attribution must be a 2-D \[h, w\] tensor for one image; got shape "
                                         r"\(1, 4, 4\)"):
        metric(MAPS[:1], mask)
    with pytest.raises(ValueError, match=r"mask must be a 2-D \[H, W\] tensor .*got shape \(1, 64, 64\)"):
        metric(MAPS[0], mask[None])
    with pytest.raises(ValueError, match=r"ignore must have the mask's shape \(64, 64\); got \(32, 32\)"):
        metric(MAPS[0], mask, torch.zeros(32, 32, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attribution must be a torch\.Tensor \[h, w\]; got ndarray"):
        metric(MAPS[0].numpy(), mask)
    metric(MAPS[0], mask)  # one image is accepted
