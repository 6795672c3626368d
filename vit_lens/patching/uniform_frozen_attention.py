"""E-CAAP as the CAAP paper writes it (App. B.1, Eqs. 8-9): blank tokens enter every live query's attention
through two precomputed quantities per block and head.

* ``Z_0`` (Eq. 8): the softmax mass of the blank keys outside ``S(p_i)``, scored by the BLANK context's own
  query at the live query's position (``q^{c'}``) - for the CLS/register queries and, unlike
  :class:`~vit_lens.patching.frozen_attention.PrecomputedFrozenAttention`'s default, for the live patch
  queries of ``S(p_i)`` too.
* ``v̄_0`` (Eq. 9): the UNIFORM mean of the blank context's patch values over all patch tokens (the set
  ``B``; precomputed once per block, independent of ``p_i``), standing in for the softmax-weighted sum.

So the frozen part of a live query's softmax is ``(max, Z_0, Z_0 · v̄_0)``. Named choices where the paper
is silent: ``B`` = every patch token of the blank context (Eq. 9 is "precomputed", so it cannot depend on
``S(p_i)``), and Eq. 8's ``j ∉ S(p_i)`` is honoured by subtracting the ``S(p_i)`` terms. It is exact only
when the blank values are all equal and the live queries equal the blank's (e.g. a constant blank with
no position embedding). Cost per group: O(|S|) on top of the cached statistics, as in the paper.
"""
from __future__ import annotations

import torch

from vit_lens.patching.frozen_attention import Partial, PrecomputedFrozenAttention, _patch_kv


class UniformFrozenAttention:
    """The Eq. 8-9 strategy of the parallel engine (implements ``FrozenAttention``)."""

    def __init__(self):
        self._stats = PrecomputedFrozenAttention(exact_patch_queries=False)

    def mean_value(self, target, block: int, n_prefix: int):
        """``v̄_0``: the mean patch value of the target context per head, ``[tgt, head, d_head]`` (cached)."""
        key = ("uniform_frozen_attention_mean_value", block)
        if key not in target.derived:
            _, v = _patch_kv(target, block, n_prefix)
            target.derived[key] = v.mean(1)
        return target.derived[key]

    def partial(self, target, block, q, query_pos, positions, valid, frozen_keys, scale) -> Partial:
        n_prefix = target.resid_pre.shape[2] - frozen_keys.shape[1]
        f_max, weights, denom, _ = self._stats.stats(target, block, n_prefix, scale)  # [tgt, head, pos(, n)]
        patch_idx = positions - n_prefix  # [group, set]
        w_set = weights[:, :, query_pos[:, :, None], patch_idx[:, None, :]] * valid[:, None, :]  # [tgt, head, g, q, set]
        z0 = (denom[:, :, query_pos] - w_set.sum(-1)).clamp_min(0)  # Eq. 8 relative to the max: [tgt, head, g, q]
        v_bar = self.mean_value(target, block, n_prefix)  # Eq. 9: [tgt, head, d_head]
        numer = z0[..., None] * v_bar[:, :, None, None, :]
        to_engine = lambda t: t.transpose(1, 2)  # noqa: E731  [tgt, head, group, ...] -> [tgt, group, head, ...]
        return to_engine(f_max[:, :, query_pos]), to_engine(z0), to_engine(numer)
