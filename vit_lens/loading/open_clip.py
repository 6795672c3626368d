"""Port open_clip image towers into HookedViT: the output is ``model.encode_image(x)`` (projected, not
normalized), and open_clip's eval transform becomes the model's ``transform``.

Two tower kinds: open_clip's own ``VisionTransformer`` (OpenAI / LAION CLIPs: ``conv1`` without bias,
``class_embedding``, ``ln_pre``, ``nn.MultiheadAttention`` blocks, ``ln_post``, bias-free ``proj``), mapped
here; and ``TimmModel`` (a timm trunk plus an optional linear projection), ported through the timm loader.
Anything the port cannot reproduce raises :class:`UnsupportedModelError` naming the feature.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_lens.config import ViTConfig
from vit_lens.loading.checkpoints import UnsupportedModelError
from vit_lens.loading.timm import _layer_norm_eps, config_from_timm, state_dict_from_timm

_REQUIRED = object()  # sentinel: a model name needs an explicit ``pretrained=`` (None = random weights)
_SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip reads config and weights from these; ``pretrained`` is ignored


# ---------------------------------------------------------------------------------------- creation
def check_open_clip_name(name: Any, pretrained: Any) -> None:
    """Refuse unknown architecture names and pretrained tags (that are not files) before anything loads."""
    import difflib
    import os

    import open_clip

    if not isinstance(name, str) or not name:
        raise TypeError(f"model_or_name must be an open_clip model, its .visual, or an open_clip model name "
                        f"(str); got {name!r}")
    if name.startswith(_SCHEMAS):
        return
    models = open_clip.list_models()
    if name.replace("/", "-") not in models:
        close = difflib.get_close_matches(name, models, n=3, cutoff=0.6)
        raise ValueError(f"unknown open_clip model {name!r}; "
                         + (f"close matches: {', '.join(close)}" if close else "see open_clip.list_models()"))
    if pretrained is _REQUIRED:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"pretrained is required with an open_clip model name: a tag of {name!r} "
                         f"({', '.join(tags) or 'none known'}), a local checkpoint path, or None for random "
                         f"weights")
    if pretrained is not None:
        if not isinstance(pretrained, (str, os.PathLike)):
            raise TypeError(f"pretrained must be a tag (str), a checkpoint path or None; got {pretrained!r}")
        tags = open_clip.list_pretrained_tags_by_model(name)
        if str(pretrained) not in tags and not os.path.isfile(pretrained):
            raise ValueError(f"pretrained={str(pretrained)!r} is neither a tag of open_clip model {name!r} "
                             f"({', '.join(tags) or 'none known'}) nor an existing file")


def create_open_clip_model(name: str, *, pretrained: Any = _REQUIRED, **open_clip_kwargs: Any) -> nn.Module:
    """``open_clip.create_model_and_transforms(name, pretrained, ...)`` in eval mode; the eval transform is
    kept on ``model.visual.preprocess_cfg`` (open_clip sets it), which the port reads."""
    import open_clip

    check_open_clip_name(name, pretrained)
    pretrained = None if pretrained is _REQUIRED else pretrained  # schemas carry their own weights
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            name, pretrained=None if pretrained is None else str(pretrained), **open_clip_kwargs)
    except (OSError, ConnectionError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "download" not in str(err).lower():
            raise
        raise RuntimeError(f"could not load open_clip weights for {name!r} (pretrained={pretrained!r}): {err}. "
                           f"Offline? Pass pretrained=<local checkpoint path> or a 'local-dir:' name.") from err
    return model.eval()


# ---------------------------------------------------------------------------------------- validation
def vision_tower(model: Any) -> nn.Module:
    """The image tower of an open_clip CLIP / CustomTextCLIP / CoCa, or ``model`` itself if it is one."""
    import open_clip
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if isinstance(model, (VisionTransformer, TimmModel)):
        return model
    if isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP, open_clip.CoCa)):
        return model.visual
    raise TypeError(f"model_or_name must be an open_clip CLIP / CustomTextCLIP (or its .visual: "
                    f"open_clip.transformer.VisionTransformer or open_clip.timm_model.TimmModel) or an "
                    f"open_clip model name; got {type(model).__name__}")


def _activation_name(act: nn.Module, where: str) -> str:
    from open_clip.transformer import QuickGELU

    if isinstance(act, QuickGELU):  # OpenAI checkpoints (and every ``-quickgelu`` config)
        return "quick_gelu"
    if type(act) is nn.GELU:
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    raise UnsupportedModelError(f"unsupported open_clip MLP activation {type(act).__name__} at {where} "
                                f"(supported: nn.GELU, QuickGELU)")


def _check_custom_block(blk: nn.Module, where: str) -> None:
    """open_clip's CustomResidualAttentionBlock matches HookedViT only with every NormFormer / cosine
    option off: refuse each by its CLIPVisionCfg name."""
    from open_clip.transformer import Attention

    attn = blk.attn
    if type(attn) is not Attention:
        raise UnsupportedModelError(f"unsupported open_clip attention {type(attn).__name__} at {where}")
    features = {
        "qk_norm": not isinstance(attn.ln_q, nn.Identity) or not isinstance(attn.ln_k, nn.Identity),
        "scaled_cosine_attn": attn.logit_scale is not None,
        "scale_heads": attn.head_scale is not None,
        "scale_attn_inner": not isinstance(attn.ln_inner, nn.Identity),
        "scale_attn": not isinstance(blk.ln_attn, nn.Identity),
        "scale_fc": not isinstance(blk.mlp.ln, nn.Identity),
    }
    found = [name for name, on in features.items() if on]
    if found:
        raise UnsupportedModelError(f"unsupported open_clip block option(s) {', '.join(found)} at {where}")


def _check_mha(attn: nn.Module, where: str) -> None:
    if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
        raise UnsupportedModelError(f"unsupported nn.MultiheadAttention at {where} (kdim/vdim, add_bias_kv or "
                                    f"add_zero_attn)")


def _block_attention(blk: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, nn.Linear, int]:
    """(fused q|k|v weight ``[3 d_model, d_model]``, its bias or None, out_proj, n_heads) of either block."""
    attn = blk.attn
    return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, attn.num_heads


def _pool_type(visual: nn.Module) -> str:
    """``pool_type`` (open_clip >= 2.24); older releases had the flag ``global_average_pool``."""
    if hasattr(visual, "pool_type"):
        return visual.pool_type
    return "avg" if getattr(visual, "global_average_pool", False) else "tok"


def config_from_open_clip(visual: nn.Module) -> ViTConfig:
    """Read a ViTConfig off an open_clip ``VisionTransformer``, raising UnsupportedModelError on anything
    the port does not reproduce (attentional pooler, pool_type='none', custom block options, ...)."""
    from open_clip.transformer import CustomResidualAttentionBlock, LayerScale, ResidualAttentionBlock
    from open_clip.transformer import VisionTransformer

    if type(visual) is not VisionTransformer:
        raise UnsupportedModelError(f"unsupported open_clip image tower {type(visual).__name__} (supported: "
                                    f"VisionTransformer, TimmModel with a ViT trunk; not ModifiedResNet)")
    if visual.attn_pool is not None:
        raise UnsupportedModelError("unsupported open_clip attentional pooler (CoCa, attentional_pool=True)")
    pool_type = _pool_type(visual)
    if pool_type not in ("tok", "avg"):
        raise UnsupportedModelError(f"unsupported open_clip pool_type={pool_type!r} (supported: 'tok', "
                                    f"'avg'; 'none' returns every token)")
    conv = visual.conv1
    if tuple(conv.kernel_size) != tuple(conv.stride) or conv.padding not in ((0, 0), 0, "valid"):
        raise UnsupportedModelError("unsupported overlapping or padded open_clip patch embedding")

    eps, acts, layer_scale, d_mlps, qkv_bias = set(), set(), set(), set(), set()
    for i, blk in enumerate(visual.transformer.resblocks):
        where = f"transformer.resblocks.{i}"
        if type(blk) is CustomResidualAttentionBlock:
            _check_custom_block(blk, where)
        elif type(blk) is ResidualAttentionBlock:
            if hasattr(blk, "ln_1_kv"):
                raise UnsupportedModelError(f"unsupported open_clip cross-attention block at {where}")
            _check_mha(blk.attn, where)
        else:
            raise UnsupportedModelError(f"unsupported open_clip block {type(blk).__name__} at {where}")
        mlp = blk.mlp
        if not isinstance(getattr(mlp, "c_fc", None), nn.Linear) or not isinstance(getattr(mlp, "c_proj", None),
                                                                                   nn.Linear):
            raise UnsupportedModelError(f"unsupported open_clip MLP at {where} (c_fc, act, c_proj expected)")
        for name in ("ls_1", "ls_2"):
            ls = getattr(blk, name)
            if not isinstance(ls, (nn.Identity, LayerScale)):
                raise UnsupportedModelError(f"unsupported layer scale {type(ls).__name__} at {where}.{name}")
            layer_scale.add(isinstance(ls, LayerScale))
        eps.update({_layer_norm_eps(blk.ln_1, where + ".ln_1"), _layer_norm_eps(blk.ln_2, where + ".ln_2")})
        acts.add(_activation_name(mlp.gelu, where + ".mlp.gelu"))
        d_mlps.add(mlp.c_fc.out_features)
        weight, bias, out_proj, n_heads = _block_attention(blk)
        qkv_bias.add((bias is not None, out_proj.bias is not None, n_heads))
    eps.add(_layer_norm_eps(visual.ln_post, "ln_post"))
    pre_eps = _layer_norm_eps(visual.ln_pre, "ln_pre")  # None when no_ln_pre=True
    eps |= {pre_eps} - {None}
    if None in eps or len(eps) != 1:
        raise UnsupportedModelError(f"unsupported mix of LayerNorm eps values {sorted(e for e in eps if e)}")
    if len(acts) != 1 or len(layer_scale) != 1 or len(d_mlps) != 1 or len(qkv_bias) != 1:
        raise UnsupportedModelError("unsupported open_clip tower whose blocks differ in activation, layer scale, "
                                    "MLP width, attention biases or head count")
    has_qkv_bias, _, n_heads = qkv_bias.pop()
    width = visual.conv1.out_channels
    # final_ln_after_pool: LN(CLS) == LN(all tokens)[:, 0] (per-token norm); for 'avg' it is timm's fc_norm
    ln_after_avg = getattr(visual, "final_ln_after_pool", False) and pool_type == "avg"
    return ViTConfig(
        n_layers=len(visual.transformer.resblocks),
        d_model=width,
        n_heads=n_heads,
        d_head=width // n_heads,
        d_mlp=d_mlps.pop(),
        patch_size=tuple(visual.patch_size),
        image_size=tuple(visual.image_size),
        grid_size=tuple(visual.grid_size),
        pooling="token" if pool_type == "tok" else "avg",
        num_classes=visual.proj.shape[1] if visual.proj is not None else 0,
        act_fn=acts.pop(),
        eps=eps.pop(),
        pre_norm=pre_eps is not None,
        layer_scale=layer_scale.pop(),
        qkv_bias=has_qkv_bias,
        final_norm=not ln_after_avg,
        fc_norm=ln_after_avg,
        in_chans=conv.in_channels,
    )


# ---------------------------------------------------------------------------------------- weights
def _ln(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.w": module.weight, f"{prefix}.b": module.bias}


def _zeros_if_none(bias: torch.Tensor | None, like: torch.Tensor, size: int) -> torch.Tensor:
    return bias if bias is not None else like.new_zeros(size)


def state_dict_from_open_clip(visual: nn.Module, cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Map an open_clip VisionTransformer's parameters onto HookedViT names. ``proj`` ``[width, embed_dim]``
    becomes the head (weight ``proj.T``, bias zeros); the bias-free ``conv1`` gets a zero bias."""
    conv = visual.conv1.weight
    sd: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": conv,
        "patch_embed.proj.bias": _zeros_if_none(visual.conv1.bias, conv, cfg.d_model),
        "pos_embed.W_pos": visual.positional_embedding,
        "cls_token": visual.class_embedding.reshape(1, 1, -1),
    }
    if cfg.pre_norm:
        sd.update(_ln("ln_pre", visual.ln_pre))
    for i, blk in enumerate(visual.transformer.resblocks):
        p = f"blocks.{i}"
        weight, bias, out_proj, _ = _block_attention(blk)
        sd.update(_ln(f"{p}.ln1", blk.ln_1))
        sd.update(_ln(f"{p}.ln2", blk.ln_2))
        sd[f"{p}.attn.qkv.weight"] = weight  # rows q | k | v, each (head, d_head): HookedViT's layout
        if cfg.qkv_bias:
            sd[f"{p}.attn.qkv.bias"] = bias
        sd[f"{p}.attn.proj.weight"] = out_proj.weight
        sd[f"{p}.attn.proj.bias"] = _zeros_if_none(out_proj.bias, conv, cfg.d_model)
        sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"] = blk.mlp.c_fc.weight, blk.mlp.c_fc.bias
        sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"] = blk.mlp.c_proj.weight, blk.mlp.c_proj.bias
        if cfg.layer_scale:
            sd[f"{p}.ls1.gamma"], sd[f"{p}.ls2.gamma"] = blk.ls_1.gamma, blk.ls_2.gamma
    sd.update(_ln("fc_norm" if cfg.fc_norm else "ln_final", visual.ln_post))
    if cfg.num_classes:
        sd["head.weight"] = visual.proj.T
        sd["head.bias"] = conv.new_zeros(cfg.num_classes)
    return {k: v.detach().clone() for k, v in sd.items()}


