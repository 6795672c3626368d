"""Loaders that port a source framework's ViT into :class:`vit_lens.HookedViT`, one module per source
(``timm``; more to come). Each reads a config off the source model, refuses what the port cannot reproduce
(:class:`UnsupportedModelError`) and maps the weights onto HookedViT's parameter names."""
from vit_lens.loading.checkpoints import UnsupportedModelError, load_state_dict_strict, read_sidecar, read_state_dict
from vit_lens.loading.timm import (check_timm_name, config_from_timm, create_timm_model, hooked_vit_from_checkpoint,
                                   hooked_vit_from_timm, state_dict_from_timm)
from vit_lens.loading.open_clip import (config_from_open_clip, create_open_clip_model, hooked_vit_from_open_clip,
                                        state_dict_from_open_clip)

__all__ = ["UnsupportedModelError", "check_timm_name", "config_from_timm", "create_timm_model",
           "hooked_vit_from_checkpoint", "hooked_vit_from_timm", "load_state_dict_strict", "read_sidecar",
           "read_state_dict", "state_dict_from_timm"]
from vit_lens.loading.hf import hooked_vit_from_hf, load_hf_model, load_hf_processor, state_dict_from_hf
from vit_lens.loading.hf_config import config_from_hf, hf_layout, preprocessing_from_processor

__all__ += ["config_from_hf", "hf_layout", "hooked_vit_from_hf", "load_hf_model", "load_hf_processor",
            "preprocessing_from_processor", "state_dict_from_hf"]
__all__ += ["config_from_open_clip", "create_open_clip_model", "hooked_vit_from_open_clip",
            "state_dict_from_open_clip"]
