"""Port HuggingFace ``transformers`` vision models into HookedViT, logit-exact.

Supported (:data:`vit_lens.loading.hf_config.SUPPORTED`): ViT, DeiT (CLS + distillation token), DINOv2 and
DINOv2 with registers (LayerScale, SwiGLU), CLIP vision towers; the output HookedViT reproduces is

* ``logits`` of ``*ForImageClassification`` (DINOv2: the classifier on CLS ⊕ mean patch token, HookedViT's
  ``pooling="cls_mean"``; CLIP: the classifier on the mean patch token, ``pooling="avg"``);
* ``image_embeds`` of ``CLIPVisionModelWithProjection`` / ``CLIPModel.get_image_features`` (the bias-free
  ``visual_projection`` becomes a head with zero bias), ``pooler_output`` of ``CLIPVisionModel`` (the
  ``post_layernorm``-ed CLS: HookedViT's ``fc_norm``) and of ``Dinov2*Model`` (the final-normed CLS);
* for ``ViTModel`` / ``DeiTModel`` the final-normed CLS token ``last_hidden_state[:, 0]``: their tanh
  ``pooler`` (``pooler_output``) is not ported (a warning says so).

Token layout: CLS, then DeiT's distillation token or DINOv2's registers as HookedViT register tokens
(``n_register_tokens``), then the patches. ``W_pos`` covers every position (``pos_embed_on_prefix=True``);
DINOv2's registers get no position embedding in HF, so their rows of ``W_pos`` are zero. The separate
q/k/v projections are fused into HookedViT's ``qkv``; CLIP's bias-free patch embedding gets a zero bias.

Position embedding: HF DINOv2 interpolates its position embedding at every forward to the input size
(bicubic, in float32), and ViT/DeiT/CLIP do so with ``interpolate_pos_encoding=True``. The port calls HF's
own ``interpolate_pos_encoding`` once for the HookedViT's fixed ``image_size``, so ``W_pos`` is bit for bit what
HF adds at that size. Cost: one pass over the weights (a copy), no forward pass.
"""
from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vit_lens.config import ViTConfig
from vit_lens.loading.hf_config import (LAYER_PATHS, HFLayout, config_from_hf, get_path, hf_layout,
                                        preprocessing_from_processor)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- weights
def position_embedding_from_hf(layout: HFLayout, cfg: ViTConfig) -> Tensor:
    """``[n_tokens, d_model]``: HF's position embedding at ``cfg.image_size``, zeros on DINOv2's registers."""
    emb = layout.embeddings
    native = get_path(emb, "position_embeddings")
    native = native[0] if native is not None else emb.position_embedding.weight
    height, width = cfg.image_size
    if layout.family.startswith("dinov2") or (height, width) != _config_size(layout):
        probe = native.new_zeros(1, layout.n_pos_prefix + cfg.n_patches, cfg.d_model)  # HF reads its shape only
        with torch.no_grad():
            pos = emb.interpolate_pos_encoding(probe, height, width)[0]
    else:
        pos = native
    if pos.shape[0] != layout.n_pos_prefix + cfg.n_patches:
        raise ValueError(f"internal: HF position embedding has {pos.shape[0]} rows for image_size {cfg.image_size}, "
                         f"expected {layout.n_pos_prefix + cfg.n_patches}")
    if layout.family == "dinov2_reg":
        pos = torch.cat([pos[:1], pos.new_zeros(cfg.n_register_tokens, cfg.d_model), pos[1:]])
    return pos


def _config_size(layout: HFLayout) -> tuple[int, int]:
    size = layout.hf_config.image_size
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def _ln(prefix: str, module: nn.LayerNorm) -> dict[str, Tensor]:
    return {f"{prefix}.w": module.weight, f"{prefix}.b": module.bias}


def _linear(prefix: str, module: nn.Linear) -> dict[str, Tensor]:
    bias = module.bias if module.bias is not None else module.weight.new_zeros(module.out_features)
    return {f"{prefix}.weight": module.weight, f"{prefix}.bias": bias}


def _mlp_state(layer: nn.Module, prefix: str, cfg: ViTConfig) -> dict[str, Tensor]:
    get = lambda key: get_path(layer, *LAYER_PATHS[key])  # noqa: E731
    if cfg.mlp_type == "mlp":
        return {**_linear(f"{prefix}.fc1", get("fc1")), **_linear(f"{prefix}.fc2", get("fc2"))}
    if get("gate") is not None:  # transformers 5.x: silu(gate_proj(x)) * up_proj(x) -> down_proj
        return {**_linear(f"{prefix}.fc1_g", get("gate")), **_linear(f"{prefix}.fc1_x", get("up")),
                **_linear(f"{prefix}.fc2", get("down"))}
    packed = _linear("in", get("packed_in"))  # transformers 4.x: weights_in = [gate; up], silu(first half)
    (wg, wx), (bg, bx) = packed["in.weight"].chunk(2, dim=0), packed["in.bias"].chunk(2, dim=0)
    return {f"{prefix}.fc1_g.weight": wg, f"{prefix}.fc1_g.bias": bg, f"{prefix}.fc1_x.weight": wx,
            f"{prefix}.fc1_x.bias": bx, **_linear(f"{prefix}.fc2", get("packed_out"))}