def _from_timm_tower(tower: nn.Module) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """A ``TimmModel`` tower: the timm trunk through the timm loader, plus open_clip's linear ``proj``
    (``timm_proj='linear'``) as the head; attention pooling and MLP projections are refused."""
    name = getattr(tower.trunk, "pretrained_cfg", {}).get("architecture", type(tower.trunk).__name__)
    children = dict(tower.head.named_children())
    if "pool" in children:
        raise UnsupportedModelError(f"unsupported open_clip timm tower {name!r} with attention pooling "
                                    f"({type(children['pool']).__name__}, timm_pool='abs_attn'/'rot_attn')")
    if "mlp" in children:
        raise UnsupportedModelError(f"unsupported open_clip timm tower {name!r} with an MLP projection "
                                    f"(timm_proj='mlp')")
    extra = [f"{k} ({type(m).__name__})" for k, m in children.items() if k not in ("drop", "proj")]
    if extra:
        raise UnsupportedModelError(f"unsupported open_clip timm tower head module(s) {extra}")
    try:
        cfg = config_from_timm(tower.trunk)
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"open_clip timm tower {name!r}: {err}") from None
    sd = state_dict_from_timm(tower.trunk, cfg)
    proj = children.get("proj")
    if proj is not None:
        if cfg.num_classes:  # open_clip never builds both; composing them would hide a second bias
            raise UnsupportedModelError(f"unsupported open_clip timm tower {name!r}: a trunk head and a proj")
        cfg.num_classes = proj.out_features
        sd["head.weight"] = proj.weight.detach().clone()
        sd["head.bias"] = _zeros_if_none(proj.bias, proj.weight, proj.out_features).detach().clone()
    cfg.model_name = name
    return cfg, sd


