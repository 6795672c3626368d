"""LayerNorm with TransformerLens hooks (``hook_scale``, ``hook_normalized``)."""
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens.components.hooks_util import HookPoint, is_hooked


class LayerNorm(nn.Module):
    """``hook_scale`` is the per-token std ``[batch, pos, 1]``; ``hook_normalized`` the output after
    weight and bias. Uses the fused kernel unless ``hook_scale`` is hooked."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if is_hooked(self.hook_scale):
            x = x - x.mean(-1, keepdim=True)
            scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
            out = x / scale * self.w + self.b
        else:
            out = F.layer_norm(x, self.w.shape, self.w, self.b, self.eps)
        return self.hook_normalized(out)
