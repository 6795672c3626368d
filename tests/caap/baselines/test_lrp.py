"""T-Attr (Chefer et al. 2021) against a slow re-implementation in the authors' style: timm's own modules
(``fused_attn=False``), one image at a time, every rule written as ``input * autograd.grad(Z, input, R / Z)``
on explicit ``F.linear`` / ``einsum`` / add graphs, and the rollout as ``R <- R + Abar @ R``."""
import pytest
import torch
import torch.nn.functional as F

from caap.baselines.lrp import TransformerAttribution
from caap.baselines.lrp_rules import linear_alpha1_beta0, matmul_rule, residual_add
from tests.caap.baselines.attention_toy import attention_toy, informative_target
from tests.caap.baselines.manual_vit import check_every_family
from tests.conftest import FAMILIES, make_hooked, make_timm, random_images
from vit_lens import HookedViT



# ---------------------------------------------------------------- slow reference (authors' style)
def sdiv(a, b):  # the authors' safe_divide, verbatim in behaviour
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def ref_linear(x, weight, r):
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    px, nx = leaf(x.clamp(min=0)), leaf(x.clamp(max=0))
    z1, z2 = F.linear(px, pw), F.linear(nx, nw)
    s = sdiv(r, z1 + z2)
    return px * torch.autograd.grad(z1, px, s)[0] + nx * torch.autograd.grad(z2, nx, s)[0]


def ref_two_operands(fn, x0, x1, r):
    x0, x1 = leaf(x0), leaf(x1)
    z = fn(x0, x1)
    c0, c1 = torch.autograd.grad(z, [x0, x1], sdiv(r, z))
    return (x0 * c0).detach(), (x1 * c1).detach()


def ref_add(x0, x1, r):
    a, b = ref_two_operands(torch.add, x0, x1, r)
    a_sum, b_sum = a.sum(), b.sum()
    a_fact = sdiv(a_sum.abs(), a_sum.abs() + b_sum.abs()) * r.sum()
    b_fact = sdiv(b_sum.abs(), a_sum.abs() + b_sum.abs()) * r.sum()
    return a * sdiv(a_fact, a.sum()), b * sdiv(b_fact, b.sum())


def capture(timm_model, image, target):
    """Per-block activations of one image via forward hooks on timm's modules, attention gradients via
    tensor hooks; returns (acts, grads, pooled head input, target)."""
    acts, grads, handles = [dict() for _ in timm_model.blocks], [None] * len(timm_model.blocks), []
    for l, blk in enumerate(timm_model.blocks):
        def pre(name, l=l):
            return lambda mod, args: acts[l].__setitem__(name, args[0].detach())

        def post(name, l=l):
            return lambda mod, args, out: acts[l].__setitem__(name, out.detach())

        def attn_out(mod, args, out, l=l):
            acts[l]["pattern"] = out.detach()
            out.register_hook(lambda g: grads.__setitem__(l, g))

        handles += [blk.register_forward_pre_hook(pre("x")), blk.norm1.register_forward_hook(post("ln1")),
                    blk.attn.qkv.register_forward_hook(post("qkv")),
                    blk.attn.attn_drop.register_forward_hook(attn_out),
                    blk.attn.proj.register_forward_pre_hook(pre("z")), blk.ls1.register_forward_hook(post("ls1")),
                    blk.ls1.register_forward_pre_hook(pre("ls1_in")), blk.norm2.register_forward_hook(post("ln2")),
                    blk.mlp.fc2.register_forward_pre_hook(pre("post")), blk.ls2.register_forward_hook(post("ls2")),
                    blk.ls2.register_forward_pre_hook(pre("ls2_in"))]
    pooled = {}
    handles.append(timm_model.head.register_forward_pre_hook(lambda m, a: pooled.__setitem__("x", a[0].detach())))
    try:
        out = timm_model(image.requires_grad_(True))
        target = int(out.argmax()) if target is None else target
        out[0, target].backward()
    finally:
        for h in handles:
            h.remove()
    return acts, grads, pooled["x"], target


