"""Official DINOv2 linear classifiers (CLS ⊕ mean patch tokens; 1- and 4-layer) on a HookedViT, loaded from the
official checkpoint format, vs a reference built from timm's own ``get_intermediate_layers`` (the DINO interface
the official ``_LinearClassifierWrapper`` calls)."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from caap import CAAP
from vit_lens.zoo import load_paper_model

TINY = dict(img_size=56, depth=4, embed_dim=48, num_heads=3)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "reg4"])
def backbone(request, tmp_path_factory):
    """A perturbed random timm DINOv2 backbone saved as a local checkpoint."""
    name = "vit_small_patch14_reg4_dinov2" if request.param else "vit_small_patch14_dinov2"
    torch.manual_seed(0)
    timm_model = timm.create_model(name, pretrained=False, num_classes=0, **TINY).eval()
    with torch.no_grad():
        for p in timm_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("dinov2") / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(path))
    return name, timm_model, path


def official_head_file(tmp_path, d_model, layers, n_classes=1000):
    """``torch.save({'weight', 'bias'})`` like ``dinov2_vits14_linear{4|}_head.pth``."""
    g = torch.Generator().manual_seed(layers)
    state = {"weight": torch.randn(n_classes, (1 + layers) * d_model, generator=g) * 0.1,
             "bias": torch.randn(n_classes, generator=g)}
    path = tmp_path / f"head_linear{layers}.pth"
    torch.save(state, path)
    return path, state


def reference_logits(timm_model, images, state, layers):
    """classifiers.py: layers=1 -> [cls, mean(patch)] of the normed last block; layers=4 -> the normed CLS
    of the last four blocks then the mean of the last block's normed patch tokens (registers excluded)."""
    with torch.no_grad():
        outs = timm_model.get_intermediate_layers(images, n=layers, return_prefix_tokens=True, norm=True)
    feats = [prefix[:, 0] for _, prefix in outs] + [outs[-1][0].mean(dim=1)]
    return torch.cat(feats, dim=1) @ state["weight"].T + state["bias"]


@pytest.mark.parametrize("layers", [1, 4])
def test_official_linear_head_logits(backbone, tmp_path, layers):
    name, timm_model, path = backbone
    head_path, state = official_head_file(tmp_path, 48, layers)
    model = load_paper_model("paper:dinov2-s14", timm_name=name, checkpoint_path=path, head_path=head_path,
                             head_layers=layers, **TINY)
    assert model.cfg.pooling == "cls_mean" and model.cfg.num_classes == 1000
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    expected = reference_logits(timm_model, images, state, layers)
    logits, cache = model.run_with_cache(images)
    assert (logits - expected).abs().max() <= 1e-4
    assert cache["hook_pre_logits"].shape == (2, (1 + layers) * 48)
    # resuming from a later block reproduces the logits (the intermediate CLS tokens are still collected)
    with torch.no_grad():
        resumed = model.forward_from_resid(cache["blocks.0.hook_resid_pre"], 0)
    assert torch.allclose(resumed, logits, atol=1e-5)


def test_head_file_validation(backbone, tmp_path):
    name, _, path = backbone
    head_path, _ = official_head_file(tmp_path, 48, 1)
    with pytest.raises(ValueError, match="head_layers=4"):
        load_paper_model("paper:dinov2-s14", timm_name=name, checkpoint_path=path, head_path=head_path,
                         head_layers=4, **TINY)
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(3, 96)}, str(bad))
    with pytest.raises(ValueError, match="exactly 'weight' and 'bias'"):
        load_paper_model("paper:dinov2-s14", timm_name=name, checkpoint_path=path, head_path=bad, head_layers=1, **TINY)


def test_caap_loop_engine_and_parallel_refusal(backbone, tmp_path):
    name, _, path = backbone
    head_path, _ = official_head_file(tmp_path, 48, 4)
    model = load_paper_model("paper:dinov2-s14", timm_name=name, checkpoint_path=path, head_path=head_path,
                             head_layers=4, **TINY)
    images = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    caap = CAAP(model, engine="loop", selection="none", layers=(0, 2))
    maps = caap.attribute(images, target=5)
    # patch (1, 2) by hand: every block's resid_pre is the blank's except the prefix tokens (recomputed) and
    # the patch's token (source for blocks 0..2, recomputed after)
    from caap.blanks import blank_image

    blank = blank_image(model, "white")
    _, src = model.run_with_cache(images)
    _, blk = model.run_with_cache(blank)
    pos = model.layout.token_position(model.layout.patch_index(1, 2))
    n_pre = model.cfg.n_prefix_tokens

    def edit(resid, hook, b):
        out = resid.clone()
        out[:, n_pre:] = blk[f"blocks.{b}.hook_resid_pre"][:, n_pre:]
        # the patch: the source's value up to block 2, then its own recomputed state
        out[:, pos] = src[f"blocks.{b}.hook_resid_pre"][:, pos] if b <= 2 else resid[:, pos]
        return out

    hooks = [(f"blocks.{b}.hook_resid_pre", lambda r, hook, b=b: edit(r, hook, b)) for b in range(model.cfg.n_layers)]
    with torch.no_grad():
        expected = model.run_with_hooks(blank, fwd_hooks=hooks)[0, 5]
    assert torch.allclose(maps[0, 1, 2], expected, atol=1e-4)
    for engine in ("parallel", "efficient"):
        with pytest.raises(ValueError, match="engine='loop'"):
            CAAP(model, engine=engine).attribute(images, target=5)
        with pytest.raises(ValueError, match=r"parallel engines \('parallel', 'efficient'\) read the CLS token only"):
            CAAP(model, engine=engine).attribute(images, target=5)
    with pytest.raises(ValueError, match=r"W_U/b_U .*pooling='cls_mean'.* reads 240 features"):
        model.W_U  # noqa: B018  a one-vector unembedding would be silently wrong for this head
