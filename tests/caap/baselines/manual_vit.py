"""An explicit per-layer forward over a timm ViT's own modules (manual LayerNorm, manual softmax
attention), independent of HookedViT, with LibraGrad's backward rules as plain ``detach`` calls. The
slow reference for the attention and gradient baselines."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vit_lens import HookedViT
from tests.conftest import make_timm


@dataclass
class ManualRun:
    logits: Tensor
    tokens: Tensor  # patch embedding + position embedding (+ prefix tokens), before norm_pre
    block_inputs: list[Tensor]
    patterns: list[Tensor]  # [batch, head, query, key] per block


def layer_norm(module: nn.Module, x: Tensor, const_std: bool) -> Tensor:
    if isinstance(module, nn.Identity):
        return x
    centred = x - x.mean(-1, keepdim=True)
    var = centred.pow(2).mean(-1, keepdim=True)
    if const_std:
        var = var.detach()
    return centred / torch.sqrt(var + module.eps) * module.weight + module.bias


def manual_forward(tm: nn.Module, images: Tensor, *, const_std: bool = False, const_attn: bool = False,
                   const_gate: bool = False) -> ManualRun:
    tokens = tm._pos_embed(tm.patch_embed(images))
    x = layer_norm(tm.norm_pre, tokens, const_std)
    block_inputs, patterns = [], []
    for blk in tm.blocks:
        block_inputs.append(x)
        h = layer_norm(blk.norm1, x, const_std)
        batch, n, d = h.shape
        heads = blk.attn.num_heads
        q, k, v = blk.attn.qkv(h).reshape(batch, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        pattern = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * (d // heads) ** -0.5, dim=-1)
        patterns.append(pattern)
        used = pattern.detach() if const_attn else pattern
        z = torch.einsum("bhqk,bhkd->bqhd", used, v).reshape(batch, n, d)
        x = x + blk.ls1(blk.attn.proj(z))
        u = blk.mlp.fc1(layer_norm(blk.norm2, x, const_std))
        act = blk.mlp.act(u)
        if const_gate:
            act = u * (act / u).detach()
        x = x + blk.ls2(blk.mlp.fc2(act))
    x = layer_norm(tm.norm, x, const_std)
    pooled = x[:, 0] if tm.global_pool == "token" else x[:, tm.num_prefix_tokens:].mean(1)
    pooled = layer_norm(tm.fc_norm, pooled, const_std)
    return ManualRun(tm.head(pooled), tokens, block_inputs, patterns)


def float64_pair(family: str, seed: int = 0) -> tuple[nn.Module, HookedViT]:
    """A perturbed tiny timm model in float64 and its HookedViT port."""
    tm = make_timm(family, seed).double()
    return tm, HookedViT.from_timm(tm)


def no_hooks_left(model: HookedViT) -> bool:
    return all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


def one_patch_attention_model(row: int = 1, col: int = 2, dtype=torch.float64) -> tuple[nn.Module, HookedViT, int]:
    """A 3-block ViT whose classes 0 and 1 (logits ``+-w . features``) depend on the pixels of one patch only.

    Channel 0 of the residual stream carries a large marker on that patch only (position embedding;
    nothing writes channel 0 afterwards) and every head's query is a constant reading the keys' channel 0,
    so every token attends (to ~1e-25) only to that patch; the MLPs are zeroed.
    """
    tm = make_timm("vit", seed=5).to(dtype)
    n_pre = tm.num_prefix_tokens
    grid_w = tm.patch_embed.grid_size[1]
    patch = row * grid_w + col
    d, heads = tm.embed_dim, tm.blocks[0].attn.num_heads
    d_head = d // heads
    with torch.no_grad():
        tm.patch_embed.proj.weight[0] = 0
        tm.patch_embed.proj.bias[0] = 0
        tm.cls_token[..., 0] = 0
        tm.pos_embed[..., 0] = 0
        tm.pos_embed[0, n_pre + patch, 0] = 30.0
        for blk in tm.blocks:
            blk.norm1.weight.fill_(1.0)
            blk.norm1.bias.zero_()
            w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
            w[: 2 * d] = 0  # queries and keys
            b[: 2 * d] = 0
            for h in range(heads):
                b[h * d_head] = 1.0  # constant query on head channel 0
                w[d + h * d_head, 0] = 40.0  # key channel 0 reads the residual's channel 0
            blk.attn.proj.weight[0] = 0  # nothing writes the marker channel
            blk.attn.proj.bias[0] = 0
            blk.mlp.fc2.weight.zero_()
            blk.mlp.fc2.bias.zero_()
        tm.head.weight[2:] = 0
        tm.head.weight[1] = -tm.head.weight[0]
        tm.head.bias.zero_()
    return tm, HookedViT.from_timm(tm), patch


def check_every_family(make_method, family: str, refusals: dict[str, str]) -> None:
    """In float32 and float64: ``make_method(model).attribute`` gives a finite ``[2, *grid]`` map of the
    model's dtype, or, for the families in ``refusals``, one ``ValueError`` matching its message."""
    import pytest

    from tests.conftest import make_hooked, random_images

    for dtype in (torch.float32, torch.float64):
        model = make_hooked(family).to(dtype)
        images = random_images(model).to(dtype)
        method = make_method(model)
        if family in refusals:
            with pytest.raises(ValueError, match=refusals[family]):
                method.attribute(images)
            continue
        out = method.attribute(images)
        assert out.shape == (2, *model.cfg.grid_size) and out.dtype == dtype and torch.isfinite(out).all(), family


def check_hooks_removed_after_an_exception(method, model: HookedViT, monkeypatch) -> None:
    """A failure inside the forward (here: the head) leaves no hook behind on the model."""
    import pytest

    from tests.conftest import random_images

    def boom(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "forward_head", boom)
    with pytest.raises(RuntimeError, match="boom"):
        method.attribute(random_images(model, 1), target=0)
    assert no_hooks_left(model)
