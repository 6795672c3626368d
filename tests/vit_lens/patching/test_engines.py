"""The parallel and efficient engines against the reference loop, and the loop against its definition."""
import pytest
import torch

from tests.conftest import make_hooked, random_images
from vit_lens.patching import ClassScore, Intervention, PrecomputedFrozenAttention, cache_context, run_patching

ENGINE_FAMILIES = ["vit", "deit3", "clip_quickgelu", "dinov2", "dinov2_reg"]


def random_interventions(model, n, seed=0, layer_ranges=None):
    g = torch.Generator().manual_seed(seed)
    L, out = model.cfg.n_layers, []
    for k in range(n):
        size = int(torch.randint(1, 6, (1,), generator=g))
        patches = torch.randperm(model.cfg.n_patches, generator=g)[:size].tolist()
        if layer_ranges:
            start, end = layer_ranges[k % len(layer_ranges)]
        else:
            start = int(torch.randint(0, L, (1,), generator=g))
            end = int(torch.randint(start, L, (1,), generator=g))
        out.append(Intervention.from_patches(model.layout, patches, start, end))
    return out


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("family", ENGINE_FAMILIES)
@pytest.mark.parametrize("target_batch", [1, 2])
def test_parallel_equals_loop(family, target_batch):
    model = make_hooked(family)
    L = model.cfg.n_layers
    ranges = [(0, 0), (0, L - 1), (1, 1), (1, L - 1), (0, 1), (L - 1, L - 1)]
    interventions = random_interventions(model, 18, layer_ranges=ranges)
    source, target = random_images(model, 2, seed=3), random_images(model, target_batch, seed=4)
    loop = run_patching(model, source, target, interventions, engine="loop", chunk_size=7)
    parallel = run_patching(model, source, target, interventions, engine="parallel", chunk_size=4)
    assert loop.shape == (2, 18)
    assert loop.std() > 1e-3  # interventions matter
    assert rel_err(parallel, loop) <= 1e-4


def test_chunking_does_not_change_results():
    model = make_hooked("dinov2_reg")
    interventions = random_interventions(model, 10, seed=2)
    source, target = random_images(model, 2, seed=3), random_images(model, 1, seed=4)
    big = run_patching(model, source, target, interventions, engine="parallel")
    tiny_budget = run_patching(model, source, target, interventions, engine="parallel", memory_budget_gb=1e-9)
    assert torch.allclose(big, tiny_budget, atol=1e-6)


