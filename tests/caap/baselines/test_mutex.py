"""MUTEX (Marchetti et al. 2025) against a slow definition in the authors' style: timm's own model
(``fused_attn=False``), one image and one selection at a time, node statistics with numpy/scipy, tokens
dropped by a forward hook on timm's ``patch_drop`` (the output of the position embedding)."""
import math

import numpy as np
import pytest
import scipy.stats
import timm
import torch

from caap.baselines.mutex import MUTEX
from tests.caap.baselines.attention_toy import attention_toy
from tests.caap.baselines.manual_vit import check_every_family
from tests.conftest import FAMILIES, make_hooked, random_images
from vit_lens import HookedViT


def make_deep_timm(family, depth=5):
    """A conftest-style random timm model with 5 blocks: with 3, the biased kurtosis of every node is
    exactly -1.5 and its selection is decided by rounding noise."""
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **(kwargs | dict(depth=depth))).eval().double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def reference_mutex(timm_model, image, target, min_cut, token_ratio, start_layer):
    for blk in timm_model.blocks:
        blk.attn.fused_attn = False
    patterns = []
    handles = [blk.attn.attn_drop.register_forward_hook(lambda m, a, out: patterns.append(out[0].numpy()))
               for blk in timm_model.blocks]
    with torch.no_grad():
        timm_model(image)
    for h in handles:
        h.remove()
    n_pre = timm_model.num_prefix_tokens
    masks = []
    for op in (np.min, np.max, np.sum):
        layers = []
        for attn in patterns:
            a = op(attn, axis=0)[n_pre:, n_pre:].copy()
            a[a < a.max() * min_cut] = 0
            layers.append(a)
        layers = np.stack(layers)[start_layer:]
        for centrality in (layers.sum(1), layers.sum(2)):  # in-degree, out-degree: [layer, node]
            c = centrality.T  # [node, layer]
            total = c.sum(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                prop = np.where(total[:, None] != 0, c / total[:, None], 0)
                entropy = -np.where(prop != 0, prop * np.log(prop), 0).sum(1)
            std = c.std(1, ddof=1)
            median = np.sort(c, 1)[:, (c.shape[1] - 1) // 2]
            stats = [entropy, c.max(1), c.min(1), total, std, total / (std + 1e-8), median,
                     scipy.stats.skew(c, axis=1), scipy.stats.kurtosis(c, axis=1)]
            for s in stats:
                threshold = np.sort(s)[math.ceil(len(s) * token_ratio) - 1]
                masks.append(s >= threshold)
    heat, cover = np.zeros(len(masks[0])), np.zeros(len(masks[0]))
    for mask in masks:
        keep = np.nonzero(mask)[0]
        if len(keep) == 0:
            continue

        def drop(module, args, out):
            return torch.cat([out[:, :n_pre], out[:, n_pre + torch.as_tensor(keep)]], dim=1)

        handle = timm_model.patch_drop.register_forward_hook(drop)
        with torch.no_grad():
            prob = timm_model(image).softmax(-1)[0, target].item()
        handle.remove()
        heat[keep] += prob
        cover[keep] += 1
    return torch.as_tensor(heat / np.maximum(cover, 1))


@pytest.mark.parametrize("family,kwargs", [("vit_avg", dict(token_ratio=0.7)),
                                           ("clip_quickgelu", dict(min_cut=0.2, start_layer=1)),
                                           ("dinov2_reg", dict(token_ratio=0.3))])
def test_matches_authors_style_reference(family, kwargs):
    timm_model = make_deep_timm(family)
    model = HookedViT.from_timm(timm_model)
    images = random_images(model, batch=2).double()
    targets = torch.tensor([3, 6])
    ours = MUTEX(model, batch_size=7, **kwargs).attribute(images, targets)
    full = dict(min_cut=0.01, token_ratio=0.5, start_layer=0) | kwargs
    ref = model.layout.to_grid(reference_mutex(timm_model, images[1:], int(targets[1]), **full))
    assert ref.std() > 0
    torch.testing.assert_close(ours[1], ref, rtol=1e-5, atol=1e-12)


def test_statistics_selection_count_and_predicted_class():
    model = make_hooked("deit3")
    images = random_images(model, batch=2)
    method = MUTEX(model)
    out = method.attribute(images)
    assert out.dtype == torch.float32 and out.shape == (2, *model.cfg.grid_size)
    torch.testing.assert_close(out, method.attribute(images, model(images).argmax(-1)))
    _, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)], 1)
    masks = method.selections(patterns)
    assert masks.shape == (2, 54, model.cfg.n_patches)
    assert (masks.sum(-1) >= model.cfg.n_patches // 2 + 1).float().mean() > 0.5  # at least half kept unless NaN


def test_refusals_inference_mode_and_hooks():
    with pytest.raises(ValueError, match="no classifier head"):
        MUTEX(make_hooked("clip_headless")).attribute(torch.zeros(1, 3, 64, 64))
    for bad in [dict(token_ratio=0), dict(min_cut=2), dict(start_layer=3), dict(batch_size=0)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            MUTEX(make_hooked("vit"), **bad)
    model = make_hooked("dinov2")
    images = random_images(model)
    expected = MUTEX(model).attribute(images)
    with torch.inference_mode():
        torch.testing.assert_close(MUTEX(model).attribute(images), expected)
    with pytest.raises(TypeError):  # fails inside the hooked forward
        MUTEX(model).attribute(images.double())
    assert all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


def test_one_patch_toy_ranks_the_patch_first():
    """Every query attends to patch j in the last block: j's in-degree profile differs from every other
    patch, some selections drop it, and without it the target probability falls."""
    model, patch, image = attention_toy("vit")
    with torch.no_grad():  # the class that loses most when patch j is dropped
        resid = model.embed(image)
        pos = model.layout.token_position(patch)
        without = torch.cat([resid[:, :pos], resid[:, pos + 1:]], 1)
        drop = model(image).softmax(-1) - model.forward_from_resid(without, 0).softmax(-1)
    heat = MUTEX(model).attribute(image, int(drop.argmax()))
    assert int(heat.flatten().argmax()) == patch
    assert heat.flatten()[patch] > heat.flatten().sort().values[-2]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_float32_and_float64(family):
    check_every_family(lambda model: MUTEX(model), family, {"clip_headless": "no classifier head"})
