"""MPRT: a weight-blind map passes as similarity 1 (fails the check), grad-cam changes; cascading step 1 equals
independent block L-1; the original model is untouched."""
import pytest
import torch

from analysis.metrics import Context, get_metric
from analysis.metrics.mprt import block_similarities
from caap import get_method
from tests.conftest import make_hooked, random_images


def test_mprt_separates_weight_blind_maps_and_keeps_the_model():
    model = make_hooked("vit")
    image = random_images(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def rebuild(name, m):
        if name == "blind":  # depends on the image only, never on the weights
            gh, gw = m.cfg.grid_size
            return lambda x, t: torch.nn.functional.adaptive_avg_pool2d(x.abs().sum(1, keepdim=True), (gh, gw))[:, 0]
        return get_method(name, m).attribute

    ctx = Context(model, image, 1, None, None, rebuild=rebuild, seed=0)
    maps = [rebuild(n, model)(image, torch.tensor([1])) for n in ("blind", "grad-cam")]
    rows = get_metric("mprt").score(ctx, ["blind", "grad-cam"], maps)
    assert rows[0]["mprt"] == pytest.approx(1.0) and rows[0]["mprt_blocks"]["ssim"] == pytest.approx([1.0] * 3)
    assert rows[1]["mprt"] < 0.9 and rows[1]["mprt_blocks"]["block"] == [2, 1, 0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    independent = block_similarities(ctx, "grad-cam", maps[1], "independent")
    assert independent["spearman"][0] == rows[1]["mprt_blocks"]["spearman"][0]
    with pytest.raises(ValueError, match="mprt mode must be one of"):
        get_metric("mprt", mode="bottom-up")


def test_mprt_scores_a_constant_randomized_map_as_zero_correlation_without_a_warning():
    """A map that goes flat once the weights are randomized (Grad-CAM's ReLU can zero it) has no ranks: Spearman
    is undefined, recorded as 0 (decorrelated), and scipy's ConstantInputWarning is not leaked to the user."""
    import warnings

    model = make_hooked("vit")
    image = random_images(model, 1)
    gh, gw = model.cfg.grid_size
    original = torch.arange(gh * gw, dtype=torch.float32).view(1, gh, gw)

    def rebuild(name, m):
        return lambda x, t: torch.zeros(1, gh, gw)

    ctx = Context(model, image, 1, None, None, rebuild=rebuild, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = get_metric("mprt").score(ctx, ["flat"], [original])
    assert rows[0]["mprt_blocks"]["spearman"] == [0.0, 0.0, 0.0] and rows[0]["mprt"] == 0.0


def test_methods_scored_together_share_the_randomized_copy_without_changing_any_map():
    """score() randomizes each block once per image for all its methods; every method's per-block numbers equal
    block_similarities run for that method alone (a hook or state left behind by one method would show here)."""
    model = make_hooked("vit")
    image = random_images(model, 1)
    names = ["caap", "grad-cam", "gae", "t-attr", "ixg+", "rollout"]
    ctx = Context(model, image, 1, None, None, rebuild=lambda n, m: get_method(n, m).attribute, seed=3)
    maps = [get_method(n, model).attribute(image, torch.tensor([1])) for n in names]
    together = get_metric("mprt").score(ctx, names, maps)
    for name, m, row in zip(names, maps, together):
        alone = block_similarities(ctx, name, m)
        assert row["mprt_blocks"] == alone, name
    assert len({row["mprt"] for row in together}) > 2  # the methods differ: the comparison means something
