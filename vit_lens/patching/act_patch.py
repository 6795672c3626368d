"""Vectorized TransformerLens-style activation patching sweeps for images.

Like ``transformer_lens.patching.get_act_patch_resid_pre`` / ``get_act_patch_attn_head_out_all_pos``, but
many (layer, index) patches share one batched forward instead of one forward each (same results, tested
against TL's ``generic_activation_patch``). Positions are residual-stream positions, prefix (CLS,
registers) included, as in TL.

``metric``: by default TL's signature, logits ``[batch, n_out]`` of one patched run -> scalar
(``metric_mode="tl"``); ``metric_mode="batched"`` takes logits ``[n, batch, n_out]`` of n patched runs
-> ``[n]`` (one call per chunk).

TL's own sweeps take the position axis from ``corrupted_tokens.shape[-1]``: pass them
``model.to_tokens(images)`` (pixel tokens, last axis = the ``n_tokens`` positions), an explicit ``index_df``
(:func:`tl_index_df`), or use the sweeps here. Given images (last axis = the width), HookedViT refuses them.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Literal, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

Metric = Callable[[Tensor], Tensor]
MetricMode = Literal["tl", "batched"]
METRIC_MODES = ("tl", "batched")


def _clean(clean_cache: Mapping[str, Tensor], name: str) -> Tensor:
    if name not in clean_cache:
        raise ValueError(f"clean_cache lacks {name!r}; build it with model.run_with_cache(clean_images)")
    return clean_cache[name]


def _evaluate(metric: Metric, logits: Float[Tensor, "n batch n_out"], metric_mode: str) -> Float[Tensor, "n"]:
    n = logits.shape[0]
    if metric_mode == "batched":
        values = metric(logits)
        if not isinstance(values, Tensor) or values.shape != (n,):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"metric with metric_mode='batched' must map logits [n, batch, n_out] to [n]; got {got}")
        return values
    values = []
    for run_logits in logits:
        value = torch.as_tensor(metric(run_logits), device=logits.device)
        if value.ndim != 0:
            raise ValueError(f"metric (TransformerLens signature) must map logits [batch, n_out] to a scalar; got "
                             f"shape {tuple(value.shape)}. For [n, batch, n_out] -> [n] pass metric_mode='batched'")
        values.append(value.to(logits.dtype))
    return torch.stack(values)


@torch.inference_mode()
def _sweep(model, corrupted_images, metric, layers: Tensor, indices: Tensor, hook_suffix: str,
           patch: Callable[[Tensor, Tensor, int], Tensor], chunk_size: int, progress: bool,
           metric_mode: str) -> Tensor:
    """Run ``len(layers)`` patched forwards of the corrupted batch, ``chunk_size`` at a time; ``patch(act,
    rows_index, layer)`` edits the activation of the rows (``[n_rows_at_layer, batch, ...]``) patched at
    ``layer``, whose patch indices are ``rows_index``."""
    if metric_mode not in METRIC_MODES:
        raise ValueError(f"metric_mode must be one of {METRIC_MODES}; got {metric_mode!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
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
        results.append(_evaluate(metric, logits.view(n, batch, -1), metric_mode))
    return torch.cat(results)


def resolve_positions(model, positions: str | Sequence[int]) -> Tensor:
    """``"all"`` (every residual position, TL's ``pos`` axis), ``"patches"`` (patch tokens only, row-major)
    or explicit residual-stream positions."""
    cfg = model.cfg
    if isinstance(positions, str):
        if positions == "all":
            return torch.arange(cfg.n_tokens)
        if positions == "patches":
            return torch.arange(cfg.n_prefix_tokens, cfg.n_tokens)
        raise ValueError(f"positions must be 'all', 'patches' or a sequence of positions; got {positions!r}")
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    if pos.ndim != 1 or len(pos) == 0 or pos.min() < 0 or pos.max() >= cfg.n_tokens:
        raise ValueError(f"positions must be residual-stream positions in [0, {cfg.n_tokens}); got {positions!r}")
    return pos


def get_act_patch_resid_pre(model, corrupted_images: Float[Tensor, "batch chan height width"],
                            clean_cache: Mapping[str, Tensor], metric: Metric, *,
                            positions: str | Sequence[int] = "all", metric_mode: MetricMode = "tl",
                            chunk_size: int = 64, progress: bool = False) -> Float[Tensor, "layer pos"]:
    """Patch the clean ``hook_resid_pre`` of one position at one layer into the corrupted run, for every
    (layer, position); returns the metric as ``[n_layers, n_positions]`` (``[n_layers, n_tokens]`` by
    default, TL's shape; ``positions="patches"`` gives ``[n_layers, n_patches]`` for ``model.layout.to_grid``).
    Cost: ``n_layers * n_positions`` forwards, ``chunk_size`` batched together."""
    cfg = model.cfg
    pos = resolve_positions(model, positions)
    layers = torch.arange(cfg.n_layers).repeat_interleave(len(pos))
    flat_pos = pos.repeat(cfg.n_layers)

    def patch(act, p, layer):  # act [rows, batch, pos, d]
        clean = _clean(clean_cache, f"blocks.{layer}.hook_resid_pre").to(act.device)
        act[torch.arange(len(p)), :, p] = clean[:, p].transpose(0, 1)
        return act

    values = _sweep(model, corrupted_images, metric, layers, flat_pos, "hook_resid_pre", patch, chunk_size,
                    progress, metric_mode)
    return values.view(cfg.n_layers, len(pos))


def get_act_patch_attn_head_out_all_pos(model, corrupted_images: Float[Tensor, "batch chan height width"],
                                        clean_cache: Mapping[str, Tensor], metric: Metric, *,
                                        layers: Sequence[int] | None = None, metric_mode: MetricMode = "tl",
                                        chunk_size: int = 64, progress: bool = False) -> Float[Tensor, "layer head"]:
    """Patch one head's clean output (``attn.hook_z``, every position incl. the prefix) into the corrupted
    run, for every (layer, head); returns ``[n_layers, n_heads]`` (``[len(layers), n_heads]`` for a subset of
    ``layers``). Cost: one forward per (layer, head), ``chunk_size`` batched together."""
    cfg = model.cfg
    chosen = torch.arange(cfg.n_layers) if layers is None else torch.as_tensor(list(layers), dtype=torch.long)
    if chosen.ndim != 1 or len(chosen) == 0 or chosen.min() < 0 or chosen.max() >= cfg.n_layers:
        raise ValueError(f"layers must be block indices in [0, {cfg.n_layers}); got {layers!r}")
    layers = chosen.repeat_interleave(cfg.n_heads)
    heads = torch.arange(cfg.n_heads).repeat(len(chosen))

    def patch(act, head, layer):  # act [rows, batch, pos, head, d_head]
        clean = _clean(clean_cache, f"blocks.{layer}.attn.hook_z").to(act.device)
        act[torch.arange(len(head)), :, :, head] = clean[:, :, head].permute(2, 0, 1, 3)
        return act

    values = _sweep(model, corrupted_images, metric, layers, heads, "attn.hook_z", patch, chunk_size, progress,
                    metric_mode)
    return values.view(len(chosen), cfg.n_heads)


def tl_index_df(model, axis_names: Sequence[str] = ("layer", "pos")):
    """Every combination of ``axis_names`` as the ``index_df`` of ``transformer_lens.patching
    .generic_activation_patch``, with ``pos``/``src_pos``/``dest_pos`` over all ``n_tokens`` residual positions
    (TL would take the input's last dimension). TL then returns one value per row: ``.view(n_layers, n_tokens)``.
    Passing ``model.to_tokens(images)`` as TL's input does the same without an ``index_df``."""
    import itertools

    import pandas as pd

    cfg = model.cfg
    ranges = {"layer": cfg.n_layers, "pos": cfg.n_tokens, "src_pos": cfg.n_tokens, "dest_pos": cfg.n_tokens,
              "head": cfg.n_heads, "head_index": cfg.n_heads}
    unknown = [a for a in axis_names if a not in ranges]
    if unknown:
        raise ValueError(f"axis_names must be among {sorted(ranges)}; got {unknown}")
    rows = list(itertools.product(*(range(ranges[a]) for a in axis_names)))
    return pd.DataFrame(rows, columns=list(axis_names))