# ---------------------------------------------------------------------------------------- preprocessing
def apply_open_clip_preprocess(cfg: ViTConfig, tower: nn.Module) -> None:
    """Set ``cfg``'s mean/std/interpolation/crop so that timm's eval transform (``HookedViT.transform``)
    equals open_clip's ``preprocess_val`` on RGB images: 'shortest' resize = timm ``crop_mode='center'``
    and 'squash' = ``'squash'``, both with ``crop_pct=1``. 'longest' (letterbox with one fill value) has no
    timm equivalent and is refused. A tower built without ``create_model`` gets open_clip's defaults."""
    from open_clip.transform import PreprocessCfg

    pp = dict(getattr(tower, "preprocess_cfg", None) or {"size": tuple(cfg.image_size)})
    pp = PreprocessCfg(**{k: v for k, v in pp.items() if k in PreprocessCfg.__dataclass_fields__})
    size = tuple(pp.size) if isinstance(pp.size, (tuple, list)) else (pp.size, pp.size)
    if size != tuple(cfg.image_size):
        raise UnsupportedModelError(f"open_clip preprocess size {size} differs from the model's image size "
                                    f"{tuple(cfg.image_size)}")
    interpolation = "bilinear" if pp.interpolation == "bilinear" else "bicubic"  # open_clip's eval rule
    if pp.resize_mode == "shortest":
        if size[0] != size[1] and interpolation != "bicubic":  # open_clip's ResizeKeepRatio is always bicubic
            raise UnsupportedModelError("unsupported open_clip preprocess: non-square 'shortest' resize with "
                                        "bilinear interpolation")
        crop_mode = "center"
    elif pp.resize_mode == "squash":
        crop_mode = "squash"
    else:
        raise UnsupportedModelError(f"unsupported open_clip preprocess resize_mode={pp.resize_mode!r} (timm's "
                                    f"eval transform reproduces 'shortest' and 'squash'; pass "
                                    f"image_resize_mode= to open_clip to choose one)")
    cfg.mean, cfg.std = tuple(float(m) for m in pp.mean), tuple(float(s) for s in pp.std)
    cfg.interpolation, cfg.crop_pct, cfg.crop_mode = interpolation, 1.0, crop_mode


