"""Port timm ``VisionTransformer`` weights into HookedViT, refusing anything the port cannot reproduce."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit_lens.config import ViTConfig
from vit_lens.loading.checkpoints import (UnsupportedModelError, load_state_dict_strict, read_sidecar,
                                          read_state_dict)


def check_timm_name(name: Any, where: str = "model name") -> None:
    """Refuse names timm does not know (``timm.is_model``, pretrained tags allowed) before anything loads."""
    import difflib

    import timm

    if not isinstance(name, str) or not name:
        raise TypeError(f"{where} must be a timm model name (str); got {name!r}")
    if not timm.is_model(name) and ":" not in name:  # "hf-hub:..."/"local-dir:..." sources: timm checks them
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.6)
        raise ValueError(f"unknown timm model {name!r} ({where}); "
                         + (f"close matches: {', '.join(close)}" if close else "see timm.list_models()"))
    arch, _, tag = name.partition(".")
    if tag and ":" not in name:
        from timm.models import get_pretrained_cfg

        try:
            get_pretrained_cfg(name)
        except RuntimeError:  # timm: "Invalid pretrained tag"
            tags = timm.list_pretrained(arch + ".*")
            raise ValueError(f"unknown pretrained tag {tag!r} for timm model {arch!r} ({where}); available: "
                             f"{', '.join(tags[:6]) or 'none'}{' ...' if len(tags) > 6 else ''}") from None


def create_timm_model(name: str, *, pretrained: bool, checkpoint_path=None, **timm_kwargs: Any) -> nn.Module:
    import timm

    check_timm_name(name)
    if checkpoint_path is not None:
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
        load_state_dict_strict(model, read_state_dict(checkpoint_path), source=repr(str(checkpoint_path)))
        return model
    try:
        return timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except (OSError, ConnectionError) as err:
        raise RuntimeError(
            f"could not download pretrained weights for timm model {name!r} ({type(err).__name__}). "
            f"Offline? Pass checkpoint_path=<local .safetensors/.pth> or pretrained=False."
        ) from err


# ---------------------------------------------------------------------------------------- validation
def _layer_norm_eps(module: nn.Module, where: str) -> float | None:
    if isinstance(module, nn.Identity):
        return None
    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        raise UnsupportedModelError(f"unsupported normalization {type(module).__name__} at {where} "
                                    f"(only affine LayerNorm is supported)")
    return module.eps


def _activation_name(act: nn.Module) -> str:
    from timm.layers import activations

    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if isinstance(act, getattr(activations, "GELUTanh", ())):
        return "gelu_tanh"
    if isinstance(act, activations.GELU):
        return "gelu"
    if isinstance(act, activations.QuickGELU):
        return "quick_gelu"
    raise UnsupportedModelError(f"unsupported MLP activation {type(act).__name__} (supported: GELU, "
                                f"GELU-tanh, QuickGELU)")


def config_from_timm(model: nn.Module) -> ViTConfig:
    """Read a ViTConfig off a timm VisionTransformer, raising UnsupportedModelError on any feature the
    port does not implement."""
    from timm.data import resolve_data_config
    from timm.layers import Mlp, PatchEmbed
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if type(model) is not VisionTransformer:
        raise UnsupportedModelError(
            f"unsupported model class {type(model).__name__}: HookedViT ports timm VisionTransformer "
            f"(ViT, DeiT3, CLIP image towers, DINOv2); distillation tokens, RoPE (EVA), relative position "
            f"bias (BEiT) and hybrid backbones are not supported")
    if getattr(model, "attn_pool", None) is not None:
        raise UnsupportedModelError("unsupported pooling global_pool='map' (attention pooling head)")
    if model.global_pool not in ("token", "avg"):
        raise UnsupportedModelError(f"unsupported global_pool={model.global_pool!r} (supported: 'token', 'avg')")
    if getattr(model, "pool_include_prefix", False):
        raise UnsupportedModelError("unsupported pool_include_prefix=True")
    if getattr(model, "dynamic_img_size", False) or getattr(model.patch_embed, "dynamic_img_pad", False):
        raise UnsupportedModelError("unsupported dynamic_img_size=True / dynamic_img_pad=True (HookedViT runs at "
                                    "the fixed image size; create the timm model without them)")
    if model.pos_embed is None:
        raise UnsupportedModelError("unsupported model without learned absolute position embedding (pos_embed=None)")
    if model.global_pool == "token" and model.cls_token is None:
        raise UnsupportedModelError("global_pool='token' without a class token is not supported")
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not isinstance(pe.norm, nn.Identity) or not pe.flatten:
        raise UnsupportedModelError(f"unsupported patch embedding {type(pe).__name__} (only a plain conv "
                                    f"PatchEmbed without norm is supported)")
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.padding not in ((0, 0), 0, "valid"):
        raise UnsupportedModelError("unsupported overlapping or padded patch embedding")

    from vit_lens.components.swiglu import check_timm_gated_mlp, is_timm_gated_mlp

    eps_values, acts, layer_scale, mlp_kinds = set(), set(), set(), set()
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk) is not Block:
            raise UnsupportedModelError(f"unsupported block type {type(blk).__name__} at {where} (pre-norm Block only)")
        attn = blk.attn
        if type(attn) is not Attention:
            raise UnsupportedModelError(f"unsupported attention {type(attn).__name__} at {where} (e.g. RoPE)")
        if not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.k_norm, nn.Identity):
            raise UnsupportedModelError(f"unsupported qk_norm at {where}")
        if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
            raise UnsupportedModelError(f"unsupported scale_attn_norm at {where}")
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError(f"unsupported gated attention at {where}")
        if is_timm_gated_mlp(blk.mlp):  # SwiGLUPacked (DINOv2-G), SwiGLU, GluMlp
            d_mlp, act = check_timm_gated_mlp(blk.mlp, where, _activation_name)
            mlp_kinds.add(("swiglu", d_mlp))
        elif type(blk.mlp) is not Mlp or not isinstance(blk.mlp.norm, nn.Identity):
            raise UnsupportedModelError(f"unsupported MLP {type(blk.mlp).__name__} at {where} "
                                        f"(supported: Mlp, GluMlp/SwiGLUPacked, SwiGLU; no scale_mlp_norm)")
        else:
            act = _activation_name(blk.mlp.act)
            mlp_kinds.add(("mlp", blk.mlp.fc1.out_features))
        for name in ("ls1", "ls2"):
            ls = getattr(blk, name)
            if not isinstance(ls, nn.Identity) and not hasattr(ls, "gamma"):
                raise UnsupportedModelError(f"unsupported layer scale {type(ls).__name__} at {where}")
            layer_scale.add(hasattr(ls, "gamma"))
        eps_values.update({_layer_norm_eps(blk.norm1, where + ".norm1"), _layer_norm_eps(blk.norm2, where + ".norm2")})
        acts.add(act)
    final_eps = {_layer_norm_eps(m, n) for m, n in ((model.norm_pre, "norm_pre"), (model.norm, "norm"),
                                                    (model.fc_norm, "fc_norm"))}
    eps_values |= final_eps - {None}
    if None in eps_values or len(eps_values) != 1:
        raise UnsupportedModelError(f"unsupported mix of LayerNorm eps values {sorted(e for e in eps_values if e)}")
    if len(acts) != 1 or len(layer_scale) != 1 or len(mlp_kinds) != 1:
        raise UnsupportedModelError("unsupported model whose blocks differ in activation, layer scale or MLP type")
    mlp_type, d_mlp = mlp_kinds.pop()
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        raise UnsupportedModelError(f"unsupported classifier head {type(model.head).__name__}")

    blk0 = model.blocks[0]
    data = resolve_data_config({}, model=model)
    grid = tuple(pe.grid_size)
    return ViTConfig(
        n_layers=len(model.blocks),
        d_model=model.embed_dim,
        n_heads=blk0.attn.num_heads,
        d_head=blk0.attn.head_dim,
        d_mlp=d_mlp,
        patch_size=tuple(pe.patch_size),
        image_size=tuple(pe.img_size),
        grid_size=grid,
        has_cls_token=model.cls_token is not None,
        n_register_tokens=model.reg_token.shape[1] if model.reg_token is not None else 0,
        pos_embed_on_prefix=not model.no_embed_class,
        pooling=model.global_pool,
        num_classes=model.head.out_features if isinstance(model.head, nn.Linear) else 0,
        act_fn=acts.pop(),
        mlp_type=mlp_type,
        eps=eps_values.pop(),
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        layer_scale=layer_scale.pop(),
        qkv_bias=blk0.attn.qkv.bias is not None,
        final_norm=not isinstance(model.norm, nn.Identity),
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        in_chans=pe.proj.in_channels,
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        interpolation=data["interpolation"],
        crop_pct=data["crop_pct"],
        crop_mode=data.get("crop_mode", "center"),
        model_name=getattr(model, "pretrained_cfg", {}).get("architecture", "") or "",
    )


# ---------------------------------------------------------------------------------------- weights
def _ln(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.w": module.weight, f"{prefix}.b": module.bias}


def _bias(bias: torch.Tensor | None, size: int) -> torch.Tensor:
    """timm drops some biases (CLIP patch embedding, proj_bias=False): they are zeros in HookedViT."""
    return bias if bias is not None else torch.zeros(size)


def _linear(prefix: str, module: nn.Linear) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": module.weight, f"{prefix}.bias": _bias(module.bias, module.out_features)}


def state_dict_from_timm(model: nn.Module, cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Map a timm VisionTransformer's parameters onto HookedViT parameter names."""
    from vit_lens.components.swiglu import gated_mlp_state_from_timm

    sd: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": model.patch_embed.proj.weight,
        "patch_embed.proj.bias": _bias(model.patch_embed.proj.bias, cfg.d_model),
        "pos_embed.W_pos": model.pos_embed[0],
    }
    if cfg.has_cls_token:
        sd["cls_token"] = model.cls_token
    if cfg.n_register_tokens:
        sd["reg_token"] = model.reg_token
    if cfg.pre_norm:
        sd.update(_ln("ln_pre", model.norm_pre))
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        sd.update(_ln(f"{p}.ln1", blk.norm1))
        sd.update(_ln(f"{p}.ln2", blk.norm2))
        sd[f"{p}.attn.qkv.weight"] = blk.attn.qkv.weight
        if cfg.qkv_bias:
            sd[f"{p}.attn.qkv.bias"] = blk.attn.qkv.bias
        sd.update(_linear(f"{p}.attn.proj", blk.attn.proj))
        if cfg.mlp_type == "swiglu":
            sd.update(gated_mlp_state_from_timm(blk.mlp, f"{p}.mlp"))
        else:
            sd.update(_linear(f"{p}.mlp.fc1", blk.mlp.fc1))
            sd.update(_linear(f"{p}.mlp.fc2", blk.mlp.fc2))
        if cfg.layer_scale:
            sd[f"{p}.ls1.gamma"] = blk.ls1.gamma
            sd[f"{p}.ls2.gamma"] = blk.ls2.gamma
    if cfg.final_norm:
        sd.update(_ln("ln_final", model.norm))
    if cfg.fc_norm:
        sd.update(_ln("fc_norm", model.fc_norm))
    if cfg.num_classes:
        sd.update(_linear("head", model.head))
    return {k: v.detach().clone() for k, v in sd.items()}