def state_dict_from_hf(layout: HFLayout, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map a supported HF model's parameters onto HookedViT parameter names (copies)."""
    emb = layout.embeddings
    conv = layout.patch_conv
    cls_token = get_path(emb, "cls_token")
    if cls_token is None:  # CLIP: class_embedding [d_model]
        cls_token = emb.class_embedding.reshape(1, 1, -1)
    sd: dict[str, Tensor] = {
        "patch_embed.proj.weight": conv.weight,
        "patch_embed.proj.bias": conv.bias if conv.bias is not None else conv.weight.new_zeros(cfg.d_model),
        "pos_embed.W_pos": position_embedding_from_hf(layout, cfg),
        "cls_token": cls_token,
    }
    if layout.family == "deit":
        sd["reg_token"] = emb.distillation_token
    elif cfg.n_register_tokens:
        sd["reg_token"] = emb.register_tokens
    if layout.pre_norm is not None:
        sd.update(_ln("ln_pre", layout.pre_norm))
    for i, layer in enumerate(layout.layers):
        p, get = f"blocks.{i}", (lambda key, layer=layer: get_path(layer, *LAYER_PATHS[key]))
        sd.update(_ln(f"{p}.ln1", get("ln1")))
        sd.update(_ln(f"{p}.ln2", get("ln2")))
        q, k, v = get("q"), get("k"), get("v")
        sd[f"{p}.attn.qkv.weight"] = torch.cat([q.weight, k.weight, v.weight])
        if cfg.qkv_bias:
            sd[f"{p}.attn.qkv.bias"] = torch.cat([q.bias, k.bias, v.bias])
        sd.update(_linear(f"{p}.attn.proj", get("o")))
        sd.update(_mlp_state(layer, f"{p}.mlp", cfg))
        if cfg.layer_scale:
            sd[f"{p}.ls1.gamma"], sd[f"{p}.ls2.gamma"] = get("ls1"), get("ls2")
    if layout.final_norm is not None:
        sd.update(_ln("ln_final", layout.final_norm))
    if layout.fc_norm is not None:
        sd.update(_ln("fc_norm", layout.fc_norm))
    if layout.head is not None:
        sd.update(_linear("head", layout.head))
    return {k: v.detach().clone() for k, v in sd.items()}


# ---------------------------------------------------------------------------------------- loading
def load_hf_model(name_or_path: str | PathLike, **hf_kwargs: Any) -> nn.Module:
    """``from_pretrained`` of the class named in the saved config's ``architectures`` (a hub name or a local
    directory written by ``save_pretrained``; a directory needs no network). A ``CLIPModel`` checkpoint loads
    whole: ``CLIPVisionModelWithProjection.from_pretrained`` would re-initialize ``visual_projection`` when
    the vision config's ``projection_dim`` differs from the CLIP config's."""
    import transformers

    source = str(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(source, **hf_kwargs)
    except (OSError, ValueError) as err:
        where = "local directory" if Path(source).is_dir() else "hub name or local directory"
        raise RuntimeError(f"could not load a transformers config from {source!r} ({where}): {err}. Pass a "
                           f"directory written by save_pretrained, or a hub name (needs network).") from err
    arch = (getattr(config, "architectures", None) or [None])[0]
    model_cls = getattr(transformers, arch, None) if arch else transformers.AutoModel
    if model_cls is None:
        from vit_lens.loading.checkpoints import UnsupportedModelError

        raise UnsupportedModelError(f"unsupported transformers architecture {arch!r} in {source!r}")
    return model_cls.from_pretrained(source, **hf_kwargs)


def load_hf_processor(name_or_path: str | PathLike, required: bool = False, **hf_kwargs: Any) -> Any | None:
    """The image processor saved with the model, or None when there is none (an error if ``required``)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(name_or_path), **hf_kwargs)
    except (OSError, ValueError) as err:
        if required:
            raise ValueError(f"image_processor: no image processor could be loaded from {str(name_or_path)!r}: "
                             f"{err}") from err
        logger.warning("no image processor found for %r (%s): model.transform uses HookedViT's default "
                       "ImageNet preprocessing", str(name_or_path), type(err).__name__)
        return None


def _head_output(layout: HFLayout) -> str:
    """CLIP's visual projection (or pooled CLS) gives an embedding; every other head here, including
    CLIPForImageClassification's (``pooling="avg"``), is a classifier."""
    return "embedding" if layout.family == "clip" and layout.pooling == "token" else "logits"


def _class_names(layout: HFLayout, cfg: ViTConfig) -> list[str] | None:
    id2label = getattr(layout.model.config, "id2label", None) or {}
    if layout.family == "clip" and layout.pooling == "token" or not cfg.num_classes:
        return None  # CLIP projections: embedding dimensions, not classes
    labels = {int(k): str(v) for k, v in id2label.items()}
    return [labels[i] for i in range(cfg.num_classes)] if set(labels) == set(range(cfg.num_classes)) else None


def hooked_vit_from_hf(cls, model_or_name_or_path, *, image_processor: Any = "auto",
                       image_size: int | tuple[int, int] | None = None, device=None, dtype=None,
                       **hf_kwargs: Any):
    """Port ``model_or_name_or_path`` (a supported transformers model, a hub name, or a ``save_pretrained``
    directory, loaded with ``from_pretrained(**hf_kwargs)``) into ``cls`` (HookedViT).

    ``image_processor``: ``"auto"`` (the processor saved with a name/directory; none for an instantiated
    model), a processor object, a name/directory to load one from, or None (HookedViT's default ImageNet
    preprocessing). It sets ``cfg.mean/std/interpolation/crop_pct/crop_mode`` and the default ``image_size``.
    ``image_size``: the fixed input size (default: the processor's output size, else the config's
    ``image_size``; DINOv2 checkpoints are configured at 518 px but usually run at the processor's 224 px).
    At a size other than the config's, ``W_pos`` is HF's ``interpolate_pos_encoding`` output, so the port
    equals HF's forward at that size (ViT/DeiT/CLIP: with ``interpolate_pos_encoding=True``).
    ``device``/``dtype``: where the HookedViT lives (default: the HF model's). ``cfg.model_name`` is
    ``"hf:<name, path or config._name_or_path>"``; ``cfg.class_names`` come from ``config.id2label``.
    """
    if isinstance(model_or_name_or_path, (str, PathLike)):
        source = str(model_or_name_or_path)
        hf_model = load_hf_model(source, **hf_kwargs)
        if isinstance(image_processor, str) and image_processor == "auto":
            image_processor = load_hf_processor(source, **{k: v for k, v in hf_kwargs.items()
                                                           if k in ("revision", "cache_dir", "token",
                                                                    "local_files_only")})
        name = source
    elif isinstance(model_or_name_or_path, nn.Module):
        if hf_kwargs:
            raise ValueError(f"from_pretrained keyword arguments {sorted(hf_kwargs)} apply to a name or directory, "
                             f"not to an instantiated model")
        hf_model = model_or_name_or_path
        if isinstance(image_processor, str) and image_processor == "auto":
            image_processor = None
        name = None
    else:
        raise TypeError(f"model_or_name_or_path must be a transformers model, a hub name or a directory written "
                        f"by save_pretrained; got {type(model_or_name_or_path).__name__}")
    if isinstance(image_processor, PathLike) or isinstance(image_processor, str) and image_processor != "auto":
        image_processor = load_hf_processor(image_processor, required=True)
    layout = hf_layout(hf_model)
    name = name or getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__
    prep = preprocessing_from_processor(image_processor, layout.patch_conv.in_channels) if image_processor else {}
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, (int, tuple, list)):
            raise TypeError(f"image_size must be an int or (height, width); got {image_size!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    else:
        size = prep.get("image_size")
    cfg = config_from_hf(layout, size)
    if getattr(hf_model, "pooler", None) is not None and type(hf_model).__name__ in ("ViTModel", "DeiTModel"):
        logger.warning("%s.pooler (dense + tanh) is not ported: HookedViT's output is the final-normed CLS token "
                       "(last_hidden_state[:, 0]), not pooler_output", type(hf_model).__name__)
    for key in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
        if key in prep:
            setattr(cfg, key, prep[key])
    cfg.model_name = f"hf:{name}"
    cfg.class_names = _class_names(layout, cfg)
    cfg.head_output = _head_output(layout)
    param = layout.patch_conv.weight
    model = cls(cfg).to(device=param.device, dtype=param.dtype)
    model.load_state_dict(state_dict_from_hf(layout, cfg), strict=True)
    model.to(device=device or param.device, dtype=dtype or param.dtype)
    return model.eval()
