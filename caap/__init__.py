"""CAAP: Causal Attribution via Activation Patching, its efficient variant and input-level baselines."""
from caap.baselines import GradCAM, SimpleDeletion, SimpleInsertion
from caap.blanks import BLANKS, blank_context, blank_image, blank_pixels, cache_info, clear_cache
from caap.caap import CAAP, default_layers, upsample
from caap.registry import get_method, list_methods, register
from caap.selection import SELECTIONS, all_neighbourhoods, neighbourhood

__all__ = ["CAAP", "SimpleInsertion", "SimpleDeletion", "GradCAM", "BLANKS", "SELECTIONS", "blank_context",
           "blank_image", "blank_pixels", "default_layers", "upsample", "neighbourhood", "all_neighbourhoods",
           "get_method", "list_methods", "register", "clear_cache", "cache_info"]
