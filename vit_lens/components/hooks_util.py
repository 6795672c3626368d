"""HookPoint with output checks, and the live-token context the parallel patching engines run hooks in."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint as _TLHookPoint


class LiveTokens:
    """The parallel engines compute only the *live* tokens of each intervention group: a tensor
    ``[n_images * n_groups, n_live, ...]`` whose row ``(i, g)`` holds the tokens at ``positions[g]``.
    A hooked HookPoint called inside :func:`live_tokens` gets the full-position tensor its hooks expect
    (``[n_images * n_groups, n_tokens, ...]``, live tokens in place, NaN elsewhere) and returns the live
    tokens of the result. Hooks acting per token (ablations, scalings, patching given positions or
    heads) are therefore exact; a hook that reads a non-live position leaks NaN and is refused."""

    def __init__(self, positions: Int[Tensor, "group live"], n_images: int, n_tokens: int):
        self.positions, self.n_images, self.n_tokens = positions, n_images, n_tokens

    def run(self, point: "HookPoint", tensor: Tensor) -> Tensor:
        n_groups, n_live = self.positions.shape
        if tensor.ndim < 2 or tensor.shape[:2] != (self.n_images * n_groups, n_live):
            raise RuntimeError(f"internal: {point.name!r} got shape {tuple(tensor.shape)}, expected "
                               f"[{self.n_images * n_groups}, {n_live}, ...]")
        rest = tensor.shape[2:]
        rows = torch.arange(n_groups, device=tensor.device)[:, None]
        full = tensor.new_full((self.n_images, n_groups, self.n_tokens, *rest), float("nan"))
        full[:, rows, self.positions] = tensor.view(self.n_images, n_groups, n_live, *rest)
        out = point.call_checked(full.flatten(0, 1))
        live = out.view(self.n_images, n_groups, self.n_tokens, *rest)[:, rows, self.positions]
        if bool((live.isnan() & ~tensor.view_as(live).isnan()).any()):
            raise ValueError(f"a hook on {point.name!r} reads token positions the parallel patching engines do "
                             f"not compute (e.g. a mean over positions); use engine='loop' for such hooks")
        return live.reshape(tensor.shape)


_LIVE: ContextVar[LiveTokens | None] = ContextVar("vit_lens_live_tokens", default=None)


@contextmanager
def live_tokens(positions: Int[Tensor, "group live"], n_images: int, n_tokens: int) -> Iterator[None]:
    """Run hooked HookPoints on full-position views of the live tokens (see :class:`LiveTokens`)."""
    token = _LIVE.set(LiveTokens(positions, n_images, n_tokens))
    try:
        yield
    finally:
        _LIVE.reset(token)


class HookPoint(_TLHookPoint):
    """TransformerLens's ``HookPoint`` that refuses a hook output of another shape, dtype or device than
    its input (a hook returning a wrong batch or position count would otherwise be broadcast or
    propagate silently), and that honours the :func:`live_tokens` context."""

    def __call__(self, tensor: Tensor) -> Tensor:
        live = _LIVE.get()
        if live is not None and self._forward_hooks:
            return live.run(self, tensor)
        return self.call_checked(tensor)

    def call_checked(self, tensor: Tensor) -> Tensor:
        out = super().__call__(tensor)
        if out is not tensor and (not isinstance(out, Tensor) or out.shape != tensor.shape
                                  or out.dtype != tensor.dtype or out.device != tensor.device):
            got = (f"shape {tuple(out.shape)}, {out.dtype} on {out.device}" if isinstance(out, Tensor)
                   else type(out).__name__)
            raise ValueError(f"a hook on {self.name!r} returned {got}; it must return a tensor like its "
                             f"input (shape {tuple(tensor.shape)}, {tensor.dtype} on {tensor.device}) or None")
        return out


def is_hooked(*hook_points: _TLHookPoint) -> bool:
    """True when any of the hook points has a forward or backward hook registered.

    Components use it to pick a fused fast path only when no hook could observe or edit the
    intermediate values the fused kernel skips.
    """
    return any(hp._forward_hooks or hp._backward_hooks for hp in hook_points)
