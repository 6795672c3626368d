"""Gated (SwiGLU) MLP with TransformerLens ``GatedMLP`` hook names, and its port from timm.

timm builds DINOv2-G/14 with ``SwiGLUPacked`` (= ``GluMlp(act_layer=SiLU, gate_last=False)``: one ``fc1`` of
width ``2 * d_mlp`` whose *first* half is the gate) and ``mlp_ratio = 2.66667 * 2`` (``fc1`` 1536 -> 8192,
so ``d_mlp = 4096``); ``SwiGLU`` keeps the two halves as separate ``fc1_g`` / ``fc1_x``. Both compute

    out = fc2( act(x W_gate + b_gate) * (x W_in + b_in) )

Hooks (``blocks.{l}.mlp.*``, all ``[batch, pos, d_mlp]``, as TransformerLens's ``GatedMLP``):
``hook_pre`` the gate pre-activation ``x W_gate + b_gate``, ``hook_pre_linear`` the linear (value) branch
``x W_in + b_in``, ``hook_post`` their product ``act(hook_pre) * hook_pre_linear`` (the input of ``fc2``).
Weight views: ``W_gate``, ``W_in`` ``[d_model, d_mlp]``, ``b_gate``, ``b_in``, and ``W_out`` / ``b_out`` with the
block's LayerScale folded in (as :class:`vit_lens.components.mlp.MLP`). TL's ``GatedMLP`` has no gate bias;
timm's has one, kept as ``b_gate``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens.components.hooks_util import HookPoint
from vit_lens.components.mlp import ACTIVATIONS, ScaledOutput

GATED_ACTIVATIONS = {"silu": F.silu, **ACTIVATIONS}


class GatedMLP(ScaledOutput, nn.Module):
    def __init__(self, d_model: int, d_mlp: int, act_fn: str = "silu", layer_scale: nn.Module | None = None):
        super().__init__()
        if act_fn not in GATED_ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(GATED_ACTIVATIONS)} for a gated MLP; got {act_fn!r}")
        self.fc1_g = nn.Linear(d_model, d_mlp)  # gate
        self.fc1_x = nn.Linear(d_model, d_mlp)  # linear (value) branch
        self.fc2 = nn.Linear(d_mlp, d_model)
        self.act = GATED_ACTIVATIONS[act_fn]
        object.__setattr__(self, "layer_scale", layer_scale)  # the block's ls2, not a submodule
        self.hook_pre = HookPoint()  # gate pre-activation [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # linear branch [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # act(gate) * linear [batch, pos, d_mlp]

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"]:
        return rearrange(self.fc1_g.weight, "m d -> d m")

    @property
    def b_gate(self) -> Float[Tensor, "d_mlp"]:
        return self.fc1_g.bias

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return rearrange(self.fc1_x.weight, "m d -> d m")

    @property
    def b_in(self) -> Float[Tensor, "d_mlp"]:
        return self.fc1_x.bias

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        gate = self.hook_pre(self.fc1_g(x))
        linear = self.hook_pre_linear(self.fc1_x(x))
        return self.fc2(self.hook_post(self.act(gate) * linear))


# ---------------------------------------------------------------------------------------- timm port
def is_timm_gated_mlp(mlp: nn.Module) -> bool:
    """timm's ``GluMlp`` (incl. ``SwiGLUPacked``) or ``SwiGLU``."""
    from timm.layers.mlp import GluMlp, SwiGLU

    return type(mlp) in (GluMlp, SwiGLU)


def check_timm_gated_mlp(mlp: nn.Module, where: str, activation_name) -> tuple[int, str]:
    """``(d_mlp, act_fn)`` of a timm gated MLP, or UnsupportedModelError naming what differs.
    ``activation_name`` maps a timm activation module to a HookedViT name (``vit_lens.loading``)."""
    from timm.layers.mlp import GluMlp

    from vit_lens.loading import UnsupportedModelError

    if not isinstance(mlp.norm, nn.Identity):
        raise UnsupportedModelError(f"unsupported scale_mlp_norm in the gated MLP at {where}")
    if isinstance(mlp, GluMlp):
        if not isinstance(mlp.fc1, nn.Linear):
            raise UnsupportedModelError(f"unsupported convolutional GluMlp at {where}")
        d_mlp = mlp.fc1.out_features // 2
    else:
        d_mlp = mlp.fc1_g.out_features
    act = "silu" if isinstance(mlp.act, nn.SiLU) else activation_name(mlp.act)
    if act not in GATED_ACTIVATIONS:
        raise UnsupportedModelError(f"unsupported gated-MLP activation {type(mlp.act).__name__} at {where}")
    return d_mlp, act


def _bias(linear: nn.Linear, size: int) -> Tensor:
    return linear.bias if linear.bias is not None else torch.zeros(size, dtype=linear.weight.dtype)


def gated_mlp_state_from_timm(mlp: nn.Module, prefix: str) -> dict[str, Tensor]:
    """timm ``GluMlp`` / ``SwiGLU`` parameters under GatedMLP names (``{prefix}.fc1_g.weight``, ...)."""
    from timm.layers.mlp import GluMlp

    if isinstance(mlp, GluMlp):
        w, b = mlp.fc1.weight, _bias(mlp.fc1, mlp.fc1.out_features)
        (w1, w2), (b1, b2) = w.chunk(2, dim=0), b.chunk(2, dim=0)
        # gate_last=True: x1 * act(x2) (gate = second half); SwiGLUPacked (gate_last=False): act(x1) * x2
        (wg, bg), (wx, bx) = ((w2, b2), (w1, b1)) if mlp.gate_last else ((w1, b1), (w2, b2))
    else:
        wg, bg = mlp.fc1_g.weight, _bias(mlp.fc1_g, mlp.fc1_g.out_features)
        wx, bx = mlp.fc1_x.weight, _bias(mlp.fc1_x, mlp.fc1_x.out_features)
    return {f"{prefix}.fc1_g.weight": wg, f"{prefix}.fc1_g.bias": bg, f"{prefix}.fc1_x.weight": wx,
            f"{prefix}.fc1_x.bias": bx, f"{prefix}.fc2.weight": mlp.fc2.weight,
            f"{prefix}.fc2.bias": _bias(mlp.fc2, mlp.fc2.out_features)}
