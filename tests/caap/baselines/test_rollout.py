import pytest
import torch

from caap import get_method
from caap.baselines import GAE, AttentionRollout
from tests.caap.baselines.manual_vit import (check_hooks_removed_after_an_exception, float64_pair,
                                             manual_forward, no_hooks_left, one_patch_attention_model)
from tests.conftest import FAMILIES, make_hooked, random_images

CLS_FAMILIES = ["vit", "deit3", "clip_quickgelu", "dinov2", "dinov2_reg"]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def slow_rollout(patterns, n_pre, fusion="mean", discard=0.0, start=0):
    """Abnar & Zuidema's joint attention as the full token x token matrix product, first layer first."""
    n = patterns[0].shape[-1]
    batch = patterns[0].shape[0]
    joint = torch.eye(n, dtype=patterns[0].dtype).expand(batch, n, n)
    for pattern in patterns[start:]:
        fused = {"mean": pattern.mean(1), "max": pattern.max(1).values, "min": pattern.min(1).values}[fusion]
        fused = fused.clone()
        for i in range(batch):
            flat = fused[i].flatten()
            order = [j for j in flat.argsort().tolist() if j != 0][: int(n * n * discard)]
            flat[order] = 0
            fused[i] = flat.view(n, n)
        layer = fused + torch.eye(n, dtype=fused.dtype)
        layer = layer / layer.sum(-1, keepdim=True)
        joint = layer @ joint
    return joint[:, 0, n_pre:]


@pytest.mark.parametrize("family,fusion,discard,start", [(f, "mean", 0.0, 0) for f in CLS_FAMILIES] + [
    ("dinov2_reg", "max", 0.3, 1), ("clip_quickgelu", "min", 0.5, 0), ("vit", "max", 0.0, 2)])
def test_rollout_matches_full_matrix_product(family, fusion, discard, start):
    tm, model = float64_pair(family)
    images = random_images(model, 2).double()
    with torch.no_grad():
        run = manual_forward(tm, images)
    expected = slow_rollout(run.patterns, model.cfg.n_prefix_tokens, fusion, discard, start)
    got = AttentionRollout(model, head_fusion=fusion, discard_ratio=discard, start_layer=start).attribute(images)
    assert got.shape == (2, *model.cfg.grid_size)
    assert rel_err(got.flatten(1), expected) <= 1e-5


def test_default_start_layer_is_1_as_in_the_authors_evaluation_scripts():
    """Transformer-Explainability's generate_visualizations.py and imagenet_seg_eval.py run rollout with
    start_layer=1: the default map is the product from block 1 on, not the paper's from block 0."""
    tm, model = float64_pair("vit")
    images = random_images(model, 2).double()
    with torch.no_grad():
        run = manual_forward(tm, images)
    method = get_method("rollout", model)
    assert method.start_layer == 1 and AttentionRollout(model).start_layer == 1
    got = method.attribute(images).flatten(1)
    assert rel_err(got, slow_rollout(run.patterns, model.cfg.n_prefix_tokens, start=1)) <= 1e-10
    assert rel_err(got, slow_rollout(run.patterns, model.cfg.n_prefix_tokens, start=0)) > 1e-3  # it matters


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.4), ("min", 0.2)])
def test_rollout_layer_matrices_and_joint_rows_sum_to_one(fusion, discard):
    model = make_hooked("dinov2_reg")
    method = AttentionRollout(model, head_fusion=fusion, discard_ratio=discard)
    _, cache = model.run_with_cache(random_images(model, 2), names_filter=lambda n: n.endswith("hook_pattern"))
    joint = None
    for layer in range(model.cfg.n_layers):
        m = method._layer_matrix(cache[f"blocks.{layer}.attn.hook_pattern"])
        assert torch.allclose(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-6) and (m >= 0).all()
        joint = m if joint is None else m @ joint
    assert torch.allclose(joint.sum(-1), torch.ones_like(joint.sum(-1)), atol=1e-5)
    # the map is the CLS row's patch part: registers and CLS hold the rest of the unit mass
    row_patch_mass = method.attribute(random_images(model, 2)).flatten(1).sum(-1)
    assert ((row_patch_mass > 0) & (row_patch_mass < 1)).all()


