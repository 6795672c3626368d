"""Multi-head self-attention with TransformerLens hooks and a fused fast path."""
import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens.components.hooks_util import HookPoint, is_hooked


class Attention(nn.Module):
    """Keeps timm's fused ``qkv`` projection (one matmul, as fast as timm) and exposes TransformerLens
    per-head views ``W_Q/W_K/W_V`` ``[head, d_model, d_head]`` and ``W_O`` ``[head, d_head, d_model]``.

    Hooks: ``hook_q/k/v/z`` ``[batch, pos, head, d_head]``; ``hook_attn_scores``/``hook_pattern``
    ``[batch, head, query_pos, key_pos]``. Attention runs through ``scaled_dot_product_attention``
    unless scores or pattern are hooked (then the explicit softmax path is used).
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, qkv_bias: bool):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.scale = d_head**-0.5
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head, bias=qkv_bias)
        self.proj = nn.Linear(n_heads * d_head, d_model)
        self.force_explicit = False
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def _weight_part(self, i: int) -> Tensor:
        hd = self.n_heads * self.d_head
        return rearrange(self.qkv.weight[i * hd:(i + 1) * hd], "(h d) m -> h m d", h=self.n_heads)

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
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return rearrange(self.proj.weight, "m (h d) -> h d m", h=self.n_heads)

    def compute_qkv(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """Un-hooked q, k, v, each ``[batch, pos, head, d_head]`` (views into one matmul)."""
        qkv = rearrange(self.qkv(x), "b p (three h d) -> three b p h d", three=3, h=self.n_heads)
        return qkv[0], qkv[1], qkv[2]

    def project(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        return self.proj(rearrange(z, "b p h d -> b p (h d)"))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        q, k, v = self.compute_qkv(x)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        if self.force_explicit or is_hooked(self.hook_attn_scores, self.hook_pattern):
            scores = self.hook_attn_scores((q * self.scale) @ k.transpose(-2, -1))
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = pattern @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v)
        z = self.hook_z(z.transpose(1, 2))
        return self.project(z)
