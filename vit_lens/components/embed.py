"""Patch embedding and learned absolute position embedding."""
from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens ``[batch, n_patches, d_model]`` in row-major order."""

    def __init__(self, in_chans: int, d_model: int, patch_size: tuple[int, int]):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Float[Tensor, "batch chan height width"]) -> Float[Tensor, "batch n_patches d_model"]:
        return rearrange(self.proj(images), "b d gh gw -> b (gh gw) d")


class PosEmbed(nn.Module):
    """Learned position embedding; ``W_pos`` covers the prefix tokens only if ``on_prefix``."""

    def __init__(self, n_positions: int, d_model: int, on_prefix: bool, n_prefix_tokens: int = 0):
        super().__init__()
        self.on_prefix = on_prefix
        self.n_prefix_tokens = n_prefix_tokens
        self.W_pos = nn.Parameter(torch.zeros(n_positions, d_model))

    def forward(self) -> Float[Tensor, "pos d_model"]:
        return self.W_pos

    def full(self) -> Float[Tensor, "n_tokens d_model"]:
        """The position embedding at every residual position: zeros on the prefix tokens when they
        get none (timm's ``no_embed_class``: DeiT3, DINOv2 with registers)."""
        if self.on_prefix or self.n_prefix_tokens == 0:
            return self.W_pos
        return torch.cat([self.W_pos.new_zeros(self.n_prefix_tokens, self.W_pos.shape[1]), self.W_pos])
