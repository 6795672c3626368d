"""A tiny HookedViT whose output depends on the pixels of ONE patch only, for "the informative patch
ranks first" tests: permanent hooks replace the pooled features fed to the head by that patch's
embedding without its bias, so the logits are linear in the patch's pixels and zero elsewhere."""
import timm
import torch

from tests.conftest import make_hooked, random_images
from vit_lens import HookedViT


def _vit(img_size: int) -> HookedViT:
    torch.manual_seed(3)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=img_size, num_classes=7, depth=2,
                              embed_dim=48, num_heads=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return HookedViT.from_timm(model)


def one_patch_setup(family: str = "vit", row: int = 1, col: int = 2, gain: float = 10.0, img_size: int | None = None):
    """``(model, patch, image, target)``; the target's probability rises monotonically as the patch
    fades in from the mean colour (it is the class whose logit the patch raises most)."""
    model = make_hooked(family, seed=3) if img_size is None else _vit(img_size)
    patch = model.layout.patch_index(row, col)
    pos, stored = model.layout.token_position(patch), {}

    def keep(embed, hook):
        stored["patch"] = embed[:, pos] - model.patch_embed.proj.bias
        return embed

    model.add_hook("hook_embed", keep, is_permanent=True)
    model.add_hook("hook_pre_logits", lambda act, hook: gain * stored["patch"], is_permanent=True)
    image = random_images(model, 1, seed=0)
    with torch.no_grad():
        target = int((model(image) - model(torch.zeros_like(image)))[0].argmax())
    return model, patch, image, target
