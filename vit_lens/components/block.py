"""Pre-norm transformer block with TransformerLens residual-stream hooks and optional LayerScale."""
import torch
from jaxtyping import Float
from torch import Tensor, nn
from vit_lens.components.hooks_util import HookPoint

from vit_lens.components.attention import Attention
from vit_lens.components.layer_norm import LayerNorm
from vit_lens.components.mlp import MLP


class LayerScale(nn.Module):
    """Per-channel scaling of a branch output (DeiT3, DINOv2); identity when disabled."""

    def __init__(self, d_model: int, enabled: bool):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d_model)) if enabled else None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.gamma is None else x * self.gamma


class TransformerBlock(nn.Module):
    """``hook_attn_out`` / ``hook_mlp_out`` are what the branch adds to the residual stream (after
    LayerScale)."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.d_head, cfg.qkv_bias)
        self.ls1 = LayerScale(cfg.d_model, cfg.layer_scale)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.act_fn)
        self.ls2 = LayerScale(cfg.d_model, cfg.layer_scale)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def mlp_branch(self, resid_mid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """The MLP half of the block without hooks (used by the patching engines)."""
        return self.ls2(self.mlp(self.ln2(resid_mid)))

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.ls1(self.attn(self.ln1(resid_pre))))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.ls2(self.mlp(self.ln2(resid_mid))))
        return self.hook_resid_post(resid_mid + mlp_out)
