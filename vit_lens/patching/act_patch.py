"""Vectorized TransformerLens-style activation patching sweeps for images.

Like ``transformer_lens.patching.get_act_patch_resid_pre`` / ``get_act_patch_attn_head_out_all_pos``,
but many (layer, index) patches share one batched forward instead of one forward each.
``metric`` maps logits ``[n, batch, n_out]`` (n patched runs of the corrupted batch) to ``[n]``.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Mapping

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

Metric = Callable[[Float[Tensor, "n batch n_out"]], Float[Tensor, "n"]]


def _clean(clean_cache: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in clean_cache:
        raise ValueError(f"clean_cache lacks {name!r}; build it with model.run_with_cache(clean_images)")
    return clean_cache[name]


@torch.inference_mode()
def _sweep(model, corrupted_images, metric, layers: Tensor, indices: Tensor, hook_suffix: str,
           patch: Callable[[Tensor, Tensor, int], Tensor], chunk_size: int, progress: bool) -> Tensor:
    """Run ``len(layers)`` patched forwards of the corrupted batch, ``chunk_size`` at a time; ``patch(act,
    rows_index, layer)`` edits the activation of the rows (``[n_rows_at_layer, batch, ...]``) patched at
    ``layer``, whose patch indices are ``rows_index``."""
    model.check_images(corrupted_images, "corrupted_images")
    batch = corrupted_images.shape[0]
    resid0 = model.embed(corrupted_images)
    results = []
    for lo in tqdm(range(0, len(layers), chunk_size), disable=not progress, desc="activation patching"):
        chunk_layers, chunk_idx = layers[lo:lo + chunk_size], indices[lo:lo + chunk_size]
        n = len(chunk_layers)

        def edit(act: Tensor, hook, layer: int) -> Tensor:
            rows = (chunk_layers == layer).nonzero().flatten()
            if len(rows) == 0:
                return act
            act = act.view(n, batch, *act.shape[1:]).clone()
            act[rows] = patch(act[rows], chunk_idx[rows], layer)
            return act.flatten(0, 1)

        hooks = [(f"blocks.{l}.{hook_suffix}", partial(edit, layer=l)) for l in chunk_layers.unique().tolist()]
        start = resid0[None].expand(n, -1, -1, -1).flatten(0, 1)
        with model.hooks(fwd_hooks=hooks):
            logits = model.forward_from_resid(start, 0)
        values = metric(logits.view(n, batch, -1))
        if values.shape != (n,):
            raise ValueError(f"metric must map logits [n, batch, n_out] to [n]; got shape {tuple(values.shape)}")
        results.append(values)
    return torch.cat(results)


def get_act_patch_resid_pre(model, corrupted_images: Float[Tensor, "batch chan height width"],
                            clean_cache: Mapping[str, Tensor], metric: Metric, *, chunk_size: int = 64,
                            progress: bool = False) -> Float[Tensor, "layer n_patches"]:
    """Patch the clean ``hook_resid_pre`` of one patch token at one layer into the corrupted run, for every
    (layer, patch); returns the metric as ``[n_layers, n_patches]``."""
    cfg = model.cfg
    layers = torch.arange(cfg.n_layers).repeat_interleave(cfg.n_patches)
    positions = (torch.arange(cfg.n_patches) + cfg.n_prefix_tokens).repeat(cfg.n_layers)

    def patch(act, pos, layer):  # act [rows, batch, pos, d]
        clean = _clean(clean_cache, f"blocks.{layer}.hook_resid_pre").to(act.device)
        act[torch.arange(len(pos)), :, pos] = clean[:, pos].transpose(0, 1)
        return act

    values = _sweep(model, corrupted_images, metric, layers, positions, "hook_resid_pre", patch, chunk_size, progress)
    return values.view(cfg.n_layers, cfg.n_patches)


def get_act_patch_attn_head_out_all_pos(model, corrupted_images: Float[Tensor, "batch chan height width"],
                                        clean_cache: Mapping[str, Tensor], metric: Metric, *,
                                        chunk_size: int = 64, progress: bool = False) -> Float[Tensor, "layer head"]:
    """Patch one head's clean output (``attn.hook_z``, all positions) into the corrupted run, for every
    (layer, head); returns ``[n_layers, n_heads]``."""
    cfg = model.cfg
    layers = torch.arange(cfg.n_layers).repeat_interleave(cfg.n_heads)
    heads = torch.arange(cfg.n_heads).repeat(cfg.n_layers)

    def patch(act, head, layer):  # act [rows, batch, pos, head, d_head]
        clean = _clean(clean_cache, f"blocks.{layer}.attn.hook_z").to(act.device)
        act[torch.arange(len(head)), :, :, head] = clean[:, :, head].permute(2, 0, 1, 3)
        return act

    values = _sweep(model, corrupted_images, metric, layers, heads, "attn.hook_z", patch, chunk_size, progress)
    return values.view(cfg.n_layers, cfg.n_heads)
