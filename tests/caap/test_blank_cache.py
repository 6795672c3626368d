"""The cached blank context follows the model's weights, dtype and hooks, and its memory is bounded (issue 13)."""
import copy

import pytest
import torch

import caap.blanks as blanks
from caap import CAAP
from tests.conftest import make_hooked, random_images


@pytest.fixture(autouse=True)
def empty_cache():
    blanks.clear_cache()
    yield
    blanks.clear_cache()


def fresh_map(model, images, **options):
    """The map of an identical model object that has never been cached."""
    return CAAP(copy.deepcopy(model), **options).attribute(images, target=2)


@pytest.mark.parametrize("engine", ["parallel", "efficient"])
def test_load_state_dict_invalidates_the_blank_context(engine):
    model, other = make_hooked("dinov2", seed=0), make_hooked("dinov2", seed=5)
    images = random_images(model, 2)
    caap = CAAP(model, engine=engine)
    before = caap.attribute(images, target=2)
    model.load_state_dict(other.state_dict())
    after = caap.attribute(images, target=2)
    torch.testing.assert_close(after, fresh_map(other, images, engine=engine))
    assert (after - before).abs().max() > 1e-3


def test_in_place_weight_edit_invalidates_the_blank_context():
    model = make_hooked("vit")
    images = random_images(model, 1)
    caap = CAAP(model)
    before = caap.attribute(images, target=2)
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight.mul_(1.5)
    after = caap.attribute(images, target=2)
    torch.testing.assert_close(after, fresh_map(model, images))
    assert (after - before).abs().max() > 1e-4


def test_dtype_change_recomputes_the_blank_context():
    model = make_hooked("vit")
    images = random_images(model, 1)
    CAAP(model).attribute(images, target=2)
    model.to(torch.float64)
    after = CAAP(model).attribute(images.double(), target=2)
    assert after.dtype == torch.float64
    torch.testing.assert_close(after, fresh_map(model, images.double()))


def test_hooks_added_after_caching_are_seen_by_the_blank_context():
    model = make_hooked("vit")
    images = random_images(model, 1)
    CAAP(model).attribute(images, target=2)  # caches the hook-free blank
    ablate = lambda z, hook: z * torch.tensor([1.0, 0.0, 1.0])[:, None]  # noqa: E731  head 1 off
    model.add_hook("blocks.1.attn.hook_z", ablate, is_permanent=True)
    try:
        parallel = CAAP(model).attribute(images, target=2)
        white = torch.ones(3, *model.cfg.image_size)  # a tensor blank is never cached: the reference
        loop = CAAP(model, engine="loop", blank=white).attribute(images, target=2)
    finally:
        model.reset_hooks(including_permanent=True)
    torch.testing.assert_close(parallel, loop, rtol=1e-4, atol=1e-5)
    assert (parallel - CAAP(model).attribute(images, target=2)).abs().max() > 1e-4


def test_cache_is_counted_cleared_and_bounded(monkeypatch):
    model = make_hooked("vit")
    images = random_images(model, 1)
    CAAP(model).attribute(images)
    info = blanks.cache_info()
    assert info["entries"] == 1 and info["bytes"] > 0
    CAAP(model, engine="efficient").attribute(images)
    assert blanks.cache_info()["bytes"] > info["bytes"]  # the E-CAAP statistics are counted
    blanks.clear_cache(model)
    assert blanks.cache_info() == {"entries": 0, "bytes": 0, "limit_bytes": info["limit_bytes"]}
    monkeypatch.setattr(blanks, "CACHE_LIMIT_GB", 1e-9)  # room for the context in use only
    for kind in ("white", "black", "mean"):
        CAAP(model, blank=kind).attribute(images)
        assert blanks.cache_info()["entries"] == 1


@pytest.mark.parametrize("blank, error, match", [
    (torch.full((3, 64, 64), float("nan")), ValueError, "NaN or Inf"),
    (torch.zeros(3, 64, 64, dtype=torch.uint8), TypeError, "floating point.*uint8"),
    (torch.full((3, 64, 64), 2.0), ValueError, r"\[0, 1\].*range \[2, 2\]"),
    (["white"], ValueError, "blank must be one of"),
])
def test_bad_blank_tensors_are_refused(blank, error, match):
    with pytest.raises(error, match=match):
        CAAP(make_hooked("vit"), blank=blank)
