import pytest
import torch
from captum.attr import InputXGradient as CaptumIxG
from captum.attr import LayerGradientXActivation

from caap import get_method
from caap.baselines import InputXGradient, IxGPlus, LibraIxGPlus
from caap.baselines.input_x_gradient import LIBRA_RULES, libra_hooks
from tests.caap.baselines.manual_vit import (check_hooks_removed_after_an_exception, float64_pair,
                                             manual_forward, no_hooks_left, one_patch_attention_model)
from tests.conftest import FAMILIES, make_hooked, random_images

HEADED = [f for f in FAMILIES if f != "clip_headless"]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def prob_of(tm):
    return lambda x: tm(x).softmax(-1)


@pytest.mark.parametrize("family", HEADED)
def test_ixg_matches_captum_on_the_tokens_entering_the_blocks(family):
    tm, model = float64_pair(family)
    images = random_images(model, 2).double()
    target = torch.tensor([2, 5])
    tokens = tm.norm_pre(tm._pos_embed(tm.patch_embed(images))).detach()  # after CLIP's norm_pre

    def from_tokens(t):
        return tm.forward_head(tm.norm(tm.blocks(t))).softmax(-1)

    expected = CaptumIxG(from_tokens).attribute(tokens, target=target).sum(-1)[:, tm.num_prefix_tokens:]
    assert rel_err(InputXGradient(model).attribute(images, target).flatten(1), expected) <= 1e-5
    logits = CaptumIxG(lambda t: tm.forward_head(tm.norm(tm.blocks(t))))
    expected = logits.attribute(tokens, target=target).sum(-1)[:, tm.num_prefix_tokens:]
    assert rel_err(InputXGradient(model, score="logit").attribute(images, target).flatten(1), expected) <= 1e-5


@pytest.mark.parametrize("family,start", [(f, None) for f in HEADED] + [("vit", 0), ("clip_quickgelu", 2)])
def test_ixg_plus_matches_captum_layer_gradient_x_activation(family, start):
    tm, model = float64_pair(family)
    images = random_images(model, 2).double()
    target = torch.tensor([1, 4])
    first = len(tm.blocks) // 2 if start is None else start
    expected = sum(LayerGradientXActivation(prob_of(tm), tm.blocks[l])
                   .attribute(images, target=target, attribute_to_layer_input=True).sum(-1)
                   for l in range(first, len(tm.blocks)))[:, tm.num_prefix_tokens:]
    got = IxGPlus(model, start_layer=start).attribute(images, target)
    assert rel_err(got.flatten(1), expected) <= 1e-5


CASES = [("vit", LIBRA_RULES), ("vit", ("attention",)), ("vit_avg", LIBRA_RULES), ("vit_avg", ("layernorm",)),
         ("clip_quickgelu", LIBRA_RULES), ("clip_quickgelu", ("activation",)), ("dinov2_reg", LIBRA_RULES),
         ("dinov2_reg", ("layernorm", "activation"))]


