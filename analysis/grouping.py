"""Attention grouping per layer (paper Sec. 3.2, Fig. 6): do object patches attend to their own object?"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


def patch_membership(mask: Bool[Tensor, "H W"], patch_size: tuple[int, int], threshold: float = 0.5) -> Bool[Tensor, "n_patches"]:
    """A patch belongs to the object when at least ``threshold`` of its pixels are foreground."""
    fraction = F.avg_pool2d(mask[None, None].float(), kernel_size=patch_size, stride=patch_size)
    return (fraction >= threshold).flatten()


@torch.inference_mode()
def attention_grouping(model, image: Float[Tensor, "1 chan H W"], mask: Bool[Tensor, "H W"]) -> dict[str, Float[Tensor, "layer"]]:
    """Per layer, averaged over heads and object query patches ``i``: ``intra`` = mean attention to object
    patches ``j in O``, ``extra`` = mean attention to the other patches, and ``diff = intra - extra``."""
    cfg = model.cfg
    inside = patch_membership(mask, cfg.patch_size)
    if inside.all() or not inside.any():
        raise ValueError("the mask must cover some but not all patches")
    n_pre = cfg.n_prefix_tokens
    _, cache = model.run_with_cache(image, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    intra, extra = [], []
    for layer in range(cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, n_pre:, n_pre:]  # [head, query, key] patches
        rows = pattern[:, inside]  # object queries
        intra.append(rows[:, :, inside].mean())
        extra.append(rows[:, :, ~inside].mean())
    intra_t, extra_t = torch.stack(intra), torch.stack(extra)
    return {"intra": intra_t, "extra": extra_t, "diff": intra_t - extra_t}
