import pytest
import torch
import torch.nn.functional as F

from caap import CAAP, blank_image, default_layers, neighbourhood
from tests.conftest import make_hooked, random_images


def test_default_layers_follow_the_paper():
    assert default_layers(12) == (0, 8)
    assert default_layers(24) == (0, 16)
    assert default_layers(40) == (0, 27)
    assert default_layers(3) == (0, 2)
    assert CAAP(make_hooked("vit")).layers == (0, 2)
    assert CAAP(make_hooked("vit"), layers=range(1, 3)).layers == (1, 2)


@pytest.mark.parametrize("layers,error,match", [((2, 1), ValueError, "0 <= start <= end"),
                                                ((0, 3), ValueError, "n_layers=3"),
                                                ([0, 2, 1], ValueError, "consecutive"),
                                                ("ab", TypeError, "layers must be")])
def test_bad_layers(layers, error, match):
    with pytest.raises(error, match=match):
        CAAP(make_hooked("vit"), layers=layers)


def caap_by_definition(model, image, target, patch_index, layers, blank="white"):
    """Paper Eq. 2-3 for one patch, with hooks: source activations at S(p) for blocks in `layers`, all
    other patch tokens from the blank run, CLS recomputed."""
    blank_x = blank_image(model, blank)
    names = lambda n: n.endswith("hook_resid_pre")  # noqa: E731
    _, src = model.run_with_cache(image, names_filter=names)
    _, tgt = model.run_with_cache(blank_x, names_filter=names)
    row, col = model.layout.row_col(patch_index)
    S = [model.layout.token_position(i) for i in neighbourhood(row, col, model.cfg.grid_size, "box", 1)]
    n_pre = model.cfg.n_prefix_tokens

    def edit(resid, hook):
        b = int(hook.name.split(".")[1])
        resid = resid.clone()
        others = [p for p in range(n_pre, model.cfg.n_tokens) if p not in S]
        resid[:, others] = tgt[hook.name][:, others]
        if layers[0] <= b <= layers[1]:
            resid[:, S] = src[hook.name][:, S]
        return resid

    with torch.no_grad():
        logits = model.run_with_hooks(blank_x, fwd_hooks=[(f"blocks.{b}.hook_resid_pre", edit)
                                                          for b in range(model.cfg.n_layers)])
    return logits[0, target].item()


@pytest.mark.parametrize("family", ["vit", "dinov2_reg", "clip_quickgelu"])
def test_caap_matches_the_definition(family):
    model = make_hooked(family)
    image = random_images(model, 1, seed=7)
    caap = CAAP(model, layers=(0, 1))
    attribution = caap.attribute(image, target=3)
    assert attribution.shape == (1, *model.cfg.grid_size)
    for patch in (0, 5, model.cfg.n_patches - 1):
        row, col = model.layout.row_col(patch)
        assert attribution[0, row, col].item() == pytest.approx(
            caap_by_definition(model, image, 3, patch, (0, 1)), abs=1e-4)


@pytest.mark.parametrize("family", ["deit3", "dinov2_reg"])
def test_engines_agree(family):
    model = make_hooked(family)
    images = random_images(model, 2, seed=5)
    loop = CAAP(model, engine="loop").attribute(images)
    parallel = CAAP(model, engine="parallel", chunk_size=3).attribute(images)
    efficient = CAAP(model, engine="efficient").attribute(images)
    scale = loop.abs().max()
    assert (parallel - loop).abs().max() <= 1e-4 * scale
    assert 0 < (efficient - loop).abs().max() <= 0.2 * scale


def test_efficient_is_exact_when_the_source_is_the_blank():
    model = make_hooked("dinov2_reg")
    blank_x = blank_image(model, "white")
    exact = CAAP(model, engine="parallel").attribute(blank_x, target=1)
    approx = CAAP(model, engine="efficient").attribute(blank_x, target=1)
    assert (approx - exact).abs().max() <= 1e-5 * exact.abs().max()


def test_targets_scores_and_batches():
    model = make_hooked("vit")
    images = random_images(model, 3, seed=2)
    caap = CAAP(model, batch_size=2)
    predicted = model(images).argmax(-1)
    default = caap.attribute(images)
    assert torch.allclose(default, caap.attribute(images, target=predicted))
    assert torch.allclose(caap.attribute(images[1:2], target=int(predicted[1])), default[1:2], atol=1e-5)
    other = (predicted + 1) % model.cfg.num_classes
    assert not torch.allclose(caap.attribute(images, target=other), default, atol=1e-3)
    probs = CAAP(model, score="prob").attribute(images)
    assert (probs > 0).all() and (probs < 1).all()
    pixels = caap.attribute_pixels(images)
    assert pixels.shape == (3, 64, 64)
    assert pixels[0, 0, 0] == pytest.approx(default[0, 0, 0].item(), abs=1e-5)  # bilinear clamps at the border
    assert pixels[0, 0, 0] != pixels[0, 0, 16]  # and interpolates between patch centres


def test_callable_score_on_a_headless_clip_tower():
    model = make_hooked("clip_headless")
    images = random_images(model, 2, seed=3)
    text = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def cosine_to_text(output):  # [batch, K, d_model] -> [batch, K]
        return F.cosine_similarity(output, text.expand_as(output), dim=-1)

    loop = CAAP(model, score=cosine_to_text, engine="loop").attribute(images)
    parallel = CAAP(model, score=cosine_to_text).attribute(images)
    assert loop.shape == (2, 4, 4) and loop.abs().max() <= 1
    assert (parallel - loop).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="no classifier head"):
        CAAP(model).attribute(images)


@pytest.mark.parametrize("kwargs,match", [(dict(engine="fast"), "engine must be one of"),
                                          (dict(score="softmax"), "score must be one of"),
                                          (dict(blank="grey"), "blank must be one of")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CAAP(make_hooked("vit"), **kwargs)


def test_bad_targets_and_images():
    model = make_hooked("vit")
    images = random_images(model, 2)
    with pytest.raises(ValueError, match=r"in \[0, 7\)"):
        CAAP(model).attribute(images, target=7)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        CAAP(model).attribute(images, target=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="64x64 pixels"):
        CAAP(model).attribute(torch.randn(1, 3, 32, 32))
