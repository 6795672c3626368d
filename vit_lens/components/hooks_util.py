"""Small helpers about HookPoints shared by the components."""
from transformer_lens.hook_points import HookPoint


def is_hooked(*hook_points: HookPoint) -> bool:
    """True when any of the hook points has a forward or backward hook registered.

    Components use it to pick a fused fast path only when no hook could observe or edit the
    intermediate values the fused kernel skips.
    """
    return any(hp._forward_hooks or hp._backward_hooks for hp in hook_points)