def manual_single_intervention(model, source, target, iv, freeze_context, target_class):
    """The definition written out for one intervention with run_with_hooks (no batching)."""
    with torch.no_grad():
        _, src = model.run_with_cache(source, names_filter=lambda n: n.endswith("hook_resid_pre"))
        _, tgt = model.run_with_cache(target, names_filter=lambda n: n.endswith("hook_resid_pre"))
    n_pre = model.cfg.n_prefix_tokens

    def edit(resid, hook):
        b = int(hook.name.split(".")[1])
        resid = resid.clone()
        for pos in range(n_pre, model.cfg.n_tokens):
            if pos not in iv.positions and freeze_context:
                resid[:, pos] = tgt[hook.name][:, pos]
            if pos in iv.positions and iv.layer_start <= b <= iv.layer_end:
                resid[:, pos] = src[hook.name][:, pos]
        return resid

    hooks = [(f"blocks.{b}.hook_resid_pre", edit) for b in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits = model.run_with_hooks(target.expand(source.shape[0], -1, -1, -1), fwd_hooks=hooks)
    return logits.gather(1, target_class[:, None]).squeeze(1)


@pytest.mark.parametrize("freeze_context", [True, False])
@pytest.mark.parametrize("family", ["vit_avg", "dinov2_reg"])
def test_loop_matches_definition(freeze_context, family):
    model = make_hooked(family)
    source, target = random_images(model, 2, seed=3), random_images(model, 1, seed=4)
    interventions = random_interventions(model, 4, seed=5)
    cls = torch.tensor([1, 4])
    loop = run_patching(model, source, target, interventions, engine="loop", freeze_context=freeze_context,
                        target_classes=cls)
    for k, iv in enumerate(interventions):
        expected = manual_single_intervention(model, source, target, iv, freeze_context, cls)
        assert torch.allclose(loop[:, k], expected, atol=1e-5)


@pytest.mark.parametrize("engine", ["loop", "parallel", "efficient"])
def test_patching_everything_reproduces_the_source(engine):
    model = make_hooked("dinov2_reg")
    source, target = random_images(model, 2, seed=3), random_images(model, 1, seed=4)
    everything = Intervention(tuple(range(model.cfg.n_prefix_tokens, model.cfg.n_tokens)), 0, model.cfg.n_layers - 1)
    with torch.no_grad():
        logits = model(source)
    scores = run_patching(model, source, target, [everything], engine=engine, readout=lambda out: out)
    assert torch.allclose(scores[:, 0], logits, atol=1e-4)


@pytest.mark.parametrize("exact_patch_queries", [True, False])
def test_efficient_is_exact_when_source_is_the_target(exact_patch_queries):
    model = make_hooked("dinov2_reg")
    image = random_images(model, 1, seed=4)
    interventions = random_interventions(model, 12, seed=1)
    frozen = PrecomputedFrozenAttention(exact_patch_queries=exact_patch_queries)
    exact = run_patching(model, image, image, interventions, engine="parallel", target_classes=torch.tensor([2]))
    approx = run_patching(model, image, image, interventions, engine="efficient", target_classes=torch.tensor([2]),
                          frozen_attention=frozen)
    assert rel_err(approx, exact) <= 1e-5


def test_approximating_patch_queries_too_changes_scores():
    model = make_hooked("vit")
    source, target = random_images(model, 2, seed=3), random_images(model, 1, seed=4)
    interventions = random_interventions(model, 12, seed=1, layer_ranges=[(0, 0)])
    default = run_patching(model, source, target, interventions, engine="efficient")
    cruder = run_patching(model, source, target, interventions, engine="efficient",
                          frozen_attention=PrecomputedFrozenAttention(exact_patch_queries=False))
    assert rel_err(cruder, default) > 1e-4


def test_efficient_differs_but_stays_close_on_real_sources():
    model = make_hooked("deit3")
    source, target = random_images(model, 2, seed=3), random_images(model, 1, seed=4)
    interventions = random_interventions(model, 12, seed=1)
    exact = run_patching(model, source, target, interventions, engine="parallel")
    approx = run_patching(model, source, target, interventions, engine="efficient")
    assert 0 < rel_err(approx, exact) < 0.2


def test_target_cache_is_reused_and_prob_readout():
    model = make_hooked("vit")
    target = cache_context(model, random_images(model, 1, seed=4), with_queries=True)
    source = random_images(model, 2, seed=3)
    interventions = random_interventions(model, 5)
    first = run_patching(model, source, None, interventions, engine="efficient", target_cache=target)
    assert target.derived  # E-CAAP statistics were stored on the target context
    again = run_patching(model, source, None, interventions, engine="efficient", target_cache=target)
    assert torch.equal(first, again)
    cls = torch.tensor([0, 3])
    probs = run_patching(model, source, None, interventions, target_cache=target,
                         readout=ClassScore(cls, kind="prob"))
    assert (probs > 0).all() and (probs < 1).all()


def test_parallel_refuses_what_it_cannot_do_exactly():
    model = make_hooked("vit_avg")
    x = random_images(model, 1)
    iv = [Intervention.from_patches(model.layout, [0], 0, 1)]
    with pytest.raises(ValueError, match="pooling='avg'.*engine='loop'"):
        run_patching(model, x, x, iv, engine="parallel")
    model = make_hooked("vit")
    with pytest.raises(ValueError, match="freeze_context=True.*engine='loop'"):
        run_patching(model, x, x, iv, engine="parallel", freeze_context=False)


@pytest.mark.parametrize("interventions,match", [
    ([], "non-empty"),
    ([Intervention((0,), 0, 1)], r"not patch-token positions; allowed \[1, 17\)"),
    ([Intervention((1, 1), 0, 1)], "duplicates"),
    ([Intervention((1,), 2, 1)], "layer_start <= layer_end"),
    ([Intervention((1,), 0, 3)], "n_layers=3"),
])
def test_bad_interventions_are_refused(interventions, match):
    model = make_hooked("vit")
    x = random_images(model, 1)
    with pytest.raises(ValueError, match=match):
        run_patching(model, x, x, interventions)


def test_bad_engine_and_target_batch_are_refused():
    model = make_hooked("vit")
    iv = [Intervention.from_patches(model.layout, [0], 0, 1)]
    with pytest.raises(ValueError, match="engine must be one of"):
        run_patching(model, random_images(model, 1), random_images(model, 1), iv, engine="fast")
    with pytest.raises(ValueError, match="batch 1 or 3"):
        run_patching(model, random_images(model, 3), random_images(model, 2), iv)


@pytest.mark.parametrize("family", ["vit", "dinov2_reg"])
def test_source_read_up_to_last_patched_block_and_qkv_reused(family):
    """The parallel engine reads a source only up to its last patched block and gathers the source's q/k/v at
    ``layer_end`` (no hook registered): in float64 it equals recomputing them (a full cache without queries)
    and the loop engine, and the truncated cache really stops there."""
    model = make_hooked(family).double()
    L = model.cfg.n_layers
    interventions = random_interventions(model, 12, seed=5, layer_ranges=[(0, 0), (0, L - 2), (L - 2, L - 2)])
    source = random_images(model, 2, seed=6).double()
    target = cache_context(model, random_images(model, 1, seed=7).double())
    last = max(iv.layer_end for iv in interventions)
    short = cache_context(model, source, with_queries=True, up_to=last)
    assert short.n_blocks == last + 1 < L and short.q.shape[0] == last + 1
    full = cache_context(model, source)
    assert torch.equal(short.resid_pre, full.resid_pre[:last + 1]) and torch.equal(short.k, full.k[:last + 1])
    readout = ClassScore(torch.tensor([1, 2]))
    kw = dict(readout=readout, target_cache=target, engine="parallel")
    reused = run_patching(model, None, None, interventions, source_cache=short, **kw)
    recomputed = run_patching(model, None, None, interventions, source_cache=full, **kw)
    loop = run_patching(model, None, None, interventions, source_cache=full, readout=readout, target_cache=target,
                        engine="loop")
    assert loop.std() > 1e-3
    assert (reused - recomputed).abs().max() <= 1e-10 * recomputed.abs().max()
    assert (reused - loop).abs().max() <= 1e-10 * loop.abs().max()
    too_short = cache_context(model, source, up_to=last - 1)
    with pytest.raises(ValueError, match=r"source cache must hold blocks 0\.\.%d" % last):
        run_patching(model, None, None, interventions, source_cache=too_short, **kw)
    with pytest.raises(ValueError, match="loop engine reads every block"):
        run_patching(model, None, None, interventions, source_cache=short, readout=readout, target_cache=target,
                     engine="loop")
    with pytest.raises(ValueError, match="up_to must be None or a block index"):
        cache_context(model, source, up_to=L)