@pytest.mark.parametrize("family,rules", CASES)
def test_libra_matches_explicit_detach_forward(family, rules):
    tm, model = float64_pair(family)
    images = random_images(model, 2).double().requires_grad_()
    target = torch.tensor([3, 0])
    run = manual_forward(tm, images, const_std="layernorm" in rules, const_attn="attention" in rules,
                         const_gate="activation" in rules)
    prob = run.logits.softmax(-1)[torch.arange(2), target].sum()
    inputs = run.block_inputs[len(tm.blocks) // 2:]
    grads = torch.autograd.grad(prob, inputs)
    expected = sum((x * g).sum(-1) for x, g in zip(inputs, grads))[:, tm.num_prefix_tokens:]
    got = LibraIxGPlus(model, rules=rules).attribute(images.detach(), target)
    assert rel_err(got.flatten(1), expected) <= 1e-5
    if rules == LIBRA_RULES:  # the rules change the result: the test above can fail
        assert rel_err(IxGPlus(model).attribute(images.detach(), target).flatten(1), expected) > 1e-3


@pytest.mark.parametrize("family", ["vit_avg", "clip_quickgelu", "dinov2_reg"])
def test_libra_rules_give_fullgrad_completeness(family):
    """LibraGrad's criterion: with its rules the logit equals input x gradient of block 0's input plus
    bias x gradient of every bias downstream (the backward sees a network linear in both)."""
    tm, model = float64_pair(family)
    images = random_images(model, 2).double()
    biases = [p for n, p in model.named_parameters() if n.startswith(("blocks.", "ln_final.", "fc_norm.", "head."))
              and (n.endswith(".bias") or n.endswith(".b"))]
    for rules, complete in [(LIBRA_RULES, True), (("layernorm", "attention"), False), ((), False)]:
        acts = {}
        keep = [("blocks.0.hook_resid_pre", lambda a, hook: acts.setdefault("x", a.detach().requires_grad_()))]
        with model.hooks(fwd_hooks=keep + libra_hooks(model, rules)):
            logit = model(images)[:, 3]
        per_image = [torch.autograd.grad(logit[i], [acts["x"], *biases], retain_graph=True) for i in range(2)]
        recon = torch.stack([(acts["x"][i] * g[0][i]).sum() + sum((b * gb).sum() for b, gb in zip(biases, g[1:]))
                             for i, g in enumerate(per_image)])
        assert (torch.allclose(recon, logit.detach(), rtol=1e-9, atol=1e-9)) == complete, rules


def test_attention_rule_is_the_plain_gradient_when_the_pattern_is_constant():
    tm, model = float64_pair("dinov2_reg")
    d = model.cfg.d_model
    with torch.no_grad():
        for block in model.blocks:  # zero queries and keys: uniform attention whatever the input
            block.attn.qkv.weight[: 2 * d] = 0
            block.attn.qkv.bias[: 2 * d] = 0
    images = random_images(model, 2).double()
    plain = IxGPlus(model, start_layer=0).attribute(images, 1)
    assert rel_err(LibraIxGPlus(model, start_layer=0, rules=("attention",)).attribute(images, 1), plain) <= 1e-12
    assert rel_err(LibraIxGPlus(model, start_layer=0, rules=()).attribute(images, 1), plain) <= 1e-12
    assert rel_err(LibraIxGPlus(model, start_layer=0, rules=("layernorm",)).attribute(images, 1), plain) > 1e-3


@pytest.mark.parametrize("name", ["ixg", "ixg+", "libra-ixg+"])
def test_one_informative_patch_ranks_first(name):
    _, model, patch = one_patch_attention_model()
    images = random_images(model, 2).double()
    maps = [get_method(name, model).attribute(images, target=t).flatten(1) for t in (0, 1)]
    best = max(maps, key=lambda m: m[:, patch].min().item())  # signed maps: one of the classes +-w
    assert (best.argmax(-1) == patch).all()
    others = torch.cat([best[:, :patch], best[:, patch + 1:]], -1)
    assert (others.abs().max(-1).values < 1e-6 * best[:, patch]).all()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("cls", [InputXGradient, IxGPlus, LibraIxGPlus])
def test_families_inference_mode_batching_and_no_hooks_left(family, cls):
    model = make_hooked(family)
    images = random_images(model, 2)
    if model.cfg.num_classes == 0:
        with pytest.raises(ValueError, match="no classifier head"):
            cls(model).attribute(images)
        return
    out = cls(model).attribute(images, target=[1, 2])
    assert out.shape == (2, *model.cfg.grid_size) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert no_hooks_left(model)
    with torch.inference_mode():
        inf = cls(model).attribute(images.clone(), target=[1, 2])
    assert torch.allclose(inf, out, rtol=1e-4, atol=1e-8)
    assert torch.allclose(cls(model).attribute(images[1:], 2), out[1:], rtol=1e-4, atol=1e-8)
    model.requires_grad_(False)  # frozen weights still give a gradient
    assert torch.allclose(cls(model).attribute(images, target=[1, 2]), out, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("cls", [InputXGradient, IxGPlus, LibraIxGPlus])
def test_hooks_removed_after_an_exception(cls, monkeypatch):
    model = make_hooked("clip_quickgelu")
    check_hooks_removed_after_an_exception(cls(model), model, monkeypatch)


def test_bad_options_are_refused():
    model = make_hooked("vit")
    with pytest.raises(ValueError, match="score"):
        InputXGradient(model, score="probability")
    with pytest.raises(ValueError, match="start_layer"):
        IxGPlus(model, start_layer=3)
    with pytest.raises(ValueError, match="rules"):
        LibraIxGPlus(model, rules=("softmax",))
    with pytest.raises(ValueError, match="rules"):
        LibraIxGPlus(model, rules="layernorm")
    with pytest.raises(ValueError, match="empty batch"):
        IxGPlus(model).attribute(random_images(model, 1)[:0], target=0)


def test_activation_rule_refuses_gated_mlps():
    model = make_hooked("vit")
    model.cfg.mlp_type = "swiglu"  # only the flag: the rule must refuse before any forward
    with pytest.raises(ValueError, match="gated MLPs"):
        LibraIxGPlus(model)
    LibraIxGPlus(model, rules=("layernorm", "attention"))
