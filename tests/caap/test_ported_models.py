"""Every registered method runs on models ported from HuggingFace transformers and open_clip (issue 19: "every entry
point takes these models"), and CAAP's parallel engines equal the loop engine on them: a DeiT's distillation token is
a prefix token, a DINOv2 classifier reads CLS ⊕ mean patch (loop only, refused by the parallel engines with a message
naming engine="loop"), an open_clip tower is explained through a callable score on its embedding."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from caap import CAAP, get_method, list_methods
from vit_lens import HookedViT

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

FAST = {"rise": dict(n_masks=8), "mda": dict(max_candidates=2), "occlusion": dict(window=16)}
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=32,
             patch_size=8, num_labels=5)


@functools.lru_cache(maxsize=None)
def ported(kind: str):
    torch.manual_seed(0)
    if kind == "hf-vit":
        source = transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL))
    elif kind == "hf-deit":
        source = transformers.DeiTForImageClassification(transformers.DeiTConfig(**SMALL))
    elif kind == "hf-dinov2":
        source = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**SMALL))
    else:
        source = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "layers": 3, "width": 32, "patch_size": 8,
                                                          "head_width": 8},
                                text_cfg={"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2,
                                          "layers": 1})
        return HookedViT.from_open_clip(source.eval())
    return HookedViT.from_hf(source.eval(), image_processor=None)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["hf-vit", "hf-deit", "clip"])
def test_caap_parallel_equals_loop_and_efficient_runs(kind):
    model = ported(kind)
    x = images()
    if kind == "clip":
        text = torch.randn(16, generator=torch.Generator().manual_seed(2))
        kw = dict(score=lambda e: F.cosine_similarity(e, text.expand_as(e), dim=-1))
        target = None
    else:
        kw, target = {}, torch.tensor([1, 3])
    loop = CAAP(model, engine="loop", **kw).attribute(x, target)
    parallel = CAAP(model, **kw).attribute(x, target)
    assert loop.shape == (2, 4, 4) and loop.std() > 0
    assert torch.allclose(parallel, loop, rtol=1e-4, atol=1e-5)
    if kind == "hf-deit":  # the distillation token stays a recomputed prefix token in every intervention
        assert model.cfg.n_prefix_tokens == 2
    efficient = CAAP(model, engine="efficient", **kw).attribute(x, target)  # an approximation: close, finite
    assert torch.isfinite(efficient).all() and efficient.shape == loop.shape


def test_dinov2_classifier_runs_caap_with_the_loop_engine_only():
    model = ported("hf-dinov2")
    assert model.cfg.pooling == "cls_mean"
    with pytest.raises(ValueError, match="use engine='loop'"):
        CAAP(model).attribute(images(1))
    assert CAAP(model, engine="loop").attribute(images(1), 2).shape == (1, 4, 4)


@pytest.mark.parametrize("name", [n for n in list_methods() if n != "caap-cnn"])
def test_every_method_on_a_ported_deit(name):
    """Each registered method gives a finite map on a transformers DeiT (CLS + distillation token)."""
    model = ported("hf-deit")
    method = get_method(name, model, **FAST.get(name, {}))
    out = method.attribute(images(), torch.tensor([0, 4]))
    assert out.shape == (2, 4, 4) and torch.isfinite(out).all()