# ---------------------------------------------------------------------------------------- entry point
def hooked_vit_from_open_clip(cls, model_or_name, *, pretrained=_REQUIRED, device=None, dtype=None,
                              **open_clip_kwargs):
    """``model_or_name``: an open_clip CLIP / CustomTextCLIP, its ``.visual``, or a model name (built-in,
    ``hf-hub:``, ``local-dir:``) created with ``open_clip.create_model_and_transforms(name, pretrained,
    **open_clip_kwargs)``; a built-in name needs ``pretrained=`` (tag, checkpoint path, or None for random
    weights). The port's output is ``encode_image(x)`` (``normalize=False``) ``[batch, embed_dim]``, or the
    pooled ``[batch, width]`` features of a tower without ``proj``; eval behaviour (no patch dropout).
    Cost: one copy of the tower's weights."""
    if isinstance(model_or_name, str):
        model = create_open_clip_model(model_or_name, pretrained=pretrained, **open_clip_kwargs)
    else:
        if pretrained is not _REQUIRED or open_clip_kwargs:
            raise ValueError(f"pretrained and open_clip kwargs ({sorted(open_clip_kwargs)}) apply to a model "
                             f"name, not to an instantiated model")
        model = model_or_name
    tower = vision_tower(model)
    from open_clip.timm_model import TimmModel

    if isinstance(tower, TimmModel):
        cfg, sd = _from_timm_tower(tower)
    else:
        cfg = config_from_open_clip(tower)
        sd = state_dict_from_open_clip(tower, cfg)
    if isinstance(model_or_name, str):
        cfg.model_name = model_or_name
    apply_open_clip_preprocess(cfg, tower)
    cfg.head_output = "embedding"  # encode_image: a CLIP embedding, never class logits
    param = next(tower.parameters())
    hooked = cls(cfg)
    hooked.load_state_dict(sd, strict=True)
    hooked.to(device=device or param.device, dtype=dtype or param.dtype)
    return hooked.eval()
