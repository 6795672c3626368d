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


@torch.inference_mode()
def cache_context(model, images: Float[Tensor, "batch chan height width"], with_queries: bool = False) -> ContextCache:
    """One hooked forward that keeps only what the patching engines read (queries only on request:
    the efficient engine needs them for the target context)."""
    n = model.cfg.n_layers
    hooks = ("hook_resid_pre", "attn.hook_k", "attn.hook_v") + (("attn.hook_q",) if with_queries else ())
    names = [f"blocks.{b}.{h}" for b in range(n) for h in hooks]
    _, cache = model.run_with_cache(images, names_filter=names)
    stack = lambda hook: torch.stack([cache[f"blocks.{b}.{hook}"] for b in range(n)])  # noqa: E731
    q = stack("attn.hook_q") if with_queries else None
    return ContextCache(stack("hook_resid_pre"), stack("attn.hook_k"), stack("attn.hook_v"), q)
