"""How live queries attend to the frozen (target-context) patch tokens in the parallel engine.

Each strategy returns the frozen part of a softmax as ``(max, denominator, numerator)`` so that the
engine can merge it exactly with the live keys: shapes ``[img, group, head, query]`` (twice) and
``[img, group, head, query, d_head]``; ``img`` may be 1 (shared target).
"""
from __future__ import annotations

from typing import Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vit_lens.patching.context import ContextCache

Partial = tuple[Tensor, Tensor, Tensor]


class FrozenAttention(Protocol):
    def partial(self, target: ContextCache, block: int, q: Float[Tensor, "img group query head d_head"],
                query_pos: Int[Tensor, "group query"], positions: Int[Tensor, "group set"],
                valid: Bool[Tensor, "group set"], frozen_keys: Bool[Tensor, "group n_patches"],
                scale: float) -> Partial: ...


def _patch_kv(target: ContextCache, block: int, n_prefix: int) -> tuple[Tensor, Tensor]:
    return target.k[block][:, n_prefix:], target.v[block][:, n_prefix:]  # [tgt, n_patches, head, d_head]


def _safe_max(scores: Tensor) -> Tensor:
    """Row max, with 0 for rows whose every key is masked (their weights are then all exactly 0)."""
    m = scores.amax(-1)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


class ExactFrozenAttention:
    """Scores of the actual live queries against every frozen key (masked at ``S_k``): exact."""

    def partial(self, target, block, q, query_pos, positions, valid, frozen_keys, scale) -> Partial:
        n_prefix = target.resid_pre.shape[2] - frozen_keys.shape[1]
        k, v = _patch_kv(target, block, n_prefix)
        if k.shape[0] == 1:
            scores = torch.einsum("igqhd,nhd->ighqn", q, k[0])
        else:
            scores = torch.einsum("igqhd,ignhd->ighqn", q, k[:, None])
        scores.mul_(scale).masked_fill_(~frozen_keys[None, :, None, None, :], float("-inf"))
        f_max = _safe_max(scores)
        weights = scores.sub_(f_max[..., None]).exp_()
        denom = weights.sum(-1)
        if v.shape[0] == 1:
            numer = torch.einsum("ighqn,nhd->ighqd", weights, v[0])
        else:
            numer = torch.einsum("ighqn,inhd->ighqd", weights, v)
        return f_max, denom, numer


class PrecomputedFrozenAttention:
    """E-CAAP (CAAP paper, App. B.1): a live query at position ``p`` is assumed to score the frozen keys
    as the target context's own query at ``p`` does. The target's per-position softmax statistics over
    all patch keys are computed once per block and cached on the target; per group only the terms of
    the ``S_k`` keys are subtracted. Exact whenever the live queries equal the target's.

    ``exact_patch_queries`` (default): only prefix (CLS, register) queries are approximated; live patch
    queries (``S_k`` after ``layer_end``), whose state is the source's and far from the blank's, attend
    exactly."""

    def stats(self, target: ContextCache, block: int, n_prefix: int, scale: float):
        """``(max, weights, denominator, numerator)`` of the target's softmax over patch keys, cached on
        the target itself so a blank context pays for them once."""
        key = ("precomputed_frozen_attention", block)
        if key not in target.derived:
            if target.q is None:
                raise ValueError("PrecomputedFrozenAttention needs the target's queries: build the target "
                                 "cache with cache_context(model, images, with_queries=True)")
            k, v = _patch_kv(target, block, n_prefix)
            scores = torch.einsum("tphd,tnhd->thpn", target.q[block], k) * scale  # [tgt, head, pos, n_patches]
            f_max = scores.amax(-1)
            weights = torch.exp(scores - f_max[..., None])
            numer = torch.einsum("thpn,tnhd->thpd", weights, v)
            target.derived[key] = (f_max, weights, weights.sum(-1), numer)
        return target.derived[key]

    def __init__(self, exact_patch_queries: bool = True):
        self.exact_patch_queries = exact_patch_queries
        self._exact = ExactFrozenAttention()

    def partial(self, target, block, q, query_pos, positions, valid, frozen_keys, scale) -> Partial:
        n_prefix = target.resid_pre.shape[2] - frozen_keys.shape[1]
        if self.exact_patch_queries and q.shape[2] > n_prefix:  # live S_k queries: exact
            pre = self._precomputed(target, block, query_pos[:, :n_prefix], positions, valid, n_prefix, scale)
            live = self._exact.partial(target, block, q[:, :, n_prefix:], query_pos[:, n_prefix:], positions,
                                       valid, frozen_keys, scale)
            return tuple(torch.cat([a.expand(live[0].shape[0], *a.shape[1:]), b], dim=3)
                         for a, b in zip(pre, live))
        return self._precomputed(target, block, query_pos, positions, valid, n_prefix, scale)

    def _precomputed(self, target, block, query_pos, positions, valid, n_prefix, scale) -> Partial:
        f_max, weights, denom, numer = self.stats(target, block, n_prefix, scale)
        _, v = _patch_kv(target, block, n_prefix)
        patch_idx = positions - n_prefix  # [group, set]
        # weights of the S_k keys, per query: [tgt, head, group, query, set]
        w_set = weights[:, :, query_pos[:, :, None], patch_idx[:, None, :]] * valid[:, None, :]
        v_set = v[:, patch_idx]  # [tgt, group, set, head, d_head]
        denom = (denom[:, :, query_pos] - w_set.sum(-1)).clamp_min(0)
        numer = numer[:, :, query_pos] - torch.einsum("thgqs,tgshd->thgqd", w_set, v_set)
        to_engine = lambda t: t.transpose(1, 2)  # noqa: E731  [tgt, head, group, ...] -> [tgt, group, head, ...]
        return to_engine(f_max[:, :, query_pos]), to_engine(denom), to_engine(numer)
