"""Multi-head self-attention with TransformerLens hooks and a fused fast path."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens.components.hooks_util import HookPoint, is_hooked
from vit_lens.components.mlp import output_scale


class Attention(nn.Module):
    """Keeps timm's fused ``qkv`` projection (one matmul, as fast as timm) and exposes TransformerLens
    per-head views ``W_Q/W_K/W_V`` ``[head, d_model, d_head]``, ``b_Q/b_K/b_V`` ``[head, d_head]``,
    ``W_O`` ``[head, d_head, d_model]`` and ``b_O`` ``[d_model]``, plus ``QK``/``OV`` FactoredMatrices.

    **LayerScale is folded into ``W_O`` and ``b_O``** (DeiT3, DINOv2): they map ``hook_z`` to what the
    branch adds to the residual stream, so ``sum_h z_h @ W_O[h] + b_O == hook_attn_out`` as in TL and
    OV circuits are right. The stored parameters stay timm's (``proj`` then the block's ``ls1``).
    ``W_Q/W_K/W_V`` read ``ln1.hook_normalized`` (LayerNorm weight and bias not folded in).

    Hooks: ``hook_q/k/v/z`` ``[batch, pos, head, d_head]``; ``hook_attn_scores``/``hook_pattern``
    ``[batch, head, query_pos, key_pos]``; ``hook_result`` ``[batch, pos, head, d_model]`` (each head's
    output incl. LayerScale) only with ``cfg.use_attn_result``. Attention runs through
    ``scaled_dot_product_attention`` unless scores or pattern are hooked (then the explicit softmax path).
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, qkv_bias: bool, layer_scale: nn.Module | None = None):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.scale = d_head**-0.5
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head, bias=qkv_bias)
        self.proj = nn.Linear(n_heads * d_head, d_model)
        self.force_explicit = False
        object.__setattr__(self, "layer_scale", layer_scale)  # the block's ls1, not a submodule
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.hook_result = HookPoint()

    # ------------------------------------------------------------------ TransformerLens weight views
    def _weight_part(self, i: int) -> Tensor:
        hd = self.n_heads * self.d_head
        return rearrange(self.qkv.weight[i * hd:(i + 1) * hd], "(h d) m -> h m d", h=self.n_heads)

    def _bias_part(self, i: int) -> Tensor:
        hd = self.n_heads * self.d_head
        if self.qkv.bias is None:
            return self.qkv.weight.new_zeros(self.n_heads, self.d_head)
        return rearrange(self.qkv.bias[i * hd:(i + 1) * hd], "(h d) -> h d", h=self.n_heads)

    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return self._weight_part(0)

    @property
    def W_K(self) -> Float[Tensor, "head d_model d_head"]:
        return self._weight_part(1)

    @property
    def W_V(self) -> Float[Tensor, "head d_model d_head"]:
        return self._weight_part(2)

    @property
    def b_Q(self) -> Float[Tensor, "head d_head"]:
        return self._bias_part(0)

    @property
    def b_K(self) -> Float[Tensor, "head d_head"]:
        return self._bias_part(1)

    @property
    def b_V(self) -> Float[Tensor, "head d_head"]:
        return self._bias_part(2)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        w = rearrange(self.proj.weight, "m (h d) -> h d m", h=self.n_heads)
        gamma = output_scale(self.layer_scale)
        return w if gamma is None else w * gamma

    @property
    def b_O(self) -> Float[Tensor, "d_model"]:
        gamma = output_scale(self.layer_scale)
        return self.proj.bias if gamma is None else self.proj.bias * gamma

    @property
    def QK(self):
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_Q, rearrange(self.W_K, "h m d -> h d m"))

    @property
    def OV(self):
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    # ------------------------------------------------------------------ forward
    def compute_qkv(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """Un-hooked q, k, v, each ``[batch, pos, head, d_head]`` (views into one matmul)."""
        qkv = rearrange(self.qkv(x), "b p (three h d) -> three b p h d", three=3, h=self.n_heads)
        return qkv[0], qkv[1], qkv[2]

    def compute_qkv_split(self, q_in: Float[Tensor, "batch pos head d_model"], k_in: Float[Tensor, "batch pos head d_model"],
                          v_in: Float[Tensor, "batch pos head d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v from a separate (normalized) input per head (TL's ``use_split_qkv_input``)."""
        return tuple(einsum(x, w, "b p h m, h m d -> b p h d") + bias
                     for x, w, bias in ((q_in, self.W_Q, self.b_Q), (k_in, self.W_K, self.b_K), (v_in, self.W_V, self.b_V)))

    def project(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """Output projection *without* LayerScale (the block applies ``ls1``)."""
        return self.proj(rearrange(z, "b p h d -> b p (h d)"))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Float[Tensor, "batch pos head d_head"]:
        """Hooked attention from un-hooked ``q, k, v`` ``[batch, pos, head, d_head]`` to ``hook_z``."""
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        if self.force_explicit or is_hooked(self.hook_attn_scores, self.hook_pattern):
            scores = self.hook_attn_scores((q * self.scale) @ k.transpose(-2, -1))
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = pattern @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v)
        return self.hook_z(z.transpose(1, 2))

    def output_with_result(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """Branch output *including LayerScale* through per-head results (``hook_result``), as TL does
        with ``use_attn_result``: costs a ``[batch, pos, head, d_model]`` tensor."""
        result = self.hook_result(einsum(z, self.W_O, "b p h d, h d m -> b p h m"))
        return result.sum(-2) + self.b_O

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Output before LayerScale (the block applies ``ls1``)."""
        return self.project(self.attend(*self.compute_qkv(x)))
