"""Attribution patching (vit_lens.patching.atp) against the exact loop engine it linearizes (float64)."""
import pytest
import torch

from tests.conftest import make_hooked, random_images
from vit_lens.patching import ClassScore, ContextCache, Intervention, cache_context, run_loop
from vit_lens.patching.atp import _backward, run_atp


def setup(family="vit", seed=0):
    model = make_hooked(family, seed).double()
    source = cache_context(model, random_images(model, 2, seed=3).double())
    target = cache_context(model, random_images(model, 1, seed=4).double())
    return model, source, target


def interventions(model, start, end, size=3, seed=0):
    """One random set of ``size`` patches per patch (overlapping, like CAAP's neighbourhoods)."""
    g = torch.Generator().manual_seed(seed)
    n = model.cfg.n_patches
    return [Intervention.from_patches(model.layout, [p] + torch.randperm(n, generator=g)[:size - 1].tolist(), start, end)
            if size > 1 else Intervention.from_patches(model.layout, [p], start, end) for p in range(n)]


def interpolated(model, source: ContextCache, target: ContextCache, eps: float) -> ContextCache:
    """A source whose residual at every block is ``target + eps (source - target)``, with the keys and values
    those residuals give (what the exact engines read), so d/d eps at 0 is CAAP's linearization."""
    resid = target.resid_pre + eps * (source.resid_pre - target.resid_pre)
    ks, vs = [], []
    with torch.no_grad():
        for b, block in enumerate(model.blocks):
            _, k, v = block.attn.compute_qkv(block.ln1(resid[b]))
            ks.append(k)
            vs.append(v)
    return ContextCache(resid, torch.stack(ks), torch.stack(vs))


def loop(model, source, target, ivs, readout):
    return run_loop(model, source, target, ivs, readout, chunk_size=64)


def derivative(model, source, target, ivs, readout, h=1e-5):
    """Central finite difference of the exact (loop) engine along the source - target direction."""
    up = loop(model, interpolated(model, source, target, h), target, ivs, readout)
    down = loop(model, interpolated(model, source, target, -h), target, ivs, readout)
    return (up - down) / (2 * h)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("family", ["vit", "deit3", "clip_quickgelu", "dinov2_reg"])
@pytest.mark.parametrize("layers", [(0, 2), (1, 2), (2, 2)])
def test_atp_is_the_derivative_of_the_exact_engine(family, layers):
    """l_e the last block: nothing after l_e reads a frozen token, so AtP is exactly d/de of CAAP at e = 0."""
    model, source, target = setup(family)
    assert model.cfg.n_layers == 3
    ivs = interventions(model, *layers)
    readout = ClassScore(torch.tensor([1, 4]))
    base = loop(model, interpolated(model, source, target, 0.0), target, ivs, readout)
    slope = derivative(model, source, target, ivs, readout)
    atp = run_atp(model, source, target, ivs, readout)
    assert slope.std() > 1e-3 * slope.abs().max()  # patches differ
    assert rel(atp - base, slope) < 1e-6


def test_atp_is_the_derivative_when_the_set_is_the_whole_grid():
    """S = every patch: no token is frozen after l_e, so the one graph is CAAP's for any l_e."""
    model, source, target = setup("dinov2_reg")
    ivs = [Intervention.from_patches(model.layout, range(model.cfg.n_patches), s, e) for s, e in [(0, 0), (0, 1), (1, 1)]]
    readout = ClassScore(torch.tensor([2, 0]))
    base = loop(model, interpolated(model, source, target, 0.0), target, ivs, readout)
    assert rel(run_atp(model, source, target, ivs, readout) - base, derivative(model, source, target, ivs, readout)) < 1e-6


