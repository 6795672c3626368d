"""Helpers shared by the suite's perturbation metrics: pixel ranks of a map and the model's black image."""
from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analysis.metrics.curves import check_finite, to_pixels


def pixel_ranks(attribution: Float[Tensor, "1 h w"], size: tuple[int, int], *, descending: bool = True,
                device=None) -> Int[Tensor, "H W"]:
    """Rank of every pixel of the bilinearly upsampled map (0 = first removed): most relevant first when
    ``descending``, least relevant first otherwise; ties keep raster order (stable sort)."""
    check_finite(attribution)
    a = to_pixels(attribution.float(), size)[0].flatten().to(device)
    order = (a if descending else -a).argsort(descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank.view(*size)


def black(model, like: Float[Tensor, "chan H W"]) -> Float[Tensor, "chan H W"]:
    """Pixel value 0 (black) after the model's normalization, ``(0 - mean) / std`` per channel."""
    mean = torch.tensor(model.cfg.mean, dtype=like.dtype, device=like.device).view(-1, 1, 1)
    std = torch.tensor(model.cfg.std, dtype=like.dtype, device=like.device).view(-1, 1, 1)
    return (-mean / std).expand_as(like).clone()
