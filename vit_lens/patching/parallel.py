"""Parallel "frozen-context" engine: every intervention is an independent group of live tokens.

With ``freeze_context`` only the prefix tokens (CLS, registers) are live before ``layer_end``, and the
prefix plus ``S_k`` from ``layer_end`` on; every other token keeps the target run's value, so its keys
and values are the cached target ones. A group's live tokens therefore attend to (a) their own keys
and (b) the shared, cached keys/values of the frozen patch tokens (the multi-CLS construction of the
CAAP paper, Sec. 3.3.1, generalized). How (b) is computed is pluggable: exactly
(:class:`ExactFrozenAttention`) or from statistics precomputed on the target context
(:class:`PrecomputedFrozenAttention`, E-CAAP, App. B.1).

Hooks registered on the model are honoured: the engine calls every hook point a block passes through
on the live tokens, presented to the hooks at their real positions (:func:`live_tokens`), so per-token
hooks (head ablations on ``hook_z``, edits of ``hook_attn_out``/``hook_mlp_out``/``hook_resid_*``, ...)
give the loop engine's scores. Hooks on attention scores/patterns (never materialized here) and hook
points the engine does not pass through are refused with a pointer to ``engine="loop"``.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens.components.hooks_util import live_tokens
from vit_lens.patching.context import ContextCache
from vit_lens.patching.frozen_attention import ExactFrozenAttention, FrozenAttention
from vit_lens.patching.interventions import Intervention, PackedPositions, group_by_layers, pack_positions
from vit_lens.patching.readouts import Readout

DEFAULT_MEMORY_BUDGET_GB = 1.0


def check_parallel_supported(cfg, freeze_context: bool) -> None:
    if not freeze_context:
        raise ValueError("the parallel engines ('parallel', 'efficient') require freeze_context=True (without "
                         "it every token is live and there is nothing to share); use engine='loop'")
    if cfg.pooling != "token":
        raise ValueError(f"the parallel engines ('parallel', 'efficient') read the CLS token only, but this model pools with "
                         f"pooling={cfg.pooling!r}, which needs the final state of every token; use engine='loop'")


# Hook points the parallel engines pass the live tokens through (everything before block 0 and the
# target/source runs themselves are honoured through the cached contexts).
_HONOURED_HOOKS = re.compile(
    r"(hook_embed|hook_pos_embed|hook_pre_logits|(ln_pre|ln_final)\.hook_(scale|normalized)"
    r"|blocks\.\d+\.(hook_resid_pre|hook_attn_out|hook_resid_mid|hook_mlp_out|hook_resid_post"
    r"|ln[12]\.hook_(scale|normalized)|attn\.hook_[qkvz]|mlp\.hook_(pre|post)))")


def hooked_points(model) -> list[str]:
    """Names of the model's hook points with forward hooks; raises for any the parallel engines cannot
    honour."""
    names = [name for name, point in model.hook_dict.items() if point._forward_hooks]
    refused = [name for name in names if not _HONOURED_HOOKS.fullmatch(name)]
    if refused:
        raise ValueError(f"the parallel patching engines cannot honour hooks on {refused} (attention scores and "
                         f"patterns are never materialized there); use engine='loop', or remove the hooks")
    return names


def groups_per_chunk(cfg, n_images: int, max_set_size: int, memory_budget_gb: float, hooked: bool = False) -> int:
    """How many interventions fit in the memory budget: the frozen-key scores ``[head, query, n_patches]``
    dominate, plus MLP activations of the live queries (and, with hooks, the full-position tensors the
    hooks see)."""
    n_query = cfg.n_prefix_tokens + max_set_size
    per_group = 4 * n_images * n_query * (3 * cfg.n_heads * cfg.n_patches + 2 * cfg.d_mlp + 12 * cfg.d_model)
    if hooked:
        per_group += 4 * n_images * 2 * cfg.n_tokens * max(cfg.d_mlp, cfg.d_model)
    return max(1, int(memory_budget_gb * 2**30 // per_group))


@torch.inference_mode()
def run_parallel(
    model,
    source: ContextCache,
    target: ContextCache,
    interventions: Sequence[Intervention],
    readout: Readout,
    *,
    frozen_attention: FrozenAttention | None = None,
    chunk_size: int | None = None,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    progress: bool = False,
) -> Float[Tensor, "batch K"]:
    """Scores ``[batch, K, ...]`` equal to :func:`run_loop` with ``freeze_context=True``, without K forwards."""
    cfg = model.cfg
    check_parallel_supported(cfg, freeze_context=True)
    hooked = bool(hooked_points(model))
    if target.batch not in (1, source.batch):
        raise ValueError(f"target batch must be 1 or the source batch {source.batch}; got {target.batch}")
    frozen_attention = frozen_attention or ExactFrozenAttention()
    last_end = max(iv.layer_end for iv in interventions) if interventions else 0
    if source.n_blocks <= last_end or target.n_blocks != cfg.n_layers:
        raise ValueError(f"the source cache must hold blocks 0..{last_end} (the last patched block) and the target "
                         f"cache all {cfg.n_layers}; got {source.n_blocks} and {target.n_blocks} "
                         f"(cache_context(..., up_to=...))")
    device = source.resid_pre.device
    scores = None
    jobs = []
    for (start, end), index in group_by_layers(interventions).items():
        packed = pack_positions([interventions[i] for i in index], device=device)
        size = chunk_size or groups_per_chunk(cfg, source.batch, packed.positions.shape[1], memory_budget_gb, hooked)
        jobs += [(start, end, index[lo:lo + size], packed.chunk(lo, lo + size)) for lo in range(0, len(index), size)]
    for start, end, index, packed in tqdm(jobs, disable=not progress, desc="patching (parallel)"):
        values = readout(_run_groups(model, source, target, packed, start, end, frozen_attention, hooked))
        if scores is None:  # readouts may return trailing dims, e.g. the whole output vector
            scores = values.new_empty(source.batch, len(interventions), *values.shape[2:])
        scores[:, index] = values
    return scores


def _run_groups(model, source: ContextCache, target: ContextCache, packed: PackedPositions,
                layer_start: int, layer_end: int, frozen_attention: FrozenAttention,
                hooked: bool = True) -> Float[Tensor, "batch group n_out"]:
    """Propagate the live tokens of a chunk of groups from ``layer_start`` to the output, through the
    same hook points as ``TransformerBlock.forward``.

    At ``layer_end`` the ``S_k`` tokens enter with the source's state, so their queries, keys and values
    there are the source run's: when the source cache holds queries and no hook is registered they are
    gathered instead of recomputed (every group would otherwise recompute them for its own copy of each
    token: 9 x 196 tokens for a 3x3 box on ViT-B/16)."""
    cfg = model.cfg
    n_pre, n_tokens = cfg.n_prefix_tokens, cfg.n_tokens
    n_images, n_groups = source.batch, packed.positions.shape[0]
    positions, valid = packed.positions, packed.valid  # [group, set]
    # frozen patch keys: every patch outside S_k (padding repeats a real position, so it is masked too)
    frozen_keys = torch.ones(n_groups, cfg.n_patches, dtype=torch.bool, device=positions.device)
    frozen_keys.scatter_(1, positions - n_pre, False)
    prefix_pos = torch.arange(n_pre, device=positions.device).expand(n_groups, -1)
    own_valid = torch.cat([torch.ones_like(prefix_pos, dtype=torch.bool), valid], 1)
    live = lambda pos: live_tokens(pos, n_images, n_tokens)  # noqa: E731
    flat = lambda t: t.flatten(0, 1)  # noqa: E731  [img, group, ...] -> [img * group, ...]
    grouped = lambda t: t.view(n_images, n_groups, *t.shape[1:])  # noqa: E731

    # block layer_start's input equals the target run's (hooks included): nothing is patched before it
    state = target.resid_pre[layer_start][:, None, :n_pre].expand(n_images, n_groups, -1, -1)
    for b in range(layer_start, cfg.n_layers):
        block = model.blocks[b]
        if b != layer_start:
            with live(prefix_pos if b <= layer_end else torch.cat([prefix_pos, positions], 1)):
                state = grouped(block.hook_resid_pre(flat(state)))
        if b == layer_end:  # S_k tokens become live: their input at layer_end is the source run's (hooked)
            state = torch.cat([state, _gather(source.resid_pre[b], positions)], dim=2)
        live_set = b >= layer_end
        query_pos = torch.cat([prefix_pos, positions], 1) if live_set else prefix_pos  # [group, query]
        reuse = b == layer_end and not hooked and source.q is not None  # S_k's q/k/v: the source run's
        with live(query_pos):
            q, k, v = block.attn.compute_qkv(block.ln1(flat(state[:, :, :n_pre] if reuse else state)))
            q, k, v = (rearrange(hook(t), "(i g) q h d -> i g q h d", i=n_images)
                       for hook, t in ((block.attn.hook_q, q), (block.attn.hook_k, k), (block.attn.hook_v, v)))
        if reuse:
            q, k, v = (torch.cat([t, _gather(cached[b], positions)], dim=2)
                       for t, cached in ((q, source.q), (k, source.k), (v, source.v)))
        if not live_set:  # S_k keys/values come from the source run at this block
            k = torch.cat([k, _gather(source.k[b], positions)], dim=2)
            v = torch.cat([v, _gather(source.v[b], positions)], dim=2)
        if b == cfg.n_layers - 1:  # only the CLS output is read: other tokens are keys/values only
            q, query_pos, state = q[:, :, :1], query_pos[:, :1], state[:, :, :1]
        z = _attend(q, k, v, own_valid, frozen_attention.partial(target, b, q, query_pos, positions, valid,
                                                                 frozen_keys, block.attn.scale), block.attn.scale)
        with live(query_pos):
            z = block.attn.hook_z(flat(z))
            resid_mid = block.hook_resid_mid(flat(state) + block.hook_attn_out(block.ls1(block.attn.project(z))))
            mlp_out = block.hook_mlp_out(block.ls2(block.mlp(block.ln2(resid_mid))))
            state = grouped(block.hook_resid_post(resid_mid + mlp_out))
    with live(query_pos):
        final = model.final_norm(flat(state))
    return grouped(model.forward_head(final))


def _gather(per_pos: Float[Tensor, "batch pos ..."], positions: Int[Tensor, "group set"]) -> Tensor:
    """``per_pos[:, positions]`` -> ``[batch, group, set, ...]`` (batch 1 stays broadcastable)."""
    return per_pos[:, positions]


def _attend(q, k, v, own_valid: Bool[Tensor, "group key"], frozen, scale: float):
    """Softmax attention over own keys plus the frozen part ``(max, denominator, numerator)``.

    q ``[img, group, query, head, d_head]``; k/v ``[img, group, key, head, d_head]``; returns z like q."""
    scores = torch.einsum("igqhd,igkhd->ighqk", q, k) * scale
    scores = scores.masked_fill(~own_valid[None, :, None, None, :], float("-inf"))
    f_max, f_denom, f_numer = frozen  # [img, group, head, query], same, [..., d_head]
    m = torch.maximum(scores.amax(-1), f_max)
    weights = torch.exp(scores - m[..., None])
    denom = weights.sum(-1) + f_denom * torch.exp(f_max - m)
    numer = torch.einsum("ighqk,igkhd->ighqd", weights, v) + f_numer * torch.exp(f_max - m)[..., None]
    return rearrange(numer / denom[..., None], "i g h q d -> i g q h d")
