"""Random Logit equals Quantus' RandomLogit (called on the same model, maps and seed)."""
import numpy as np
import pytest
import torch

from analysis.metrics import Context, get_metric, to_pixels
from analysis.metrics.random_logit import image_seed, off_class, similarity
from caap import get_method
from tests.conftest import make_hooked, random_images


def test_random_logit_equals_quantus():
    quantus = pytest.importorskip("quantus")
    model = make_hooked("vit")
    images = random_images(model, 1)
    method = get_method("grad-cam", model).attribute
    size = tuple(images.shape[-2:])

    def explain(model, inputs, targets, **kwargs):  # Quantus' explain_func: maps at input resolution
        x = torch.as_tensor(inputs, dtype=torch.float32)
        return to_pixels(method(x, torch.as_tensor(targets).long()).detach(), size)[:, None].numpy()

    target = 2
    ctx = Context(model, images, target, None, None, {"grad-cam": method}, sample="im0", seed=3)
    seed = image_seed(3, "im0")
    row = get_metric("random-logit").score(ctx, ["grad-cam"], [method(images, torch.tensor([target]))])[0]
    metric = quantus.RandomLogit(num_classes=model.cfg.num_classes, seed=seed, disable_warnings=True)
    a = explain(model, images.numpy(), np.array([target]))
    expected = metric(model=model, x_batch=images.numpy(), y_batch=np.array([target]), a_batch=a,
                      explain_func=explain, device="cpu")
    assert row["random_logit"] == pytest.approx(float(expected[0]), abs=1e-6)
    assert row["off_class"] == off_class(target, model.cfg.num_classes, seed) != target


def test_similarity_is_one_for_a_rescaled_map_and_lower_otherwise():
    a = np.random.default_rng(0).random((16, 16))
    assert similarity(a, 3 * a) == pytest.approx(1.0)
    assert similarity(a, np.random.default_rng(1).random((16, 16))) < 0.5
    with pytest.raises(ValueError, match=">= 2 classes"):
        off_class(0, 1, 0)
