"""The gradient methods explain any differentiable score of the output (``score=`` callable), which is how
headless models are explained; class targets keep working and the predicted class costs no extra forward."""
import copy

import pytest
import torch

from caap.registry import get_method
from tests.conftest import make_hooked, make_timm, random_images
from vit_lens import HookedViT

GRADIENT_METHODS = ["grad-cam", "ixg", "ixg+", "libra-ixg+", "gae"]


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_callable_on_a_headless_model_equals_a_one_class_linear_head(name):
    headless_timm = make_timm("clip_headless")
    headed_timm = copy.deepcopy(headless_timm)
    headed_timm.reset_classifier(1)
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(1, headless_timm.embed_dim, generator=g), torch.randn(1, generator=g)
    with torch.no_grad():
        headed_timm.head.weight.copy_(w)
        headed_timm.head.bias.copy_(b)
    headless, headed = HookedViT.from_timm(headless_timm), HookedViT.from_timm(headed_timm)
    assert headless.cfg.num_classes == 0 and headed.cfg.num_classes == 1
    images = random_images(headless, 2)

    def project(embedding):  # the head written out by hand: what a user's cosine/projection looks like
        return (embedding * w[0]).sum(-1) + b[0]

    expected = get_method(name, headed, score="logit").attribute(images, target=0)
    got = get_method(name, headless, score=project).attribute(images)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert expected.abs().sum() > 0


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("kind", ["logit", "prob"])
def test_callable_equals_the_class_score_and_predicted_class_equals_its_argmax(name, kind):
    model = make_hooked("vit")
    images = random_images(model, 3)
    target = torch.tensor([3, 0, 5])
    pick = (lambda out: out.gather(1, target[:, None])[:, 0]) if kind == "logit" else \
        (lambda out: out.softmax(-1).gather(1, target[:, None])[:, 0])
    by_class = get_method(name, model, score=kind).attribute(images, target=target)
    by_callable = get_method(name, model, score=pick).attribute(images)
    assert torch.allclose(by_callable, by_class, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        predicted = model(images).argmax(-1)
    method = get_method(name, model, score=kind)
    assert torch.allclose(method.attribute(images), method.attribute(images, target=predicted), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_bad_scores_and_targets_are_refused(name):
    headless = make_hooked("clip_headless")
    images = random_images(headless, 2)
    with pytest.raises(ValueError, match=r"no classifier head \(num_classes=0\): pass score=<callable"):
        get_method(name, headless).attribute(images)
    with pytest.raises(ValueError, match="score must be one of .* or a callable"):
        get_method(name, headless, score="cosine")
    with pytest.raises(ValueError, match=r"target must be None when score is a callable .*; got target=1"):
        get_method(name, headless, score=lambda e: e.sum(-1)).attribute(images, target=1)
    with pytest.raises(ValueError, match=r"must return one score per image, shape \[2\]; got \(2, 48\)"):
        get_method(name, headless, score=lambda e: e).attribute(images)
