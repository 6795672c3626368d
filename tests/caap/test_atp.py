"""CAAP's attribution-patching engines (engine="atp"/"atp-star", methods caap-atp/caap-atp-star)."""
import pytest
import torch
from scipy.stats import spearmanr

from caap import CAAP, get_method
from caap.blanks import blank_context, blank_image
from tests.conftest import make_hooked, random_images
from vit_lens.patching import ClassScore, Intervention, cache_context
from vit_lens.patching.atp import run_atp


@pytest.fixture(scope="module")
def model():
    return make_hooked("dinov2_reg").double()


def test_registered(model):
    assert get_method("caap-atp", model).engine == "atp"
    assert get_method("caap-atp-star", model).engine == "atp-star"


@pytest.mark.parametrize("engine", ["atp", "atp-star"])
def test_caap_atp_is_run_atp_on_caaps_interventions(model, engine):
    """CAAP wires its neighbourhoods, layer range, blank context and readout into run_atp."""
    images = random_images(model, 3, seed=5).double()
    caap = CAAP(model, engine=engine, layers=(0, 1), score="prob", batch_size=2, progress=False)
    maps = caap.attribute(images, target=torch.tensor([0, 3, 6]))
    ivs = [Intervention.from_patches(model.layout, s, 0, 1) for s in caap.neighbourhoods]
    expected = run_atp(model, cache_context(model, images), blank_context(model), ivs,
                       ClassScore(torch.tensor([0, 3, 6]), "prob"), exact_prefix_attention=engine == "atp-star")
    assert maps.shape == (3, *model.cfg.grid_size)
    assert torch.allclose(maps.flatten(1), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("engine", ["atp", "atp-star"])
def test_the_blank_itself_gets_the_exact_map(model, engine):
    """Source = blank: every patch's estimate is the blank's score, as exact CAAP's is."""
    blank = blank_image(model)
    exact = CAAP(model, progress=False).attribute(blank, target=2)
    atp = CAAP(model, engine=engine, progress=False).attribute(blank, target=2)
    assert torch.allclose(atp, exact, rtol=1e-10)
    assert torch.allclose(atp, atp.flatten()[0].expand_as(atp))


def test_atp_maps_rank_patches_like_exact_caap(model):
    images = random_images(model, 2, seed=6).double()
    exact = CAAP(model, progress=False).attribute(images)
    for engine in ("atp", "atp-star"):
        estimate = CAAP(model, engine=engine, progress=False).attribute(images)
        for a, b in zip(exact, estimate):
            assert spearmanr(a.flatten(), b.flatten()).statistic > 0.6


def test_callable_score(model):
    direction = torch.randn(model.cfg.num_classes, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cosine = lambda out: torch.nn.functional.cosine_similarity(out, direction, dim=-1)  # noqa: E731
    blank = blank_image(model)
    exact = CAAP(model, score=cosine, progress=False).attribute(blank)
    assert torch.allclose(CAAP(model, engine="atp", score=cosine, progress=False).attribute(blank), exact, rtol=1e-10)


def test_refusals(model):
    with pytest.raises(ValueError, match="engine must be one of .*'atp', 'atp-star'"):
        CAAP(model, engine="atp*")
    with pytest.raises(ValueError, match="frozen_attention applies to engine='parallel' or 'efficient'"):
        CAAP(model, engine="atp", frozen_attention=object())
    with pytest.raises(ValueError, match="pooling='avg'"):
        CAAP(make_hooked("vit_avg"), engine="atp")


@pytest.mark.parametrize("engine", ["atp", "atp-star"])
def test_runs_under_inference_mode(model, engine):
    """A caller under torch.inference_mode() (benchmarks, serving code) gets the same map: the readout's
    class index is then an inference tensor, copied before it enters the backward's graph."""
    from caap.blanks import clear_cache

    images = random_images(model, 2, seed=8).double()
    caap = CAAP(model, engine=engine, layers=(0, 1), progress=False)
    expected = caap.attribute(images, target=torch.tensor([1, 4]))
    clear_cache(model)  # the blank's cached class gradients would hide the backward
    with torch.inference_mode():
        maps = caap.attribute(images, target=torch.tensor([1, 4]))
    assert torch.allclose(maps, expected, rtol=1e-12, atol=1e-15)
