"""Pre-norm transformer block with TransformerLens residual-stream hooks and optional LayerScale."""
from __future__ import annotations

import torch
from einops import repeat
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens.components.attention import Attention
from vit_lens.components.hooks_util import HookPoint
from vit_lens.components.layer_norm import make_norm
from vit_lens.components.mlp import MLP
from vit_lens.components.swiglu import GatedMLP


class LayerScale(nn.Module):
    """Per-channel scaling of a branch output (DeiT3, DINOv2); identity when disabled."""

    def __init__(self, d_model: int, enabled: bool):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d_model)) if enabled else None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.gamma is None else x * self.gamma


class TransformerBlock(nn.Module):
    """``hook_attn_out`` / ``hook_mlp_out`` are what the branch adds to the residual stream (after
    LayerScale).

    TransformerLens's optional hooks, off by default (``cfg`` flags, read at every forward):
    ``hook_attn_in`` (``use_attn_in``) and ``hook_q_input/k_input/v_input`` (``use_split_qkv_input``),
    ``[batch, pos, head, d_model]`` copies of ``hook_resid_pre`` per head, each normalized by ``ln1``
    separately (``ln1.hook_*`` then carry a head axis); ``hook_mlp_in`` (``use_hook_mlp_in``)
    ``[batch, pos, d_model]``, the input of ``ln2``; ``attn.hook_result`` (``use_attn_result``).
    """

    hook_out_is_single_residual_stream = True  # what TL's logit lens checks before reading hook_resid_post

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.ln1 = make_norm(cfg)
        self.ls1 = LayerScale(cfg.d_model, cfg.layer_scale)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.d_head, cfg.qkv_bias, layer_scale=self.ls1)
        self.ln2 = make_norm(cfg)
        self.ls2 = LayerScale(cfg.d_model, cfg.layer_scale)
        mlp_cls = GatedMLP if cfg.mlp_type == "swiglu" else MLP
        self.mlp = mlp_cls(cfg.d_model, cfg.d_mlp, cfg.act_fn, layer_scale=self.ls2)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_in = HookPoint()
        self.hook_q_input, self.hook_k_input, self.hook_v_input = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_in = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def _qkv(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        if not (cfg.use_attn_in or cfg.use_split_qkv_input):
            return self.attn.compute_qkv(self.ln1(resid_pre))
        attn_in = repeat(resid_pre, "b p m -> b p h m", h=cfg.n_heads)
        if cfg.use_attn_in:
            attn_in = self.hook_attn_in(attn_in.clone())
        if not cfg.use_split_qkv_input:
            normalized = self.ln1(attn_in)
            return self.attn.compute_qkv_split(normalized, normalized, normalized)
        inputs = (self.hook_q_input(attn_in.clone()), self.hook_k_input(attn_in.clone()),
                  self.hook_v_input(attn_in.clone()))
        return self.attn.compute_qkv_split(*(self.ln1(t) for t in inputs))

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        z = self.attn.attend(*self._qkv(resid_pre))
        if cfg.use_attn_result:
            attn_out = self.attn.output_with_result(z)  # includes LayerScale through W_O, b_O
        else:
            attn_out = self.ls1(self.attn.project(z))
        attn_out = self.hook_attn_out(attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.ls2(self.mlp(self.ln2(mlp_in))))
        return self.hook_resid_post(resid_mid + mlp_out)
