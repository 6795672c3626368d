"""Per-block residual stream and keys/values of a batch of images, cached once and reused."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class ContextCache:
    """``resid_pre[b]`` is ``blocks.{b}.hook_resid_pre``; ``k[b]``/``v[b]`` are that block's keys and values.

    Shapes: ``resid_pre`` ``[n_layers, batch, pos, d_model]``, ``k``/``v`` ``[n_layers, batch, pos, head, d_head]``.
    A target (blank) context is computed once and shared by every source image and intervention.
    """

    resid_pre: Float[Tensor, "layer batch pos d_model"]
    k: Float[Tensor, "layer batch pos head d_head"]
    v: Float[Tensor, "layer batch pos head d_head"]
    q: Float[Tensor, "layer batch pos head d_head"] | None = None
    derived: dict = field(default_factory=dict, repr=False)  # statistics engines compute once and reuse

    @property
    def batch(self) -> int:
        return self.resid_pre.shape[1]

    @property
    def n_blocks(self) -> int:
        """Blocks cached: ``0 .. n_blocks - 1`` (all of them unless built with ``up_to``)."""
        return self.resid_pre.shape[0]


@torch.inference_mode()
def cache_context(model, images: Float[Tensor, "batch chan height width"], with_queries: bool = False,
                  up_to: int | None = None) -> ContextCache:
    """One hooked forward that keeps only what the patching engines read (queries only on request:
    the efficient engine needs them for the target context, the parallel engine reuses a source's
    queries at ``layer_end``). ``up_to``: run and cache only blocks ``0 .. up_to`` — a source image is
    read up to the last block it is patched at (CAAP: ``ceil(2L/3)``), so the blocks after it are
    never computed (saves ``(L - 1 - up_to) / L`` of a forward)."""
    n = model.cfg.n_layers
    if up_to is not None and (isinstance(up_to, bool) or not isinstance(up_to, int) or not 0 <= up_to < n):
        raise ValueError(f"up_to must be None or a block index in [0, {n}); got {up_to!r}")
    stop = n if up_to is None else up_to + 1
    hooks = ("hook_resid_pre", "attn.hook_k", "attn.hook_v") + (("attn.hook_q",) if with_queries else ())
    names = [f"blocks.{b}.{h}" for b in range(stop) for h in hooks]
    _, cache = model.run_with_cache(images, names_filter=names, stop_at_layer=None if up_to is None else stop)
    stack = lambda hook: torch.stack([cache[f"blocks.{b}.{hook}"] for b in range(stop)])  # noqa: E731
    q = stack("attn.hook_q") if with_queries else None
    return ContextCache(stack("hook_resid_pre"), stack("attn.hook_k"), stack("attn.hook_v"), q)
