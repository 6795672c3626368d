"""CAAP's class readouts by name (issue 24): formulas, every engine exact against the loop, registry variants."""
import math

import pytest
import torch

from caap import CAAP, GradCAM, get_method
from caap.blanks import blank_context, blank_image
from caap.registry import method_settings
from tests.conftest import make_hooked, random_images
from vit_lens.patching import ClassScore, cache_context, run_patching
from vit_lens.patching.readouts import KINDS, class_score

NEW = ("logit-diff", "logit-margin", "log-prob")


def by_formula(z: list[float], t: int, kind: str) -> float:
    """The documented formula, written out in plain Python on one logit vector."""
    others = [v for j, v in enumerate(z) if j != t]
    lse = math.log(sum(math.exp(v) for v in z))
    return {"logit": z[t], "prob": math.exp(z[t] - lse), "logit-diff": z[t] - sum(others) / len(others),
            "logit-margin": z[t] - max(others), "log-prob": z[t] - lse}[kind]


def test_formulas_on_hand_made_logits():
    out = torch.tensor([[[1.0, 3.0, -2.0, 0.0], [5.0, 3.0, -2.0, 4.5]]], dtype=torch.float64)  # [1, K=2, 4]
    t = torch.tensor([0])
    assert ClassScore(t, "logit-diff")(out)[0].tolist() == pytest.approx([1 - 1 / 3, 5 - 5.5 / 3])
    # the runner-up is the highest OTHER logit of the same forward: class 1 in the first, class 3 in the second
    assert ClassScore(t, "logit-margin")(out)[0].tolist() == pytest.approx([-2.0, 0.5])
    assert ClassScore(torch.tensor([1]), "logit-margin")(out)[0].tolist() == pytest.approx([2.0, -2.0])
    lse = [math.log(sum(math.exp(v) for v in row)) for row in out[0].tolist()]
    assert ClassScore(t, "log-prob")(out)[0].tolist() == pytest.approx([1 - lse[0], 5 - lse[1]])
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 9, generator=g, dtype=torch.float64) * 4
    target = torch.tensor([0, 8, 4])
    for kind in KINDS:
        got = ClassScore(target, kind)(z)
        want = [[by_formula(z[b, k].tolist(), int(target[b]), kind) for k in range(5)] for b in range(3)]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_contrastive_readouts_cancel_evidence_shared_by_every_class():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 6, 7, generator=g)
    shift = torch.randn(2, 6, 1, generator=g) * 10  # e.g. objectness: raises every logit alike
    t = torch.tensor([2, 5])
    for kind in NEW:
        torch.testing.assert_close(ClassScore(t, kind)(z + shift), ClassScore(t, kind)(z), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(ClassScore(t, "logit")(z + shift), ClassScore(t, "logit")(z), atol=1e-2)


def test_log_prob_is_stable_where_log_of_prob_underflows():
    z = torch.tensor([[[0.0, 200.0]]])
    assert ClassScore(torch.tensor([0]), "log-prob")(z).item() == pytest.approx(-200.0)
    assert ClassScore(torch.tensor([0]), "prob")(z).item() == 0.0  # log(prob) would be -inf


def test_bad_kind_and_single_class_contrast_are_refused():
    with pytest.raises(ValueError, match=r"kind must be one of \('logit', 'prob', 'logit-diff'"):
        ClassScore(torch.tensor([0]), "margin")
    with pytest.raises(ValueError, match="'logit-diff' compares the target with the other classes; the output has 1"):
        class_score(torch.zeros(1, 2, 1), torch.zeros(1, 2, dtype=torch.long), "logit-diff")


@pytest.mark.parametrize("family", ["deit3", "dinov2_reg"])
@pytest.mark.parametrize("kind", NEW)
def test_parallel_engine_is_exact_against_the_loop_for_every_readout(family, kind):
    model = make_hooked(family)
    images = random_images(model, 2, seed=5)
    target = torch.tensor([1, 4])
    loop = CAAP(model, engine="loop", score=kind).attribute(images, target)
    parallel = CAAP(model, engine="parallel", score=kind, chunk_size=3).attribute(images, target)
    efficient = CAAP(model, engine="efficient", score=kind).attribute(images, target)
    scale = loop.abs().max()
    assert scale > 0 and loop.std() > 0
    assert (parallel - loop).abs().max() <= 1e-4 * scale
    assert (efficient - loop).abs().max() <= 0.3 * scale  # E-CAAP: an approximation, same readout


@pytest.mark.parametrize("kind", NEW)
def test_efficient_engine_is_exact_when_the_source_is_the_blank(kind):
    model = make_hooked("dinov2_reg")
    x = blank_image(model, "white")
    exact = CAAP(model, engine="parallel", score=kind).attribute(x, target=1)
    approx = CAAP(model, engine="efficient", score=kind).attribute(x, target=1)
    assert (approx - exact).abs().max() <= 1e-5 * exact.abs().max()


@pytest.mark.parametrize("kind", NEW)
def test_caap_map_is_the_formula_on_each_patched_forward(kind):
    """The named readout equals the documented formula applied to the full logits of each patched forward
    (taken from the loop engine), so the map is the readout of the intervention, not of the clean image."""
    model = make_hooked("vit")
    image = random_images(model, 1, seed=3)
    caap = CAAP(model, engine="parallel", score=kind)
    got = caap.attribute(image, target=2)
    full = run_patching(model, None, None, caap.interventions, readout=lambda out: out, engine="loop",
                        source_cache=cache_context(model, image), target_cache=blank_context(model, "white", 0))
    want = torch.tensor([by_formula(full[0, k].tolist(), 2, kind) for k in range(full.shape[1])])
    torch.testing.assert_close(got.flatten(), want.to(got.dtype), atol=1e-4, rtol=1e-4)


def test_registered_variants_run_their_readout_and_record_it():
    model = make_hooked("vit")
    x = random_images(model, 1)
    for name, kind in (("caap-logit-diff", "logit-diff"), ("caap-margin", "logit-margin"),
                       ("caap-logprob", "log-prob")):
        method = get_method(name, model)
        assert method.score == kind and method.engine == "parallel"
        assert method_settings(name)["score"] == kind
        torch.testing.assert_close(method.attribute(x, 0), CAAP(model, score=kind).attribute(x, 0))
    assert method_settings("caap")["score"] == "logit"
    assert method_settings("e-caap", score="log-prob")["score"] == "log-prob"
    assert get_method("e-caap", model, score="logit-margin").score == "logit-margin"


def test_unknown_readout_names_the_allowed_ones_and_other_methods_keep_their_two():
    model = make_hooked("vit")
    with pytest.raises(ValueError, match=r"score must be one of \('logit', 'prob', 'logit-diff', 'logit-margin', "
                                         r"'log-prob'\) or a callable.*got 'margin'"):
        CAAP(model, score="margin")
    # Grad-CAM's own readout knows logit/prob only: a contrastive name must not silently become the logit
    with pytest.raises(ValueError, match=r"score must be one of \('logit', 'prob'\)"):
        GradCAM(model, score="logit-diff")


@pytest.mark.parametrize("kind", NEW)
def test_atp_engine_linearizes_each_readout_by_the_chain_rule(kind):
    """AtP is first order around the blank, so its map for a readout is the readout's gradient at the blank's
    logits applied to the per-class AtP logit maps: log-prob = d z_t - sum_j p_j d z_j, margin = d z_t - d z_r
    (r: runner-up at the blank), logit-diff = d z_t - mean_{j != t} d z_j (maps compared up to a constant)."""
    model = make_hooked("vit")
    image, t = random_images(model, 1, seed=4), 2
    with torch.no_grad():
        z = model(blank_image(model, "white"))[0].double()
    n = z.numel()
    per_class = torch.stack([CAAP(model, engine="atp").attribute(image, c)[0].double().flatten() for c in range(n)])
    if kind == "log-prob":
        weights = torch.eye(n, dtype=torch.float64)[t] - z.softmax(-1)
    elif kind == "logit-margin":
        runner_up = int(z.scatter(0, torch.tensor([t]), float("-inf")).argmax())
        weights = torch.eye(n, dtype=torch.float64)[t] - torch.eye(n, dtype=torch.float64)[runner_up]
    else:
        weights = torch.full((n,), -1.0 / (n - 1), dtype=torch.float64)
        weights[t] = 1.0
    want = weights @ per_class
    got = CAAP(model, engine="atp", score=kind).attribute(image, t)[0].double().flatten()
    centred = lambda m: m - m.mean()  # noqa: E731
    assert want.std() > 0
    torch.testing.assert_close(centred(got), centred(want), atol=1e-4 * want.abs().max(), rtol=1e-4)
