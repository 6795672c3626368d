"""Tiny random timm ViTs of every supported family, shared by all test packages."""
import pytest
import timm
import torch

from vit_lens import HookedViT

# name -> (timm name, create_model kwargs); small enough to run in milliseconds.
TINY = dict(depth=3, embed_dim=48, num_heads=3)
FAMILIES = {
    "vit": ("vit_base_patch16_224", dict(img_size=64, num_classes=7, **TINY)),
    "vit_avg": ("vit_base_patch16_224", dict(img_size=64, num_classes=7, global_pool="avg", **TINY)),
    "deit3": ("deit3_small_patch16_224", dict(img_size=64, num_classes=7, **TINY)),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", dict(img_size=64, num_classes=7, **TINY)),
    "clip_headless": ("vit_base_patch16_clip_224", dict(img_size=64, num_classes=0, **TINY)),
    "dinov2": ("vit_small_patch14_dinov2", dict(img_size=56, num_classes=7, **TINY)),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", dict(img_size=56, num_classes=7, **TINY)),
}


def make_timm(family: str, seed: int = 0) -> torch.nn.Module:
    """A random timm model whose every parameter is perturbed (timm zero-inits heads and biases, which
    would hide porting mistakes)."""
    name, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def make_hooked(family: str, seed: int = 0) -> HookedViT:
    return HookedViT.from_timm(make_timm(family, seed))


def random_images(model: HookedViT, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.cfg.in_chans, *model.cfg.image_size, generator=g)


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param
