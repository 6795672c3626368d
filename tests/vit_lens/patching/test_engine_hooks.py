"""User hooks registered on the model are honoured by the parallel and efficient engines (issue 13)."""
import pytest
import torch

from tests.conftest import make_hooked, random_images
from tests.vit_lens.patching.test_engines import random_interventions, rel_err
from vit_lens.patching import run_patching


def _offset(model, seed=7):
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


# name -> hook factory; several are position- or head-dependent and none is idempotent, so a hook applied
# at the wrong positions, twice, or not at all changes the scores.
def hook_cases(model):
    L, off = model.cfg.n_layers, _offset(model)

    def ablate_head(z, hook):
        z[:, :, 1] = 0.0
        return z

    def shift_cls(x, hook):
        x = x.clone()
        x[:, 0] += off
        return x

    def scale_position(x, hook, pos=model.cfg.n_prefix_tokens + 3):
        x = x.clone()
        x[:, pos] *= 2.0
        return x

    return {
        "head_ablation_z": [(f"blocks.{b}.attn.hook_z", ablate_head) for b in range(L)],
        "attn_out_cls": [("blocks.1.hook_attn_out", shift_cls)],
        "mlp_out_zero": [(f"blocks.{L - 2}.hook_mlp_out", lambda x, hook: x * 0.0)],
        "resid_pre_every_block": [(f"blocks.{b}.hook_resid_pre", shift_cls) for b in range(L)],
        "resid_mid_post": [("blocks.1.hook_resid_mid", scale_position), (f"blocks.{L - 1}.hook_resid_post", shift_cls)],
        "qkv_ln_mlp": [("blocks.0.attn.hook_q", lambda t, hook: t * 1.5), ("blocks.1.attn.hook_k", lambda t, hook: t * -1.0),
                       ("blocks.2.attn.hook_v", lambda t, hook: t + 0.3), ("blocks.1.ln1.hook_normalized", scale_position),
                       ("blocks.2.ln2.hook_scale", lambda t, hook: t * 2.0), ("blocks.0.mlp.hook_post", lambda t, hook: t * 0.5),
                       ("ln_final.hook_normalized", shift_cls)],
    }


@pytest.mark.parametrize("family", ["vit", "dinov2_reg"])
@pytest.mark.parametrize("case", ["head_ablation_z", "attn_out_cls", "mlp_out_zero", "resid_pre_every_block",
                                  "resid_mid_post", "qkv_ln_mlp"])
def test_parallel_engine_applies_model_hooks_like_the_loop(family, case):
    model = make_hooked(family)
    L = model.cfg.n_layers
    ivs = random_interventions(model, 12, layer_ranges=[(0, 0), (0, L - 1), (1, 1), (0, 1), (1, L - 1)])
    source, target = random_images(model, 2, seed=3), random_images(model, 1, seed=4)
    classes = torch.tensor([1, 2])
    plain = run_patching(model, source, target, ivs, engine="parallel", target_classes=classes)
    for name, hook in hook_cases(model)[case]:
        model.add_hook(name, hook, is_permanent=True)
    try:
        loop = run_patching(model, source, target, ivs, engine="loop", target_classes=classes)
        parallel = run_patching(model, source, target, ivs, engine="parallel", target_classes=classes, chunk_size=5)
    finally:
        model.reset_hooks(including_permanent=True)
    assert rel_err(loop, plain) > 1e-3  # the hooks change the scores
    assert rel_err(parallel, loop) <= 1e-4


def test_efficient_engine_applies_hooks_exactly_when_the_source_is_the_target():
    model = make_hooked("dinov2")
    image = random_images(model, 1, seed=3)
    ivs = random_interventions(model, 8, seed=1)
    with model.hooks(fwd_hooks=hook_cases(model)["head_ablation_z"] + hook_cases(model)["attn_out_cls"]):
        loop = run_patching(model, image, image, ivs, engine="loop", target_classes=torch.tensor([3]))
        efficient = run_patching(model, image, image, ivs, engine="efficient", target_classes=torch.tensor([3]))
    assert rel_err(efficient, loop) <= 1e-4


@pytest.mark.parametrize("engine", ["parallel", "efficient"])
def test_hooks_the_engines_cannot_honour_are_refused(engine):
    model = make_hooked("vit")
    source, target = random_images(model, 1, seed=3), random_images(model, 1, seed=4)
    ivs = random_interventions(model, 3)
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", lambda p, hook: p)]):
        with pytest.raises(ValueError, match=r"cannot honour hooks on \['blocks.1.attn.hook_pattern'\].*engine='loop'"):
            run_patching(model, source, target, ivs, engine=engine)
    mean_ablate = lambda x, hook: x.mean(1, keepdim=True).expand_as(x).clone()  # noqa: E731  mixes positions
    with model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", mean_ablate)]):
        with pytest.raises(ValueError, match="blocks.1.hook_mlp_out.*reads token positions.*engine='loop'"):
            run_patching(model, source, target, ivs, engine=engine)
        run_patching(model, source, target, ivs, engine="loop")  # the reference engine runs it


def test_hook_returning_a_wrong_shape_is_refused():
    model = make_hooked("vit")
    with pytest.raises(ValueError, match=r"hook on 'blocks.0.hook_resid_post' returned shape \(1, "):
        model.run_with_hooks(random_images(model, 2), fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x[:1])])
    with pytest.raises(ValueError, match="returned shape"):
        model.run_with_hooks(random_images(model, 2), fwd_hooks=[("blocks.0.hook_attn_out", lambda x, hook: x[:, 1:])])
