"""Read a HookedViT configuration off a HuggingFace ``transformers`` vision model and its image processor.

:func:`hf_layout` finds where each part of a supported model lives (the module layout of transformers 5.x and
of 4.x, which used ``encoder.layer[i].attention.attention.query`` ... names) and refuses everything else with
:class:`UnsupportedModelError` naming the model class or feature. :func:`config_from_hf` turns a layout into a
:class:`ViTConfig`; :func:`preprocessing_from_processor` turns an image processor (``ViTImageProcessor``,
``DeiTImageProcessor``, ``BitImageProcessor``, ``CLIPImageProcessor``, ...) into the timm eval-transform fields.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from vit_lens.config import ViTConfig
from vit_lens.loading.checkpoints import UnsupportedModelError

# model class -> (family, attribute holding the backbone or None for the model itself, head attribute or None,
# pooling). The output HookedViT reproduces: ``logits`` of the classifiers, ``image_embeds`` of the CLIP
# projections, ``pooler_output`` of CLIPVisionModel and Dinov2*Model, and the final-normed CLS token
# (``last_hidden_state[:, 0]``) of ViTModel/DeiTModel, whose tanh ``pooler`` is not ported.
SUPPORTED = {
    "ViTModel": ("vit", None, None, "token"),
    "ViTForImageClassification": ("vit", "vit", "classifier", "token"),
    "DeiTModel": ("deit", None, None, "token"),
    "DeiTForImageClassification": ("deit", "deit", "classifier", "token"),
    "Dinov2Model": ("dinov2", None, None, "token"),
    "Dinov2ForImageClassification": ("dinov2", "dinov2", "classifier", "cls_mean"),
    "Dinov2WithRegistersModel": ("dinov2_reg", None, None, "token"),
    "Dinov2WithRegistersForImageClassification": ("dinov2_reg", "dinov2_with_registers", "classifier", "cls_mean"),
    "CLIPVisionModel": ("clip", None, None, "token"),
    "CLIPVisionModelWithProjection": ("clip", "vision_model", "visual_projection", "token"),
    "CLIPModel": ("clip", "vision_model", "visual_projection", "token"),
    "CLIPForImageClassification": ("clip", "vision_model", "classifier", "avg"),
}

# class-name prefix -> the feature HookedViT does not implement
REFUSED = {
    "DeiTForImageClassificationWithTeacher": "the averaged CLS + distillation heads (port model.deit, or a "
                                             "DeiTForImageClassification, instead)",
    "Siglip": "the attention-pool (MAP) head", "Beit": "relative position bias",
    "Data2VecVision": "relative position bias", "Swin": "window attention", "Dinov3": "RoPE (rotary position "
    "embedding)", "ViTMAE": "random patch masking", "ViTHybrid": "the hybrid CNN stem", "ViTMSN": "model class",
    "Dinov2Backbone": "the multi-level backbone outputs", "Dinov2WithRegistersBackbone": "the multi-level backbone "
    "outputs", "ViTForMaskedImageModeling": "the masked-image-modeling decoder",
    "DeiTForMaskedImageModeling": "the masked-image-modeling decoder",
}

# HuggingFace ``hidden_act`` -> HookedViT ``act_fn`` (gelu_new is the tanh approximation written out)
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_python_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}

# attribute paths inside one transformer layer: transformers 5.x first, then 4.x
LAYER_PATHS = {
    "ln1": ("layernorm_before", "norm1", "layer_norm1"),
    "ln2": ("layernorm_after", "norm2", "layer_norm2"),
    "q": ("attention.q_proj", "self_attn.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "self_attn.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "self_attn.v_proj", "attention.attention.value"),
    "o": ("attention.o_proj", "self_attn.out_proj", "attention.output.dense"),
    "fc1": ("mlp.fc1", "intermediate.dense"),
    "fc2": ("mlp.fc2", "output.dense"),
    "gate": ("mlp.gate_proj",), "up": ("mlp.up_proj",), "down": ("mlp.down_proj",),
    "packed_in": ("mlp.weights_in",), "packed_out": ("mlp.weights_out",),  # 4.x DINOv2 SwiGLU: [gate; up]
    "ls1": ("layer_scale1.lambda1",), "ls2": ("layer_scale2.lambda1",),
}


def get_path(module: Any, *paths: str) -> Any:
    """The object at the first dotted attribute path that exists (None when none does)."""
    for path in paths:
        obj = module
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


@dataclass
class HFLayout:
    """Where the parts of a supported HuggingFace model live."""

    family: str  # "vit", "deit", "dinov2", "dinov2_reg", "clip"
    model: nn.Module  # the model given
    tower: nn.Module  # the module holding ``embeddings`` and the layers
    layers: list[nn.Module]
    head: nn.Linear | None
    pooling: str
    pre_norm: nn.LayerNorm | None  # CLIP's ``pre_layrnorm``
    final_norm: nn.LayerNorm | None  # on every token (``layernorm``)
    fc_norm: nn.LayerNorm | None  # on the pooled CLS (CLIP's ``post_layernorm``)
    hf_config: Any  # the backbone's config (CLIP: the vision config)

    @property
    def embeddings(self) -> nn.Module:
        return self.tower.embeddings

    @property
    def patch_conv(self) -> nn.Conv2d:
        return get_path(self.embeddings, "patch_embeddings.projection", "patch_embedding")

    @property
    def n_pos_prefix(self) -> int:
        """Prefix tokens HF's position embedding covers (CLS, plus DeiT's distillation token)."""
        return 2 if self.family == "deit" else 1


def hf_layout(model: nn.Module) -> HFLayout:
    """Locate the parts of a supported model; UnsupportedModelError for anything else."""
    name = type(model).__name__
    for prefix, feature in REFUSED.items():
        if name.startswith(prefix) and name not in SUPPORTED:
            raise UnsupportedModelError(f"unsupported transformers model {name}: HookedViT does not implement "
                                        f"{feature}")
    if name not in SUPPORTED:
        raise UnsupportedModelError(f"unsupported transformers model class {name}; HookedViT.from_hf ports "
                                    f"{', '.join(SUPPORTED)}")
    family, tower_attr, head_attr, pooling = SUPPORTED[name]
    tower = getattr(model, tower_attr) if tower_attr else model
    while getattr(tower, "vision_model", None) is not None:  # 4.x CLIPVisionModel wraps a CLIPVisionTransformer
        tower = tower.vision_model
    head = getattr(model, head_attr) if head_attr else None
    if head is not None and not isinstance(head, nn.Linear):
        if not isinstance(head, nn.Identity):
            raise UnsupportedModelError(f"unsupported {name}.{head_attr} of type {type(head).__name__} (a Linear "
                                        f"or Identity classifier is supported)")
        head = None  # num_labels=0: the pooled features are the output
    layers = get_path(tower, "layers", "encoder.layer", "encoder.layers")
    clip = family == "clip"
    return HFLayout(
        family=family, model=model, tower=tower, layers=list(layers), head=head, pooling=pooling,
        pre_norm=tower.pre_layrnorm if clip else None,
        final_norm=None if clip else tower.layernorm,
        fc_norm=tower.post_layernorm if clip and pooling == "token" else None,
        hf_config=tower.config,
    )


# ---------------------------------------------------------------------------------------- validation
def _eps(module: Any, where: str) -> float:
    if type(module) is not nn.LayerNorm or not module.elementwise_affine or module.bias is None:
        raise UnsupportedModelError(f"unsupported normalization {type(module).__name__} at {where} (only an "
                                    f"affine nn.LayerNorm with bias is supported)")
    return module.eps


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _mlp_kind(layer: nn.Module, where: str) -> tuple[str, int]:
    """``("mlp", d_mlp)`` or ``("swiglu", d_mlp)``."""
    fc1 = get_path(layer, *LAYER_PATHS["fc1"])
    if isinstance(fc1, nn.Linear):
        return "mlp", fc1.out_features
    gate, packed = get_path(layer, *LAYER_PATHS["gate"]), get_path(layer, *LAYER_PATHS["packed_in"])
    if isinstance(gate, nn.Linear):
        return "swiglu", gate.out_features
    if isinstance(packed, nn.Linear):
        return "swiglu", packed.out_features // 2
    raise UnsupportedModelError(f"unsupported MLP {type(getattr(layer, 'mlp', None)).__name__} at {where}")


def config_from_hf(layout: HFLayout, image_size: tuple[int, int] | None = None) -> ViTConfig:
    """A ViTConfig for ``layout`` run at ``image_size`` (default: the model config's ``image_size``)."""
    hf = layout.hf_config
    conv = layout.patch_conv
    if not isinstance(conv, nn.Conv2d) or tuple(conv.kernel_size) != tuple(conv.stride) or \
            conv.padding not in ((0, 0), 0, "valid"):
        raise UnsupportedModelError("unsupported patch embedding (only a non-overlapping, unpadded Conv2d)")
    patch = tuple(conv.kernel_size)
    size = tuple(image_size) if image_size is not None else _pair(hf.image_size)
    if len(size) != 2 or any(s <= 0 or s % p for s, p in zip(size, patch)):
        raise ValueError(f"image_size must be (height, width) multiples of the patch size {patch}; got {image_size!r}")
    if getattr(hf, "use_swiglu_ffn", False) and layout.family not in ("dinov2", "dinov2_reg"):
        raise UnsupportedModelError("unsupported use_swiglu_ffn outside DINOv2")
    d_model, n_heads = conv.out_channels, hf.num_attention_heads
    eps, kinds, biases = set(), set(), set()
    for i, layer in enumerate(layout.layers):
        where = f"layer {i} ({type(layer).__name__})"
        eps |= {_eps(get_path(layer, *LAYER_PATHS["ln1"]), where), _eps(get_path(layer, *LAYER_PATHS["ln2"]), where)}
        q, k, v, o = (get_path(layer, *LAYER_PATHS[key]) for key in "qkvo")
        if not all(isinstance(t, nn.Linear) for t in (q, k, v, o)):
            raise UnsupportedModelError(f"unsupported attention {type(getattr(layer, 'attention', layer)).__name__} at "
                                        f"{where} (separate q/k/v/out Linear projections expected)")
        if not q.out_features == k.out_features == v.out_features == o.in_features or q.out_features % n_heads:
            raise UnsupportedModelError(f"unsupported attention widths at {where}")
        biases.add(tuple(t.bias is not None for t in (q, k, v)))
        if o.bias is None:
            raise UnsupportedModelError(f"unsupported output projection without bias at {where}")
        kinds.add(_mlp_kind(layer, where))
        if (get_path(layer, *LAYER_PATHS["ls1"]) is not None) != layout.family.startswith("dinov2"):
            raise UnsupportedModelError(f"unexpected layer scale layout at {where}")
    for norm, where in ((layout.pre_norm, "pre_layrnorm"), (layout.final_norm, "layernorm"),
                        (layout.fc_norm, "post_layernorm")):
        if norm is not None:
            eps.add(_eps(norm, where))
    if len(eps) != 1:
        raise UnsupportedModelError(f"unsupported mix of LayerNorm eps values {sorted(eps)}")
    if len(biases) != 1 or len(set(biases.pop())) != 1 or len(kinds) != 1:
        raise UnsupportedModelError("unsupported model whose q/k/v biases or MLP types differ between projections "
                                    "or layers")
    mlp_type, d_mlp = kinds.pop()
    act = "silu" if mlp_type == "swiglu" else ACTIVATIONS.get(hf.hidden_act) if isinstance(hf.hidden_act, str) else None
    if act is None:
        raise UnsupportedModelError(f"unsupported hidden_act={hf.hidden_act!r} (supported: {sorted(ACTIVATIONS)})")
    q0 = get_path(layout.layers[0], *LAYER_PATHS["q"])
    head = layout.head
    n_reg = {"deit": 1, "dinov2_reg": getattr(hf, "num_register_tokens", 0)}.get(layout.family, 0)
    grid = (size[0] // patch[0], size[1] // patch[1])
    return ViTConfig(
        n_layers=len(layout.layers), d_model=d_model, n_heads=n_heads, d_head=q0.out_features // n_heads,
        d_mlp=d_mlp, patch_size=patch, image_size=size, grid_size=grid, has_cls_token=True,
        n_register_tokens=n_reg, pos_embed_on_prefix=True, pooling=layout.pooling, head_n_last_blocks=1,
        num_classes=head.out_features if head is not None else 0, act_fn=act, mlp_type=mlp_type, eps=eps.pop(),
        pre_norm=layout.pre_norm is not None, layer_scale=layout.family.startswith("dinov2"),
        qkv_bias=q0.bias is not None, final_norm=layout.final_norm is not None, fc_norm=layout.fc_norm is not None,
        in_chans=conv.in_channels,
    )


# ---------------------------------------------------------------------------------------- preprocessing
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL codes


def _size(value: Any) -> dict:
    """A processor's ``size``/``crop_size`` (dict, SizeDict or int) as a dict of its set keys."""
    if isinstance(value, int):
        return {"height": value, "width": value}
    items = value.items() if hasattr(value, "items") else vars(value).items()
    return {k: v for k, v in items if v is not None}


def _crop_pct(crop: int, scaled: int) -> float:
    """``crop / scaled``, nudged so timm's ``floor(crop / crop_pct)`` gives back ``scaled`` exactly."""
    pct = crop / scaled
    while math.floor(crop / pct) < scaled:
        pct = math.nextafter(pct, 0.0)
    return pct


def preprocessing_from_processor(processor: Any, in_chans: int = 3) -> dict:
    """``image_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode`` for timm's eval
    transform equivalent to the processor's resize -> center crop -> rescale -> normalize; ValueError naming
    the processor field timm's transform cannot reproduce."""
    kind = type(processor).__name__

    def refuse(field: str, value: Any, allowed: str) -> ValueError:
        return ValueError(f"image processor {kind}: {field}={value!r} has no timm eval-transform equivalent "
                          f"(allowed: {allowed}); pass image_processor=None and set model.cfg yourself")

    if not getattr(processor, "do_resize", False):
        raise refuse("do_resize", getattr(processor, "do_resize", None), "True")
    if getattr(processor, "do_pad", False):
        raise refuse("do_pad", True, "False")
    if not getattr(processor, "do_rescale", True) or not math.isclose(processor.rescale_factor, 1 / 255):
        raise refuse("rescale_factor", getattr(processor, "rescale_factor", None), "1/255 with do_rescale=True")
    resample = int(getattr(processor, "resample", 2))
    if resample not in RESAMPLE:
        raise refuse("resample", resample, str(sorted(RESAMPLE)))
    size = _size(processor.size)
    crop = _size(processor.crop_size) if getattr(processor, "do_center_crop", False) else None
    if set(size) == {"height", "width"}:
        scaled = (size["height"], size["width"])
        out = (crop["height"], crop["width"]) if crop else scaled
        pct = _crop_pct(out[0], scaled[0])
        if math.floor(out[1] / pct) != scaled[1]:  # timm scales both edges by one crop_pct
            raise refuse("crop_size", crop, "the same crop fraction of height and width")
        mode = "squash"
    elif set(size) == {"shortest_edge"} and crop and crop["height"] == crop["width"]:
        out, mode, pct = (crop["height"], crop["width"]), "center", _crop_pct(crop["height"], size["shortest_edge"])
    else:
        raise refuse("size/crop_size", (size, crop), "{height, width} with an optional crop, or {shortest_edge} "
                     "with a square center crop")
    if getattr(processor, "do_normalize", True):
        mean, std = processor.image_mean, processor.image_std
        mean = tuple(float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean] * in_chans))
        std = tuple(float(s) for s in (std if isinstance(std, (list, tuple)) else [std] * in_chans))
    else:
        mean, std = (0.0,) * in_chans, (1.0,) * in_chans
    return {"image_size": out, "mean": mean, "std": std, "interpolation": RESAMPLE[resample], "crop_pct": pct,
            "crop_mode": mode}
