"""Generic activation patching for images: a reference hook loop and an exact parallel engine."""
from vit_lens.patching.act_patch import get_act_patch_attn_head_out_all_pos, get_act_patch_resid_pre, tl_index_df
from vit_lens.patching.context import ContextCache, cache_context
from vit_lens.patching.experiment import ENGINES, run_patching
from vit_lens.patching.frozen_attention import ExactFrozenAttention, PrecomputedFrozenAttention
from vit_lens.patching.interventions import Intervention, pack_positions, validate_interventions
from vit_lens.patching.loop import run_loop
from vit_lens.patching.parallel import run_parallel
from vit_lens.patching.readouts import ClassScore

__all__ = [
    "Intervention", "ContextCache", "cache_context", "run_patching", "run_loop", "run_parallel", "ENGINES",
    "ClassScore", "ExactFrozenAttention", "PrecomputedFrozenAttention", "pack_positions",
    "validate_interventions", "get_act_patch_resid_pre", "get_act_patch_attn_head_out_all_pos", "tl_index_df",
]
