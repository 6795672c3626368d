"""Two-layer MLP with ``hook_pre`` (before the activation) and ``hook_post`` (after it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens.components.hooks_util import HookPoint


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
}


def output_scale(layer_scale) -> Tensor | None:
    """The LayerScale ``gamma`` a branch output is multiplied by, or None."""
    return None if layer_scale is None else layer_scale.gamma


class ScaledOutput:
    """``W_out`` ``[d_mlp, d_model]`` / ``b_out`` of ``self.fc2`` with the block's LayerScale folded in, shared
    by the plain and the gated MLP."""

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        w = rearrange(self.fc2.weight, "d m -> m d")
        gamma = output_scale(self.layer_scale)
        return w if gamma is None else w * gamma

    @property
    def b_out(self) -> Float[Tensor, "d_model"]:
        gamma = output_scale(self.layer_scale)
        return self.fc2.bias if gamma is None else self.fc2.bias * gamma


class MLP(ScaledOutput, nn.Module):
    """TransformerLens weight views: ``W_in`` ``[d_model, d_mlp]``, ``b_in``, and ``W_out``
    ``[d_mlp, d_model]`` / ``b_out`` *including the block's LayerScale* (DeiT3, DINOv2), so that
    ``hook_post @ W_out + b_out == hook_mlp_out`` as in TL. The stored parameters stay timm's
    (``fc2`` then ``ls2``); LayerScale is folded into the views only."""

    def __init__(self, d_model: int, d_mlp: int, act_fn: str, layer_scale: nn.Module | None = None):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_mlp)
        self.fc2 = nn.Linear(d_mlp, d_model)
        self.act = ACTIVATIONS[act_fn]
        object.__setattr__(self, "layer_scale", layer_scale)  # the block's ls2, not a submodule
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return rearrange(self.fc1.weight, "m d -> d m")

    @property
    def b_in(self) -> Float[Tensor, "d_mlp"]:
        return self.fc1.bias

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.fc2(self.hook_post(self.act(self.hook_pre(self.fc1(x)))))