def test_atp_linearizes_frozen_tokens_after_layer_end():
    """l_e < last block with small sets: the paths through tokens CAAP freezes after l_e are linearized too, so
    AtP differs from d/de (documented), but only slightly on this model."""
    model, source, target = setup("vit")
    ivs = interventions(model, 0, 1)
    readout = ClassScore(torch.tensor([1, 4]))
    base = loop(model, interpolated(model, source, target, 0.0), target, ivs, readout)
    error = rel(run_atp(model, source, target, ivs, readout) - base, derivative(model, source, target, ivs, readout))
    assert 1e-5 < error < 0.05


@pytest.mark.parametrize("kind", ["prob", "log-prob", "logit-margin"])
def test_atp_derivative_for_other_readouts(kind):
    model, source, target = setup("deit3")
    ivs = interventions(model, 0, 2)
    readout = ClassScore(torch.tensor([3, 3]), kind=kind)
    base = loop(model, interpolated(model, source, target, 0.0), target, ivs, readout)
    assert rel(run_atp(model, source, target, ivs, readout) - base, derivative(model, source, target, ivs, readout)) < 1e-6


def test_atp_derivative_for_a_callable_readout_and_per_image_targets():
    model, source, target = setup("vit")
    direction = torch.randn(model.cfg.num_classes, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    readout = lambda out: torch.nn.functional.cosine_similarity(out, direction, dim=-1)  # noqa: E731
    ivs = interventions(model, 1, 2)
    target2 = cache_context(model, random_images(model, 2, seed=9).double())  # one target per image
    for tgt in (target, target2):
        base = loop(model, interpolated(model, source, tgt, 0.0), tgt, ivs, readout)
        assert rel(run_atp(model, source, tgt, ivs, readout) - base, derivative(model, source, tgt, ivs, readout)) < 1e-6


def linear_model(family="vit", attention="uniform", last_blocks_identity_from=None):
    """A model whose score is affine in every patched activation: LayerNorms removed, MLPs zeroed, no final
    norm, and uniform attention (zero queries and keys) unless ``attention="real"``. Blocks from
    ``last_blocks_identity_from`` on add nothing."""
    model = make_hooked(family).double()
    with torch.no_grad():
        for b, block in enumerate(model.blocks):
            block.mlp.fc2.weight.zero_()
            block.mlp.fc2.bias.zero_()
            if attention == "uniform":
                block.ln1 = torch.nn.Identity()
                hd = model.cfg.n_heads * model.cfg.d_head
                block.attn.qkv.weight[:2 * hd].zero_()
                block.attn.qkv.bias[:2 * hd].zero_()
            if last_blocks_identity_from is not None and b >= last_blocks_identity_from:
                block.attn.proj.weight.zero_()
                block.attn.proj.bias.zero_()
    model.cfg.final_norm = False
    return model


def contexts(model):
    return (cache_context(model, random_images(model, 2, seed=3).double()),
            cache_context(model, random_images(model, 1, seed=4).double()))


@pytest.mark.parametrize("layers,identity_from", [((0, 2), None), ((0, 1), 2), ((1, 1), 2), ((0, 0), 1)])
def test_atp_equals_exact_caap_when_the_score_is_linear(layers, identity_from):
    model = linear_model(last_blocks_identity_from=identity_from)
    source, target = contexts(model)
    ivs = interventions(model, *layers)
    readout = ClassScore(torch.tensor([1, 4]))
    exact = loop(model, source, target, ivs, readout)
    assert exact.std() > 1e-6
    assert rel(run_atp(model, source, target, ivs, readout), exact) < 1e-9


def test_atp_star_is_exact_when_the_prefix_attention_is_the_only_nonlinearity():
    """One block in the range, the last: the CLS reads S_k's source keys/values through one softmax (real
    attention, real ln1), then a linear head. AtP* recomputes that softmax; AtP linearizes it."""
    model = linear_model(attention="real")
    source, target = contexts(model)
    ivs = interventions(model, 2, 2)
    readout = ClassScore(torch.tensor([1, 4]))
    exact = loop(model, source, target, ivs, readout)
    star = run_atp(model, source, target, ivs, readout, exact_prefix_attention=True)
    atp = run_atp(model, source, target, ivs, readout)
    assert rel(star, exact) < 1e-9
    assert rel(atp, exact) > 1e-4  # the softmax is not linear


@pytest.mark.parametrize("family", ["vit", "dinov2_reg"])
def test_atp_star_agrees_with_atp_to_first_order(family):
    """AtP* changes only the second- and higher-order terms: its gap to AtP shrinks like eps^2."""
    model, source, target = setup(family)
    ivs = interventions(model, 0, 1)
    readout = ClassScore(torch.tensor([1, 4]))
    gaps = []
    for eps in (1e-2, 1e-3):
        src = interpolated(model, source, target, eps)
        gap = run_atp(model, src, target, ivs, readout, exact_prefix_attention=True) - run_atp(model, src, target, ivs, readout)
        gaps.append(gap.abs().max().item())
    assert gaps[0] > 0 and 50 < gaps[0] / gaps[1] < 200


def test_hop_gradient_is_the_whole_gradient_before_layer_end():
    """Before l_e a patch token's residual reaches the score only through the prefix queries' attention."""
    model, _, target = setup("dinov2_reg")
    grads = _backward(model, target, ClassScore(torch.tensor([5])), 1, 0, 1, exact=True)
    assert torch.allclose(grads.hop[0], grads.resid[0], rtol=1e-10, atol=1e-14)
    assert not torch.allclose(grads.hop[1], grads.resid[1], atol=1e-6)  # at l_e the token's own path counts
    last = _backward(model, target, ClassScore(torch.tensor([5])), 1, 2, 2, exact=True)
    assert torch.allclose(last.hop[0], last.resid[0], rtol=1e-10, atol=1e-14)  # ... unless no block follows


def test_atp_star_improves_on_atp_against_exact_patching():
    model, source, target = setup("dinov2_reg")
    ivs = interventions(model, 0, 2)
    readout = ClassScore(torch.tensor([1, 4]))
    exact = loop(model, source, target, ivs, readout)
    star = run_atp(model, source, target, ivs, readout, exact_prefix_attention=True)
    atp = run_atp(model, source, target, ivs, readout)
    assert rel(star, exact) < 0.5 * rel(atp, exact)


def test_class_gradients_are_cached_per_class_and_follow_weight_edits():
    model, source, target = setup("vit")
    ivs = interventions(model, 0, 2)
    readout = ClassScore(torch.tensor([1, 4]))
    uncached = lambda out: out[..., [1, 4]].diagonal(dim1=0, dim2=2).T  # noqa: E731  same logits, no cache
    first = run_atp(model, source, target, ivs, readout)
    assert len(target.derived["atp"]) == 2
    assert torch.allclose(first, run_atp(model, source, target, ivs, uncached), rtol=1e-12)
    assert torch.equal(first, run_atp(model, source, target, ivs, readout))  # from the cache
    with torch.no_grad():
        model.head.weight.mul_(2.0)
    fresh = cache_context(model, random_images(model, 1, seed=4).double())
    assert torch.allclose(run_atp(model, source, target, ivs, readout), run_atp(model, source, fresh, ivs, readout),
                          rtol=1e-12)


def test_refusals():
    model, source, target = setup("vit")
    ivs = interventions(model, 0, 2)
    with pytest.raises(ValueError, match="one score per image"):
        run_atp(model, source, target, ivs, lambda out: out[..., :2])
    avg = make_hooked("vit_avg").double()
    with pytest.raises(ValueError, match="pooling='avg'.*engine='loop'"):
        run_atp(avg, source, target, ivs, ClassScore(torch.tensor([0, 0])))
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: z * 0.5)]):
        with pytest.raises(ValueError, match="cannot honour hooks on \\['blocks.1.attn.hook_z'\\]"):
            run_atp(model, source, target, ivs, ClassScore(torch.tensor([0, 0])), exact_prefix_attention=True)
