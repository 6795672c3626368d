"""SwiGLU MLPs (DINOv2-G's ``SwiGLUPacked``, timm ``SwiGLU``, ``GluMlp(gate_last=True)``) ported logit-exactly."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.mlp import GluMlp, SwiGLU, SwiGLUPacked
from torch import nn

from vit_lens import HookedViT
from vit_lens.components.swiglu import GatedMLP, gated_mlp_state_from_timm


def perturb(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("make", [
    lambda: SwiGLUPacked(12, 2 * 10),
    lambda: GluMlp(12, 2 * 10, act_layer=nn.SiLU, gate_last=True),
    lambda: SwiGLU(12, 10),
], ids=["packed", "glu_gate_last", "split"])
def test_gated_mlp_matches_timm_module(make):
    timm_mlp = perturb(make())
    ours = GatedMLP(12, 10, "silu")
    ours.load_state_dict({k[len("m."):]: v for k, v in gated_mlp_state_from_timm(timm_mlp, "m").items()})
    x = torch.randn(2, 5, 12)
    cache = {}
    for name in ("hook_pre", "hook_pre_linear", "hook_post"):
        getattr(ours, name).add_hook(lambda t, hook, name=name: cache.__setitem__(name, t))
    out = ours(x)
    assert torch.allclose(out, timm_mlp(x), atol=1e-6)
    # hand-written SwiGLU from the weight views: act(x W_gate + b_gate) * (x W_in + b_in) W_out + b_out
    gate, linear = x @ ours.W_gate + ours.b_gate, x @ ours.W_in + ours.b_in
    assert torch.allclose(cache["hook_pre"], gate, atol=1e-6)
    assert torch.allclose(cache["hook_pre_linear"], linear, atol=1e-6)
    assert torch.allclose(cache["hook_post"], F.silu(gate) * linear, atol=1e-6)
    assert torch.allclose(cache["hook_post"] @ ours.W_out + ours.b_out, out, atol=1e-5)


def tiny_giant(seed=0):
    """The real DINOv2-G constructor (SwiGLUPacked, mlp_ratio 2.66667 * 2, SiLU, LayerScale), shrunk."""
    torch.manual_seed(seed)
    return perturb(timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=56, depth=2,
                                     embed_dim=48, num_heads=3, num_classes=7), seed)


def tiny_split_swiglu(seed=0):
    torch.manual_seed(seed)
    return perturb(timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56, depth=2, embed_dim=48,
                                     num_heads=3, num_classes=7, mlp_layer=SwiGLU, act_layer=nn.SiLU), seed)


@pytest.mark.parametrize("build", [tiny_giant, tiny_split_swiglu], ids=["dinov2_giant_packed", "split"])
def test_hooked_vit_with_swiglu_is_logit_exact_and_every_hook_fires(build):
    timm_model = build()
    model = HookedViT.from_timm(timm_model)
    assert model.cfg.mlp_type == "swiglu" and model.cfg.gated_mlp
    if build is tiny_giant:
        assert model.cfg.d_mlp == int(48 * 2.66667 * 2) // 2
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = timm_model(x)
        logits, cache = model.run_with_cache(x)
    assert (logits - expected).abs().max() <= 1e-4
    fired = set(cache.keys())
    assert set(model.hook_dict) - fired <= {n for n in model.hook_dict if _optional(n)}
    for b in range(model.cfg.n_layers):
        assert f"blocks.{b}.mlp.hook_pre_linear" in fired
        post = F.silu(cache[f"blocks.{b}.mlp.hook_pre"]) * cache[f"blocks.{b}.mlp.hook_pre_linear"]
        assert torch.allclose(cache[f"blocks.{b}.mlp.hook_post"], post, atol=1e-6)
    # the hook's return value is used: zeroing the linear branch of the last block changes the logits
    zeroed = model.run_with_hooks(x, fwd_hooks=[(f"blocks.{model.cfg.n_layers - 1}.mlp.hook_pre_linear",
                                                 lambda t, hook: torch.zeros_like(t))])
    assert not torch.allclose(zeroed, logits, atol=1e-4)


def _optional(name: str) -> bool:
    """TL's optional hooks (off by default) and the ones that fire only on request."""
    return any(s in name for s in ("hook_attn_in", "_input", "hook_mlp_in", "hook_result"))


def test_parallel_engine_with_swiglu_mlp():
    from vit_lens.patching import Intervention, run_patching

    model = HookedViT.from_timm(tiny_giant(3))
    src = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    tgt = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    ivs = [Intervention.from_patches(model.layout, [p, (p + 1) % 16], layer_start=0, layer_end=1) for p in range(16)]
    loop = run_patching(model, src, tgt, ivs, engine="loop")
    parallel = run_patching(model, src, tgt, ivs, engine="parallel")
    assert torch.allclose(loop, parallel, rtol=1e-4, atol=1e-4)