def slow_gae(tm, images, target, n_pre):
    """Chefer et al.'s loop: R = I; R += mean_h(relu(grad * A)) @ R over the blocks; CLS row, patch columns."""
    run = manual_forward(tm, images)
    grads = torch.autograd.grad(run.logits[torch.arange(len(target)), target].sum(), run.patterns)
    n = run.patterns[0].shape[-1]
    relevance = torch.eye(n, dtype=images.dtype).repeat(images.shape[0], 1, 1)
    for pattern, grad in zip(run.patterns, grads):
        cam = (grad * pattern).clamp(min=0).mean(dim=1)
        relevance = relevance + torch.matmul(cam, relevance)
    return relevance[:, 0, n_pre:].detach()


@pytest.mark.parametrize("family", CLS_FAMILIES)
def test_gae_matches_relevance_loop(family):
    tm, model = float64_pair(family)
    images = random_images(model, 3).double()
    target = torch.tensor([0, 3, 6])
    expected = slow_gae(tm, images, target, model.cfg.n_prefix_tokens)
    assert rel_err(GAE(model).attribute(images, target).flatten(1), expected) <= 1e-5
    predicted = model(images).argmax(-1)
    assert torch.allclose(GAE(model).attribute(images), GAE(model).attribute(images, predicted))


@pytest.mark.parametrize("name", ["rollout", "gae"])
def test_one_informative_patch_ranks_first(name):
    _, model, patch = one_patch_attention_model()
    images = random_images(model, 2).double()
    maps = [get_method(name, model).attribute(images, target=t).flatten(1) for t in (0, 1)]
    best = max(maps, key=lambda m: m[:, patch].min().item())  # GAE keeps positive evidence: one of +-w
    assert (best.argmax(-1) == patch).all()
    others = torch.cat([best[:, :patch], best[:, patch + 1:]], -1)
    assert (others.abs().max(-1).values < 1e-6 * best[:, patch]).all()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("cls", [AttentionRollout, GAE])
def test_families_dtypes_inference_mode_and_no_hooks_left(family, cls):
    model = make_hooked(family)
    if model.cfg.pooling != "token":
        with pytest.raises(ValueError, match="CLS"):
            cls(model)
        return
    images = random_images(model, 2)
    target = 1
    if model.cfg.num_classes == 0:  # rollout is class-agnostic; GAE needs a class logit
        if cls is GAE:
            with pytest.raises(ValueError, match="no classifier head"):
                cls(model).attribute(images)
            return
        target = None
    out = cls(model).attribute(images, target)
    assert out.shape == (2, *model.cfg.grid_size) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert no_hooks_left(model)
    with torch.inference_mode():
        inf = cls(model).attribute(images.clone(), target)
    assert torch.allclose(inf, out, atol=1e-6)
    assert torch.allclose(cls(model).attribute(images[1:], target), out[1:], atol=1e-6)  # batching is per image


@pytest.mark.parametrize("cls", [AttentionRollout, GAE])
def test_hooks_removed_after_an_exception(cls, monkeypatch):
    model = make_hooked("dinov2_reg")
    check_hooks_removed_after_an_exception(cls(model), model, monkeypatch)


def test_bad_options_and_inputs_are_refused():
    model = make_hooked("vit")
    with pytest.raises(ValueError, match="head_fusion"):
        AttentionRollout(model, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        AttentionRollout(model, discard_ratio=1.0)
    with pytest.raises(ValueError, match="start_layer"):
        AttentionRollout(model, start_layer=3)
    images = random_images(model, 1)
    with pytest.raises(ValueError, match="NaN"):
        GAE(model).attribute(images * float("nan"))
    with pytest.raises(ValueError, match="target"):
        AttentionRollout(model).attribute(images, target=99)