def hooked_vit_from_timm(cls, model_or_name, *, pretrained=True, checkpoint_path=None, device=None,
                         dtype=None, class_names=None, data_config=None, **timm_kwargs):
    if isinstance(model_or_name, str):
        timm_model = create_timm_model(model_or_name, pretrained=pretrained, checkpoint_path=checkpoint_path,
                                       **timm_kwargs)
    elif isinstance(model_or_name, nn.Module):
        if checkpoint_path is not None or timm_kwargs:
            raise ValueError("checkpoint_path and timm kwargs apply to a model name, not to an instantiated model")
        timm_model = model_or_name
    else:
        raise TypeError(f"model_or_name must be a timm VisionTransformer or a timm model name; got "
                        f"{type(model_or_name).__name__}")
    cfg = config_from_timm(timm_model)
    if isinstance(model_or_name, str):
        cfg.model_name = model_or_name
    if data_config:
        for key in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
            if key in data_config:
                setattr(cfg, key, tuple(data_config[key]) if key in ("mean", "std") else data_config[key])
    cfg.class_names = list(class_names) if class_names is not None else None
    param = next(timm_model.parameters())
    model = cls(cfg)
    model.load_state_dict(state_dict_from_timm(timm_model, cfg), strict=True)
    model.to(device=device or param.device, dtype=dtype or param.dtype)
    return model.eval()


def hooked_vit_from_checkpoint(cls, path, model_name=None, **kwargs):
    if not Path(path).is_file():
        raise FileNotFoundError(f"file not found: {str(path)!r}" + (" (a directory)" if Path(path).is_dir() else ""))
    side = read_sidecar(path)
    name = model_name or side.get("timm_model_name")
    if not name:
        raise ValueError(f"model_name is required: no JSON sidecar with 'timm_model_name' beside {str(path)!r}")
    check_timm_name(name, "model_name" if model_name else f"'timm_model_name' in {str(Path(path).with_suffix('.json'))!r}")
    timm_kwargs = {**(side.get("create_model_kwargs") or {}), **kwargs}
    return hooked_vit_from_timm(cls, name, pretrained=False, checkpoint_path=path,
                                class_names=side.get("class_names"), data_config=side.get("data_config"),
                                **timm_kwargs)
