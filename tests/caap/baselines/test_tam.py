"""TAM (Yuan et al. 2021) against a slow definition on timm's own model (``fused_attn=False``): a full
forward and backward per integration point in the authors' order (alpha from 0 to 1), the attention
gradient read by tensor hooks, and the chain written as ``s <- s (A + I)`` with an explicit identity."""
import pytest
import torch

from caap import get_method
from caap.baselines.tam import TransitionAttentionMaps
from tests.caap.baselines.attention_toy import attention_toy, informative_target
from tests.caap.baselines.manual_vit import check_every_family
from tests.conftest import FAMILIES, make_hooked, make_timm, random_images
from vit_lens import HookedViT


def reference_tam(timm_model, images, targets, start_layer, steps):
    for blk in timm_model.blocks:
        blk.attn.fused_attn = False
    n_layers = len(timm_model.blocks)
    patterns, grads = {}, {}

    def hook(l):
        def fn(mod, args, out):
            patterns[l] = out.detach()
            out.register_hook(lambda g: grads.__setitem__(l, g))
        return fn

    handles = [blk.attn.attn_drop.register_forward_hook(hook(l)) for l, blk in enumerate(timm_model.blocks)]
    try:
        total = 0
        for alpha in torch.linspace(0, 1, steps, dtype=torch.float64).tolist():
            scaled = (images * alpha).requires_grad_(True)
            out = timm_model(scaled)
            out[torch.arange(len(targets)), targets].sum().backward()
            total = total + grads[n_layers - 1]
        timm_model(images)  # attention at the image itself
    finally:
        for h in handles:
            h.remove()
    weights = (total / steps).clamp(min=0).mean(1)[:, 0, :]
    state = patterns[n_layers - 1].mean(1)[:, 0, :]
    eye = torch.eye(state.shape[-1], dtype=state.dtype)
    for l in reversed(range(start_layer, n_layers - 1)):
        state = torch.einsum("bi,bij->bj", state, patterns[l].mean(1) + eye)
    return (state * weights)[:, timm_model.num_prefix_tokens:]


@pytest.mark.parametrize("family,start,steps", [("vit", 0, 5), ("clip_quickgelu", 2, 4), ("dinov2_reg", 1, 3)])
def test_matches_slow_definition(family, start, steps):
    timm_model = make_timm(family).double()
    model = HookedViT.from_timm(timm_model)
    images = random_images(model, batch=2).double()
    targets = torch.tensor([2, 5])
    ours = TransitionAttentionMaps(model, start_layer=start, steps=steps).attribute(images, targets)
    ref = model.layout.to_grid(reference_tam(timm_model, images, targets, start, steps))
    assert ref.abs().max() > 0
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_defaults_predicted_class_batching_float32():
    model = make_hooked("dinov2_reg")
    images = random_images(model, batch=3)
    method = TransitionAttentionMaps(model, steps=4)
    # default 0, as the authors' deletion/insertion evaluation (del_ins.py) runs it; it was 4 (their
    # interpret_methods.py default, clipped to the last block here), which no longer holds
    assert method.start_layer == 0 and get_method("tam", model).start_layer == 0
    out = method.attribute(images)
    assert out.dtype == torch.float32 and out.shape == (3, *model.cfg.grid_size)
    predicted = model(images).argmax(-1)
    torch.testing.assert_close(out, method.attribute(images, predicted))
    torch.testing.assert_close(out[2:], method.attribute(images[2:], int(predicted[2])))
    assert TransitionAttentionMaps(make_hooked("vit"), steps=4).steps == 4
    assert TransitionAttentionMaps(make_hooked("vit")).steps == 20


def test_default_is_the_chain_from_block_0():
    timm_model = make_timm("vit").double()
    model = HookedViT.from_timm(timm_model)
    images = random_images(model, batch=2).double()
    targets = torch.tensor([3, 0])
    ours = TransitionAttentionMaps(model, steps=3).attribute(images, targets)
    ref = model.layout.to_grid(reference_tam(timm_model, images, targets, 0, 3))
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()
    later = model.layout.to_grid(reference_tam(timm_model, images, targets, 2, 3))
    assert (ours - later).abs().max() > 1e-3 * ref.abs().max()  # the start layer changes the map


def test_refusals():
    with pytest.raises(ValueError, match="global_pool='avg'"):
        TransitionAttentionMaps(make_hooked("vit_avg")).attribute(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="no classifier head"):
        TransitionAttentionMaps(make_hooked("clip_headless")).attribute(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="steps"):
        TransitionAttentionMaps(make_hooked("vit"), steps=1)
    with pytest.raises(ValueError, match="start_layer"):
        TransitionAttentionMaps(make_hooked("vit"), start_layer=3)


def test_inference_mode_and_no_hooks_left():
    model = make_hooked("clip_quickgelu")
    images = random_images(model)
    method = TransitionAttentionMaps(model, steps=3)
    expected = method.attribute(images)
    with torch.inference_mode():
        torch.testing.assert_close(method.attribute(images), expected)
    with pytest.raises(TypeError):  # fails inside the hooked forward
        method.attribute(images.double())
    assert all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


def test_one_patch_toy_ranks_the_patch_first():
    for family in ["vit", "dinov2_reg"]:
        model, patch, image = attention_toy(family)
        heat = TransitionAttentionMaps(model, steps=5).attribute(image, informative_target(model, image, patch))
        assert int(heat.flatten().argmax()) == patch, family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_float32_and_float64(family):
    check_every_family(lambda model: TransitionAttentionMaps(model, steps=2), family, {"clip_headless": "no classifier head", "vit_avg": "global_pool='avg'"})
