"""HookedViT.from_open_clip: output == open_clip's encode_image, per-layer residual stream, eval transform,
refusals, and a CLIP text embedding as the CAAP score. Tiny random towers only (no hub)."""
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIPTextCfg, CLIPVisionCfg  # noqa: E402

from vit_lens import HookedViT, UnsupportedModelError  # noqa: E402

REL_TOL = 1e-5
TEXT = dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1)
VISION = dict(width=64, layers=3, head_width=16, patch_size=8, image_size=32)  # 4 heads, 4x4 grid
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """open_clip zero-inits biases and sets LayerNorms to identity: perturb every parameter so a porting
    mistake (a dropped bias, a transposed projection) changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return model.eval()


def tiny_clip(seed: int = 0, quick_gelu: bool = False, **vision) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = open_clip.CLIP(16, vision_cfg=CLIPVisionCfg(**{**VISION, **vision}), text_cfg=CLIPTextCfg(**TEXT),
                           quick_gelu=quick_gelu)
    return perturb(model, seed)


def images_for(model: HookedViT, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.cfg.image_size, generator=g).to(model.cfg.dtype)


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


VARIANTS = {  # name -> (CLIPVisionCfg overrides, quick_gelu, what the config must read)
    "openai_quickgelu": (dict(), True, dict(act_fn="quick_gelu", pooling="token", pre_norm=True)),
    "gelu_avg_pool": (dict(pool_type="avg"), False, dict(act_fn="gelu", pooling="avg", final_norm=True)),
    "avg_final_ln_after_pool": (dict(pool_type="avg", final_ln_after_pool=True), False,
                                dict(pooling="avg", final_norm=False, fc_norm=True)),
    "tok_final_ln_after_pool": (dict(final_ln_after_pool=True), False, dict(pooling="token", final_norm=True)),
    "layer_scale": (dict(ls_init_value=0.5), False, dict(layer_scale=True)),
    "no_ln_pre": (dict(no_ln_pre=True), False, dict(pre_norm=False)),
    "custom_block": (dict(block_type="custom"), False, dict(qkv_bias=True)),
    "sin_cos_pos_embed": (dict(pos_embed_type="sin_cos_2d"), False, dict(pooling="token")),
    "patch_dropout_eval": (dict(patch_dropout=0.5), False, dict(pooling="token")),
    "output_tokens": (dict(output_tokens=True), False, dict(pooling="token")),
    "non_square": (dict(image_size=(32, 48)), False, dict(grid_size=(4, 6))),
    "gelu_tanh": (dict(act_kwargs={"approximate": "tanh"}), False, dict(act_fn="gelu_tanh")),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_output_equals_encode_image(variant, dtype):
    vision, quick_gelu, expected_cfg = VARIANTS[variant]
    clip = tiny_clip(quick_gelu=quick_gelu, **vision).to(dtype)
    source = clip.visual if variant in ("layer_scale", "custom_block") else clip  # both inputs are accepted
    model = HookedViT.from_open_clip(source)
    for key, value in expected_cfg.items():
        assert getattr(model.cfg, key) == value, key
    assert model.cfg.num_classes == 16 and model.cfg.dtype == dtype
    x = images_for(model)
    with torch.no_grad():
        expected, got = clip.encode_image(x), model(x)
    if variant == "output_tokens":
        expected = expected[0]  # (pooled, tokens): the port's output is the pooled embedding
    assert got.shape == expected.shape == (2, 16)
    assert expected.abs().max() > 0.1
    assert rel_err(got, expected) <= REL_TOL


def test_headless_tower_outputs_pooled_features():
    clip = tiny_clip()
    clip.visual.proj = None  # open_clip's prune_intermediate_layers(prune_head=True) does this
    model = HookedViT.from_open_clip(clip.visual)
    assert model.cfg.num_classes == 0 and model.head is None
    x = images_for(model)
    with torch.no_grad():
        assert rel_err(model(x), clip.encode_image(x)) <= REL_TOL


@pytest.mark.parametrize("vision", [dict(), dict(ls_init_value=0.5, pool_type="avg")])
def test_residual_stream_matches_every_block(vision):
    clip = tiny_clip(**vision)
    model = HookedViT.from_open_clip(clip)
    x = images_for(model)
    outs = []
    visual = clip.visual
    handles = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in visual.transformer.resblocks]
    handles.append(visual.ln_pre.register_forward_hook(lambda m, i, o: outs.insert(0, o)))
    try:
        with torch.no_grad():
            clip.encode_image(x)
            _, cache = model.run_with_cache(x)
    finally:
        for h in handles:
            h.remove()
    assert len(outs) == 1 + model.cfg.n_layers
    assert rel_err(cache["blocks.0.hook_resid_pre"], outs[0]) <= REL_TOL
    for layer, expected in enumerate(outs[1:]):
        assert expected.shape == (2, model.cfg.n_tokens, model.cfg.d_model)  # batch-first in open_clip 3
        assert rel_err(cache[f"blocks.{layer}.hook_resid_post"], expected) <= REL_TOL, layer


SHRUNK = dict(vision_cfg=dict(width=64, layers=2, head_width=16, patch_size=16, image_size=48), text_cfg=TEXT)


@pytest.mark.parametrize("preprocess", [dict(), dict(image_resize_mode="squash"),
                                        dict(image_interpolation="bilinear"),
                                        dict(image_mean=(0.1, 0.2, 0.3), image_std=(0.5, 0.4, 0.3))])
def test_name_path_output_and_transform(preprocess):
    """A model name (ViT-B-32-quickgelu, shrunk) with pretrained=None: the weights equal open_clip's own
    create_model_and_transforms at the same seed, and the transform equals its preprocess_val."""
    from PIL import Image

    name = "ViT-B-32-quickgelu"
    torch.manual_seed(0)
    clip, _, preprocess_val = open_clip.create_model_and_transforms(name, pretrained=None, **SHRUNK, **preprocess)
    torch.manual_seed(0)
    model = HookedViT.from_open_clip(name, pretrained=None, **SHRUNK, **preprocess)
    assert model.cfg.model_name == name and model.cfg.act_fn == "quick_gelu"
    assert model.cfg.mean == tuple(preprocess.get("image_mean", OPENAI_MEAN))
    x = images_for(model)
    with torch.no_grad():
        assert rel_err(model(x), clip.eval().encode_image(x)) <= REL_TOL
    g = torch.Generator().manual_seed(2)
    for size in ((70, 50), (40, 90)):  # landscape and portrait, neither at the model's size
        image = Image.fromarray((torch.rand(*size, 3, generator=g) * 255).byte().numpy())
        expected = preprocess_val(image)
        assert expected.shape == (3, 48, 48)
        assert torch.allclose(model.transform(image), expected, atol=1e-6)


def test_non_square_transform_matches():
    from PIL import Image

    clip = tiny_clip(image_size=(32, 48))
    model = HookedViT.from_open_clip(clip)
    preprocess_val = open_clip.image_transform(clip.visual.image_size, is_train=False)
    image = Image.fromarray((torch.rand(61, 77, 3, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy())
    assert torch.allclose(model.transform(image), preprocess_val(image), atol=1e-6)


def test_letterbox_preprocess_is_refused():
    with pytest.raises(UnsupportedModelError, match="resize_mode='longest'"):
        HookedViT.from_open_clip("ViT-B-32", pretrained=None, image_resize_mode="longest", **SHRUNK)


@pytest.mark.parametrize("vision,match", [
    (dict(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2), "attentional pooler"),
    (dict(pool_type="none"), "pool_type='none'"),
    (dict(qk_norm=True), "qk_norm"),
    (dict(scale_fc=True, scale_attn=True), "scale_attn, scale_fc"),
    (dict(scale_heads=True), "scale_heads"),
    (dict(layers=(1, 1, 1, 1), width=16), "ModifiedResNet"),
])
def test_unsupported_features_are_refused_by_name(vision, match):
    clip = tiny_clip(**vision)
    with pytest.raises(UnsupportedModelError, match=match):
        HookedViT.from_open_clip(clip)


# ---------------------------------------------------------------------------------------- timm towers
def timm_tower_clip(pool="token", proj="linear", proj_bias=False, trunk="vit_tiny_patch16_224") -> torch.nn.Module:
    vision = CLIPVisionCfg(timm_model_name=trunk, timm_pool=pool, timm_proj=proj, timm_proj_bias=proj_bias,
                           image_size=224)
    torch.manual_seed(0)
    return perturb(open_clip.CLIP(16, vision_cfg=vision, text_cfg=CLIPTextCfg(**TEXT)))


@pytest.mark.parametrize("proj,proj_bias,pool,n_out", [
    ("linear", False, "token", 16),  # open_clip's proj Linear becomes the head (zero bias)
    ("linear", True, "avg", 16),
    ("", False, "token", 16),  # timm_proj=None/'': the trunk's own head (with bias) is the projection
    ("none", False, "token", 192),  # pass-through: the pooled trunk features
])
def test_timm_tower_ports_through_timm(proj, proj_bias, pool, n_out):
    clip = timm_tower_clip(pool, proj, proj_bias)
    model = HookedViT.from_open_clip(clip)
    assert model.cfg.d_vocab_out == n_out and model.cfg.pooling == pool
    assert model.cfg.mean == OPENAI_MEAN and model.cfg.crop_pct == 1.0  # open_clip's transform, not timm's
    assert model.cfg.model_name == "vit_tiny_patch16_224"
    x = images_for(model, batch=1)
    with torch.no_grad():
        expected = clip.encode_image(x)
        assert expected.shape == (1, n_out)
        assert rel_err(model(x), expected) <= REL_TOL


@pytest.mark.parametrize("pool,proj,trunk,match", [
    ("map", "none", "test_vit3", "open_clip timm tower 'test_vit3'.*attention pooling"),  # SigLIP's head
    ("token", "mlp", "test_vit", "MLP projection"),
])
def test_timm_tower_heads_it_cannot_reproduce_are_refused(pool, proj, trunk, match):
    with pytest.raises(UnsupportedModelError, match=match):
        HookedViT.from_open_clip(timm_tower_clip(pool, proj, trunk=trunk))


# ---------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("call,error,match", [
    (lambda: HookedViT.from_open_clip("ViT-B-33", pretrained=None), ValueError, "unknown open_clip model.*ViT-B-32"),
    (lambda: HookedViT.from_open_clip("ViT-B-32"), ValueError, "pretrained is required.*openai"),
    (lambda: HookedViT.from_open_clip("ViT-B-32", pretrained="no_such_tag"), ValueError,
     "neither a tag of open_clip model 'ViT-B-32'"),
    (lambda: HookedViT.from_open_clip(tiny_clip(), pretrained="openai"), ValueError, "apply to a model name"),
    (lambda: HookedViT.from_open_clip(torch.nn.Linear(2, 2)), TypeError, "got Linear"),
    (lambda: HookedViT.from_open_clip(3), TypeError, "got int"),
])
def test_bad_arguments_get_one_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------------------- CAAP
def test_text_embedding_as_caap_score_parallel_equals_loop():
    from caap import CAAP

    clip = tiny_clip(quick_gelu=True)
    model = HookedViT.from_open_clip(clip)
    tokens = torch.randint(0, TEXT["vocab_size"], (1, TEXT["context_length"]), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        text = clip.encode_text(tokens)[0]  # [embed_dim]

    def cosine_to_text(output):  # [batch, K, embed_dim] -> [batch, K]
        return F.cosine_similarity(output, text.expand_as(output), dim=-1)

    x = images_for(model)
    loop = CAAP(model, score=cosine_to_text, engine="loop").attribute(x)
    parallel = CAAP(model, score=cosine_to_text).attribute(x)
    assert loop.shape == (2, 4, 4) and loop.abs().max() <= 2
    assert loop.std() > 1e-4  # a non-constant map
    assert (parallel - loop).abs().max() <= 1e-5


@pytest.mark.parametrize("options", [dict(fold_ln=True), dict(fold_ln=True, center_writing_weights=True,
                                                              fold_value_biases=True)])
def test_weight_processing_keeps_encode_image(options):
    """TransformerLens's weight processing options apply to open_clip towers too (CLIP's ln_pre stays affine)."""
    clip = tiny_clip(quick_gelu=True)
    model = HookedViT.from_open_clip(clip, **options)
    assert model.cfg.normalization_type == "LNPre"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = clip.encode_image(x)
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
