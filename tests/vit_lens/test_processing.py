"""TransformerLens's weight processing (vit_lens.processing): every option keeps timm's logits on every family,
and changes in the cache exactly what the module docstring says (checked against the unprocessed model)."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import FAMILIES, make_hooked, make_timm, random_images
from vit_lens import HookedViT, ViTConfig
from vit_lens.patching import Intervention, run_patching
from vit_lens.processing import OPTIONS, process_weights

ALL = dict(fold_ln=True, center_writing_weights=True, fold_value_biases=True, refactor_factored_attn_matrices=True)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def processed(family, **options):
    source = make_timm(family)
    model = HookedViT.from_timm(source, **options)
    x = random_images(model)
    with torch.no_grad():
        return model, source(x), model(x), x


@pytest.mark.parametrize("option", [o for o in OPTIONS if o != "center_unembed"] + ["all"])
def test_each_option_keeps_timm_logits(family, option):
    options = ALL if option == "all" else {option: True}
    if family == "clip_headless" and options.get("fold_ln"):
        with pytest.raises(ValueError, match="fold_ln: this model is headless"):
            HookedViT.from_timm(make_timm(family), **options)
        return
    model, expected, logits, _ = processed(family, **options)
    assert rel(logits, expected) <= 1e-5
    assert model.cfg.normalization_type == ("LNPre" if options.get("fold_ln") else "LN")


def test_center_unembed_keeps_the_softmax(family):
    if family == "clip_headless":
        with pytest.raises(ValueError, match="center_unembed: this model is headless"):
            HookedViT.from_timm(make_timm(family), center_unembed=True)
        return
    _, expected, logits, _ = processed(family, center_unembed=True)
    assert logits.mean(-1).abs().max() < 1e-5 < expected.mean(-1).abs().max()
    assert rel(logits, expected - expected.mean(-1, keepdim=True)) <= 1e-5


def cache_of(model, x):
    with torch.no_grad():
        return model.run_with_cache(x)[1]


def test_fold_ln_cache_and_state_dict():
    plain = make_hooked("deit3")
    model = make_hooked("deit3").process_weights_(fold_ln=True)
    x = random_images(model)
    before, after = cache_of(plain, x), cache_of(model, x)
    resid = before["blocks.1.hook_resid_pre"]
    centred = resid - resid.mean(-1, keepdim=True)
    expected = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    assert rel(after["blocks.1.ln1.hook_normalized"], expected) <= 1e-5  # no affine any more
    assert rel(before["blocks.1.ln1.hook_normalized"], expected) > 1e-2
    for name in ("blocks.1.attn.hook_q", "blocks.2.mlp.hook_pre", "blocks.2.hook_resid_post"):
        assert rel(after[name], before[name]) <= 1e-5
    keys = model.state_dict().keys()
    assert not any(".ln1." in k or ".ln2." in k or k.startswith("ln_final.") for k in keys)
    assert "blocks.0.ln1.w" not in model.tl_parameters() and "blocks.0.ln1.w" in plain.tl_parameters()
    assert model.cfg.layer_norm_folding and model.ln_final.w.sum() == model.cfg.d_model
    fresh = HookedViT(model.cfg)  # the config rebuilds the same architecture
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
    # TL's weight views act on the folded norms' outputs
    q = torch.einsum("bpm,hmd->bphd", after["blocks.1.ln1.hook_normalized"], model.W_Q[1]) + model.b_Q[1]
    assert rel(q, after["blocks.1.attn.hook_q"]) <= 1e-5


def test_fold_ln_without_qkv_bias_and_on_a_cls_mean_head():
    name, kwargs = FAMILIES["vit"]
    torch.manual_seed(0)
    source = timm.create_model(name, pretrained=False, **{**kwargs, "qkv_bias": False}).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = HookedViT.from_timm(source, fold_ln=True)
    x = random_images(model)
    with torch.no_grad():
        assert rel(model(x), source(x)) <= 1e-5
    assert model.cfg.qkv_bias and model.blocks[0].attn.qkv.bias is not None

    model = make_hooked("dinov2")
    g = torch.Generator().manual_seed(0)
    model.set_cls_mean_head(torch.randn(5, 3 * model.cfg.d_model, generator=g), torch.randn(5, generator=g), 2)
    with torch.no_grad():
        expected = model(x := random_images(model))
        assert rel(model.process_weights_(**ALL, center_unembed=True)(x), expected - expected.mean(-1, keepdim=True)) <= 1e-5


def test_center_writing_weights_centres_the_stream():
    for family in ("dinov2_reg", "vit_avg", "clip_quickgelu"):
        model = make_hooked(family).process_weights_(center_writing_weights=True)
        cache = cache_of(model, random_images(model))
        names = ["hook_attn_out", "hook_mlp_out"] + ([] if model.cfg.pre_norm else ["hook_resid_pre", "hook_resid_post"])
        for l in range(model.cfg.n_layers):
            for name in names:
                act = cache[f"blocks.{l}.{name}"]
                assert act.mean(-1).abs().max() <= 1e-5 * act.abs().max(), (family, l, name)
        if model.cfg.layer_scale:
            assert all(torch.equal(b.ls1.gamma, torch.ones_like(b.ls1.gamma)) for b in model.blocks)
    cfg = ViTConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, patch_size=(4, 4), image_size=(8, 8),
                    grid_size=(2, 2), num_classes=3, final_norm=False)
    with pytest.raises(ValueError, match="no final norm"):
        process_weights(HookedViT(cfg), center_writing_weights=True)


def test_fold_value_biases_and_refactor_change_only_what_they_say():
    plain = make_hooked("dinov2")
    x = random_images(plain)
    before = cache_of(plain, x)
    model = make_hooked("dinov2").process_weights_(fold_value_biases=True)
    after = cache_of(model, x)
    assert model.b_V.abs().max() == 0 and plain.b_V.abs().max() > 0
    assert rel(after["blocks.1.attn.hook_v"], before["blocks.1.attn.hook_v"] - plain.b_V[1]) <= 1e-5
    assert rel(after["blocks.1.hook_attn_out"], before["blocks.1.hook_attn_out"]) <= 1e-5

    model = make_hooked("dinov2").process_weights_(refactor_factored_attn_matrices=True)
    model.set_use_attn_explicit(True)
    plain.set_use_attn_explicit(True)
    before, after = cache_of(plain, x), cache_of(model, x)
    assert rel(after["blocks.1.attn.hook_attn_scores"], before["blocks.1.attn.hook_attn_scores"]) <= 1e-5
    assert rel(after["blocks.1.hook_attn_out"], before["blocks.1.hook_attn_out"]) <= 1e-5
    assert rel(after["blocks.1.attn.hook_q"], before["blocks.1.attn.hook_q"]) > 1e-2
    w_o = model.W_O[1]  # a rotation: orthonormal rows
    assert torch.allclose(w_o @ w_o.transpose(-1, -2), torch.eye(model.cfg.d_head).expand_as(w_o @ w_o.transpose(-1, -2)), atol=1e-4)
    assert torch.allclose(model.QK[1].AB, plain.QK[1].AB, atol=1e-4) and torch.allclose(model.OV[1].AB, plain.OV[1].AB, atol=1e-4)


def test_bad_options_and_hooked_models_are_refused(tmp_path):
    model = make_hooked("vit")
    with pytest.raises(TypeError, match="fold_ln must be a bool; got 1"):
        process_weights(model, fold_ln=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        process_weights(model, fold_layernorm=True)
    model.add_hook("blocks.0.hook_resid_pre", lambda act, hook: None)
    with pytest.raises(ValueError, match="remove the hooks first"):
        model.process_weights_(fold_ln=True)
    # from_checkpoint takes the options too
    name, kwargs = FAMILIES["deit3"]
    source = make_timm("deit3")
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = HookedViT.from_checkpoint(tmp_path / "w.safetensors", model_name=name, fold_ln=True,
                                       fold_value_biases=True, **kwargs)
    x = random_images(loaded)
    with torch.no_grad():
        assert loaded.cfg.normalization_type == "LNPre" and rel(loaded(x), source(x)) <= 1e-5


def test_engines_agree_on_a_processed_model():
    from caap import CAAP

    model = make_hooked("deit3").process_weights_(**ALL, center_unembed=True)
    g = torch.Generator().manual_seed(0)
    ivs = [Intervention.from_patches(model.layout, torch.randperm(model.cfg.n_patches, generator=g)[:3].tolist(), s, e)
           for s, e in ((0, 0), (0, 2), (1, 2), (2, 2))]
    source, target = random_images(model, 2, seed=3), random_images(model, 1, seed=4)
    loop = run_patching(model, source, target, ivs, engine="loop")
    assert loop.std() > 1e-3
    assert rel(run_patching(model, source, target, ivs, engine="parallel"), loop) <= 1e-4
    images = random_images(model, 2, seed=5)
    caap_loop = CAAP(model, engine="loop").attribute(images)
    assert rel(CAAP(model, engine="parallel", chunk_size=3).attribute(images), caap_loop) <= 1e-4
