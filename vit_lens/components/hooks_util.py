"""Small helpers about HookPoints shared by the components."""
from torch import Tensor
from transformer_lens.hook_points import HookPoint as _TLHookPoint


class HookPoint(_TLHookPoint):
    """TransformerLens's ``HookPoint`` that refuses a hook output of another shape, dtype or device than
    its input: a hook returning a wrong batch or position count would otherwise be broadcast or
    silently propagate."""

    def __call__(self, tensor: Tensor) -> Tensor:
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