def reference_tattr(timm_model, image, target=None, start_layer=0, layer_scale_rule="linear"):
    """T-Attr of one image ``[1, C, H, W]`` on a timm ViT, authors' style."""
    for blk in timm_model.blocks:
        blk.attn.fused_attn = False
    acts, grads, pooled, target = capture(timm_model, image, target)
    n_heads = timm_model.blocks[0].attn.num_heads
    one_hot = torch.zeros(1, timm_model.num_classes, dtype=image.dtype)
    one_hot[0, target] = 1
    r = ref_linear(pooled, timm_model.head.weight, one_hot)
    cam = torch.zeros_like(acts[0]["x"])
    cam[:, 0] = r
    attn_cams = [None] * len(timm_model.blocks)
    for l in reversed(range(len(timm_model.blocks))):
        blk, a = timm_model.blocks[l], acts[l]
        mid = a["x"] + a["ls1"]
        cam1, cam2 = ref_add(mid, a["ls2"], cam)
        if layer_scale_rule == "linear" and hasattr(blk.ls2, "gamma"):
            cam2 = ref_linear(a["ls2_in"], torch.diag(blk.ls2.gamma.detach()), cam2)
        cam2 = ref_linear(a["post"], blk.mlp.fc2.weight, cam2)
        cam2 = ref_linear(a["ln2"], blk.mlp.fc1.weight, cam2)
        cam = cam1 + cam2
        cam1, cam2 = ref_add(a["x"], a["ls1"], cam)
        if layer_scale_rule == "linear" and hasattr(blk.ls1, "gamma"):
            cam2 = ref_linear(a["ls1_in"], torch.diag(blk.ls1.gamma.detach()), cam2)
        cam2 = ref_linear(a["z"], blk.attn.proj.weight, cam2)
        b, n, _ = cam2.shape
        cam2 = cam2.reshape(b, n, n_heads, -1).permute(0, 2, 1, 3)
        q, k, v = a["qkv"].reshape(b, n, 3, n_heads, -1).permute(2, 0, 3, 1, 4)
        cam_attn, cam_v = ref_two_operands(lambda x, y: torch.einsum("bhij,bhjd->bhid", x, y), a["pattern"], v, cam2)
        cam_attn, cam_v = cam_attn / 2, cam_v / 2
        attn_cams[l] = cam_attn
        cam_q, cam_k = ref_two_operands(lambda x, y: torch.einsum("bhid,bhjd->bhij", x, y), q, k, cam_attn)
        cam_qkv = torch.stack([cam_q / 2, cam_k / 2, cam_v]).permute(1, 3, 0, 2, 4).reshape(b, n, -1)
        cam = cam1 + ref_linear(a["ln1"], blk.attn.qkv.weight, cam_qkv)
    n_tokens = cam.shape[1]
    rollout = torch.eye(n_tokens, dtype=image.dtype)
    for l in range(start_layer, len(timm_model.blocks)):
        abar = (grads[l][0] * attn_cams[l][0]).clamp(min=0).mean(0)
        rollout = rollout + abar @ rollout
    return rollout[0, timm_model.num_prefix_tokens:]


def pair(family, seed=0):
    timm_model = make_timm(family, seed).double()
    return timm_model, HookedViT.from_timm(timm_model)


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("family,rule,start", [("vit", "linear", 0), ("clip_quickgelu", "linear", 1),
                                               ("dinov2_reg", "linear", 0), ("dinov2_reg", "identity", 2)])
def test_matches_authors_style_reference(family, rule, start):
    timm_model, model = pair(family)
    images = random_images(model, batch=2).double()
    targets = torch.tensor([1, 4])
    ours = TransformerAttribution(model, start_layer=start, layer_scale_rule=rule).attribute(images, targets)
    for i in range(2):
        ref = reference_tattr(timm_model, images[i:i + 1].clone(), int(targets[i]), start, rule)
        ref = model.layout.to_grid(ref)
        assert ref.abs().max() > 0
        assert (ours[i] - ref).abs().max() <= 1e-5 * ref.abs().max(), family


