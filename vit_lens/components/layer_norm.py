"""LayerNorm with TransformerLens hooks (``hook_scale``, ``hook_normalized``)."""
from __future__ import annotations

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

    def normalize_unhooked(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The same LayerNorm without firing its hooks (the DINOv2 four-layer head's earlier CLS tokens)."""
        return F.layer_norm(x, self.w.shape, self.w, self.b, self.eps)

    def forward_split(self, embed: Float[Tensor, "batch pos d_model"], pos: Float[Tensor, "batch pos d_model"],
                      hook_embed: HookPoint, hook_pos: HookPoint) -> Float[Tensor, "batch pos d_model"]:
        """``LN(embed + pos)`` written as the sum of two shares that ``hook_embed`` / ``hook_pos`` see:
        ``(embed - mean(embed)) / s * w`` and ``(pos - mean(pos)) / s * w + b`` with ``s`` the scale of
        the sum (``hook_scale``). This is TL's ``apply_ln_to_stack`` split of a LayerNorm input, so the
        two hooks add up to the normalized stream (CLIP's ``ln_pre``). Fused kernel when nothing
        observes the shares."""
        if not is_hooked(self.hook_scale, hook_embed, hook_pos):
            return self.forward(embed + pos)
        x = embed + pos
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        embed_share = hook_embed((embed - embed.mean(-1, keepdim=True)) / scale * self.w)
        pos_share = hook_pos((pos - pos.mean(-1, keepdim=True)) / scale * self.w + self.b)
        return self.hook_normalized(embed_share + pos_share)


class LayerNormPre(LayerNorm):
    """TransformerLens's ``LNPre``: centre and divide by the scale, no affine. What ``ln1``/``ln2``/``ln_final``/
    ``fc_norm`` become under ``fold_ln`` (:mod:`vit_lens.processing`), their weight and bias folded into the
    layers that read them. ``hook_normalized`` is then ``(x - mean) / hook_scale``; ``w``/``b`` are ones and
    zeros (non-persistent buffers, so code reading them stays exact and the state dict has no norm keys)."""

    def __init__(self, d_model: int, eps: float):
        nn.Module.__init__(self)
        self.eps = eps
        self.register_buffer("w", torch.ones(d_model), persistent=False)
        self.register_buffer("b", torch.zeros(d_model), persistent=False)
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if is_hooked(self.hook_scale):
            x = x - x.mean(-1, keepdim=True)
            return self.hook_normalized(x / self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()))
        return self.hook_normalized(F.layer_norm(x, self.w.shape, None, None, self.eps))

    def normalize_unhooked(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return F.layer_norm(x, self.w.shape, None, None, self.eps)


def make_norm(cfg, d_model: int | None = None) -> LayerNorm:
    """The block/final norm ``cfg.normalization_type`` asks for: affine ``LayerNorm`` ("LN") or ``LayerNormPre``."""
    cls = LayerNormPre if cfg.normalization_type == "LNPre" else LayerNorm
    return cls(cfg.d_model if d_model is None else d_model, cfg.eps)


class PooledFinalNorm(nn.Module):
    """TransformerLens's ``ln_final`` for a model whose final norm is ``fc_norm`` on the pooled features.

    Not used by the forward pass (which pools, then applies ``fc_norm``). It normalizes every position
    of a ``[batch, pos, d_model]`` stream with the statistics of the pooled vector: centred per position,
    divided by the pooled vector's scale, then ``fc_norm``'s weight and bias. Pooling its output gives
    exactly ``fc_norm(pool(x))`` (centring is linear), so per-position attributions average (or, for CLS
    pooling, select) to the model's logits. Holds no parameters of its own: ``fc_norm`` and ``pool`` are
    references to the model's.
    """

    def __init__(self, fc_norm: LayerNorm, pool) -> None:
        super().__init__()
        object.__setattr__(self, "fc_norm", fc_norm)  # not a submodule: no duplicate state-dict keys
        object.__setattr__(self, "pool", pool)

    def pooled_scale(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch 1 1"]:
        pooled = self.pool(x)
        var = (pooled - pooled.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True)
        return (var + self.fc_norm.eps).sqrt()[:, None]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        model = getattr(self.pool, "__self__", None)
        n_tokens = model.cfg.n_tokens if model is not None else None
        if n_tokens is not None and (x.ndim != 3 or x.shape[1] != n_tokens):
            raise ValueError(f"ln_final of this model normalizes each position by the statistics of the pooled vector "
                             f"(fc_norm on the pooled features), so it needs whole residual streams [batch, {n_tokens}, "
                             f"d_model]; got shape {tuple(x.shape)} (rows of separate vectors cannot be normalized "
                             f"this way: pool first, then apply model.fc_norm)")
        centred = x - x.mean(-1, keepdim=True)
        return centred / self.pooled_scale(x) * self.fc_norm.w + self.fc_norm.b
