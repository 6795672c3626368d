"""Logit and residual-stream exactness of the port, per family, and checkpoint loading."""
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import FAMILIES, make_hooked, make_timm, random_images
from vit_lens import HookedViT, UnsupportedModelError

LOGIT_TOL = 1e-4


def test_logits_match_timm(family):
    timm_model = make_timm(family)
    model = HookedViT.from_timm(timm_model)
    x = random_images(model)
    with torch.no_grad():
        expected, got = timm_model(x), model(x)
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1  # a non-degenerate output
    assert (got - expected).abs().max().item() <= LOGIT_TOL


def test_block_outputs_match_timm(family):
    timm_model = make_timm(family)
    model = HookedViT.from_timm(timm_model)
    x = random_images(model)
    timm_outs = []
    handles = [b.register_forward_hook(lambda m, i, o: timm_outs.append(o)) for b in timm_model.blocks]
    with torch.no_grad():
        timm_model(x)
        _, cache = model.run_with_cache(x)
    for h in handles:
        h.remove()
    for layer, expected in enumerate(timm_outs):
        assert (cache[f"blocks.{layer}.hook_resid_post"] - expected).abs().max().item() <= 1e-5


def test_config_reads_architecture():
    cfg = make_hooked("dinov2_reg").cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (3, 48, 3, 16, 192)
    assert cfg.patch_size == (14, 14) and cfg.grid_size == (4, 4) and cfg.image_size == (56, 56)
    assert cfg.n_prefix_tokens == 5 and cfg.n_register_tokens == 4 and not cfg.pos_embed_on_prefix
    assert cfg.layer_scale and cfg.pooling == "token" and cfg.num_classes == 7
    clip = make_hooked("clip_quickgelu").cfg
    assert clip.pre_norm and clip.act_fn == "quick_gelu" and clip.eps == 1e-5
    assert make_hooked("vit_avg").cfg.pooling == "avg" and make_hooked("vit_avg").cfg.fc_norm


def test_transform_matches_timm(tmp_path):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    timm_model = timm.create_model("vit_base_patch16_clip_224.openai", pretrained=False, depth=1)
    model = HookedViT.from_timm(timm_model)
    assert model.cfg.mean == tuple(timm_model.pretrained_cfg["mean"])
    image = Image.fromarray((torch.rand(300, 260, 3) * 255).byte().numpy())
    expected = create_transform(**resolve_data_config({}, model=timm_model))(image)
    assert torch.equal(model.transform(image), expected)
    assert model.transform(image).shape == (3, 224, 224)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_from_name_with_local_checkpoint(tmp_path, suffix):
    name, kwargs = FAMILIES["deit3"]
    source = make_timm("deit3")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    model = HookedViT.from_timm(name, checkpoint_path=path, **kwargs)
    x = random_images(model)
    with torch.no_grad():
        assert (model(x) - source(x)).abs().max().item() <= LOGIT_TOL


def test_from_checkpoint_reads_sidecar(tmp_path):
    name, kwargs = FAMILIES["dinov2"]
    source = make_timm("dinov2")
    save_file(source.state_dict(), str(tmp_path / "probe.safetensors"))
    sidecar = {"timm_model_name": name, "create_model_kwargs": kwargs, "class_names": list("abcdefg"),
               "data_config": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
                               "crop_mode": "squash", "interpolation": "bilinear"}}
    (tmp_path / "probe.json").write_text(json.dumps(sidecar))
    model = HookedViT.from_checkpoint(tmp_path / "probe.safetensors")
    assert model.cfg.class_names == list("abcdefg") and model.cfg.mean == (0.1, 0.2, 0.3)
    assert model.cfg.crop_mode == "squash"
    x = random_images(model)
    with torch.no_grad():
        assert (model(x) - source(x)).abs().max().item() <= LOGIT_TOL


def test_checkpoint_key_mismatch_is_reported(tmp_path):
    name, kwargs = FAMILIES["vit"]
    state = make_timm("vit").state_dict()
    state.pop("blocks.0.attn.qkv.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['blocks.0.attn.qkv.weight'\].*unexpected keys \['extra.weight'\]"):
        HookedViT.from_timm(name, checkpoint_path=tmp_path / "bad.safetensors", **kwargs)
    with pytest.raises(ValueError, match="must end in"):
        (tmp_path / "w.npz").write_bytes(b"")
        HookedViT.from_timm(name, checkpoint_path=tmp_path / "w.npz", **kwargs)


def test_pth_is_loaded_weights_only(tmp_path):
    """A pickle that executes code must be refused (weights_only=True)."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    name, kwargs = FAMILIES["vit"]
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        HookedViT.from_timm(name, checkpoint_path=path, **kwargs)


@pytest.mark.parametrize("kwargs,feature", [
    (dict(global_pool="map"), "map"),
    (dict(qk_norm=True), "qk_norm"),
    (dict(global_pool="max"), "global_pool='max'"),
    (dict(scale_mlp_norm=True), "MLP"),  # SwiGLU MLPs are supported (tests/vit_lens/test_swiglu.py)
])
def test_unsupported_features_are_refused(kwargs, feature):
    tiny = dict(depth=1, embed_dim=32, num_heads=2, img_size=32)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, **tiny, **kwargs)
    with pytest.raises(UnsupportedModelError, match=feature):
        HookedViT.from_timm(model)


def test_unsupported_model_classes_are_refused():
    eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1, img_size=28)
    with pytest.raises(UnsupportedModelError, match="Eva"):
        HookedViT.from_timm(eva)
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=1, img_size=32)
    with pytest.raises(UnsupportedModelError, match="VisionTransformerDistilled"):
        HookedViT.from_timm(distilled)


def test_pretrained_download_failure_suggests_checkpoint(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("hub unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="checkpoint_path"):
        HookedViT.from_timm("vit_base_patch16_224", pretrained=True)


def test_dtype_and_device_arguments():
    timm_model = make_timm("dinov2_reg")
    model = HookedViT.from_timm(timm_model, dtype=torch.float64, device="cpu")
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float64
    x = random_images(model).double()
    with torch.no_grad():
        assert (model(x) - timm_model.double()(x)).abs().max().item() <= 1e-10
