"""Loaders that port a source framework's ViT into :class:`vit_lens.HookedViT`, one module per source
(``timm``; more to come). Each reads a config off the source model, refuses what the port cannot reproduce
(:class:`UnsupportedModelError`) and maps the weights onto HookedViT's parameter names."""
from vit_lens.loading.checkpoints import UnsupportedModelError, load_state_dict_strict, read_sidecar, read_state_dict
from vit_lens.loading.timm import (check_timm_name, config_from_timm, create_timm_model, hooked_vit_from_checkpoint,
                                   hooked_vit_from_timm, state_dict_from_timm)

__all__ = ["UnsupportedModelError", "check_timm_name", "config_from_timm", "create_timm_model",
           "hooked_vit_from_checkpoint", "hooked_vit_from_timm", "load_state_dict_strict", "read_sidecar",
           "read_state_dict", "state_dict_from_timm"]