def test_predicted_class_default_and_float32():
    model = make_hooked("dinov2_reg")
    images = random_images(model, batch=3)
    method = TransformerAttribution(model)
    predicted = model(images).argmax(-1)
    out = method.attribute(images)
    assert out.dtype == torch.float32 and out.shape == (3, *model.cfg.grid_size)
    torch.testing.assert_close(out, method.attribute(images, predicted))
    torch.testing.assert_close(out[1:2], method.attribute(images[1:2], int(predicted[1])))  # batching
    assert not torch.equal(out, method.attribute(images, (predicted + 1) % model.cfg.num_classes))


# ---------------------------------------------------------------- conservation
@pytest.mark.parametrize("family", ["vit", "clip_quickgelu", "dinov2_reg"])
def test_relevance_is_conserved_layer_to_layer(family):
    model = make_hooked(family).double()
    images = random_images(model, batch=2).double()
    trace = TransformerAttribution(model, layer_scale_rule="identity").trace(images, to_input=True)
    ones = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(trace.head_relevance.sum((1, 2)), ones, rtol=0, atol=1e-7)
    for l, rel in enumerate(trace.resid_relevance):
        torch.testing.assert_close(rel.sum((1, 2)), ones, rtol=0, atol=1e-7, msg=f"block {l}")
        # R_A carries half of what enters A @ V; summed over heads and queries it is <= the block's share
        assert trace.attn_relevance[l].shape == trace.pattern[l].shape


def test_each_rule_is_conservative():
    g = torch.Generator().manual_seed(0)
    x, w, r = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(5, 7), (3, 7), (5, 3)])
    torch.testing.assert_close(linear_alpha1_beta0(x, w, r).sum(), r.sum())
    a, b, rz = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(2, 4, 6), (2, 6, 5), (2, 4, 5)])
    ra, rb = matmul_rule(a, b, rz)
    torch.testing.assert_close(ra.sum(), rz.sum())
    torch.testing.assert_close(rb.sum(), rz.sum())
    x0, x1, rr = (torch.randn(2, 4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    r0, r1 = residual_add(x0, x1, rr)
    torch.testing.assert_close((r0 + r1).sum((1, 2)), rr.sum((1, 2)))


def test_linear_layer_scale_rule_loses_relevance():
    """The z+ rule on LayerScale drops channels with a negative branch output: not conservative."""
    model = make_hooked("deit3").double()
    trace = TransformerAttribution(model, layer_scale_rule="linear").trace(
        random_images(model).double(), to_input=True)
    assert (trace.resid_relevance[0].sum((1, 2)) - 1).abs().max() > 1e-3


# ---------------------------------------------------------------- interface
def test_refusals():
    with pytest.raises(ValueError, match="global_pool='avg'"):
        TransformerAttribution(make_hooked("vit_avg")).attribute(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="no classifier head"):
        TransformerAttribution(make_hooked("clip_headless")).attribute(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="start_layer"):
        TransformerAttribution(make_hooked("vit"), start_layer=3)
    with pytest.raises(ValueError, match="layer_scale_rule"):
        TransformerAttribution(make_hooked("vit"), layer_scale_rule="z")


def test_inference_mode_and_no_hooks_left():
    model = make_hooked("deit3")
    images = random_images(model)
    method = TransformerAttribution(model)
    expected = method.attribute(images)
    with torch.inference_mode():
        got = method.attribute(images)
    torch.testing.assert_close(got, expected)
    with pytest.raises(TypeError):  # fails inside the hooked forward
        method.attribute(images.double())
    assert all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


def test_one_patch_toy_ranks_the_patch_first():
    for family in ["vit", "dinov2_reg"]:
        model, patch, image = attention_toy(family)
        heat = TransformerAttribution(model).attribute(image, informative_target(model, image, patch))
        assert int(heat.flatten().argmax()) == patch, family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_float32_and_float64(family):
    check_every_family(lambda model: TransformerAttribution(model), family, {"clip_headless": "no classifier head", "vit_avg": "global_pool='avg'"})
