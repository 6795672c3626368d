"""Every backbone of the CAAP paper, by name: how to build it with an ImageNet-1k head.

``load_paper_model("paper:dinov2-l14")`` returns a :class:`~vit_lens.HookedViT` for the transformers and the
plain timm CNN (a ``torch.nn.Module``) for the four CNNs (wrap it with ``caap.cnn_model.CNNClassifier`` for
CAAP/baselines; ``vit_lens`` does not depend on ``caap``). Weights come from the network only when used
(``pretrained=True``); ``checkpoint_path=`` / ``head_path=`` take local files instead.

Choices where the paper names a model but not a checkpoint (documented defaults; pass ``timm_name=`` to use
another tag of the same architecture):

* ViT-S/B/L/16 [Steiner et al.]: timm ``augreg_in21k_ft_in1k`` (the "How to train your ViT" checkpoints).
* DeiT3 [Touvron et al.]: timm ``fb_in1k`` (the DeiT III ImageNet-1k recipe).
* CLIP: the image tower fine-tuned on ImageNet-1k by timm (``openai_ft_in1k`` for B/16 and L/14; OpenAI
  released no H/14, so H/14 is LAION-2B ``laion2b_ft_in1k``). A zero-shot head would need CLIP's text tower,
  which this library does not carry; use ``score=`` with a text embedding for that.
* DINOv2 S/B/L/G/14 [Oquab et al.]: timm's ``lvd142m`` backbone at 224 px (timm resamples the 37x37 position
  embedding to 16x16 once at load, bicubic with antialiasing; the official hub interpolates at run time,
  bicubic without antialiasing and a 0.1 offset, so logits differ slightly from ``torch.hub`` ones) plus the **official linear classifier** (CLS ⊕ mean of patch
  tokens; ``head_layers=4`` (default, as the official hub) concatenates the CLS tokens of the last four
  blocks), preprocessing as the official linear evaluation (resize 256, centre crop 224, bicubic).
* CNNs: timm's ``tv_in1k`` tags, i.e. the torchvision weights.

``source="hf"`` (DINOv2 only) loads Meta's own HuggingFace checkpoints ``facebook/dinov2-<size>-imagenet1k-1-layer``
(backbone + the official one-layer linear head) through :meth:`HookedViT.from_hf`: transformers interpolates the
37x37 position embedding as the official hub does (bicubic, no antialiasing), so these logits follow ``torch.hub``
more closely than timm's resampled embedding. Only the one-layer head exists there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import torch
from torch import nn

from vit_lens.loading import UnsupportedModelError

PREFIX = "paper:"
DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
DINOV2_DATA = {"interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
               "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@dataclass(frozen=True)
class PaperModel:
    """One backbone of the paper: ``kind`` is ``"vit"`` (a HookedViT) or ``"cnn"`` (a plain timm module)."""

    key: str
    paper_name: str
    timm_name: str
    head: str  # where the ImageNet-1k classifier comes from
    kind: str = "vit"
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict)  # overrides of timm's pretrained cfg
    dinov2_arch: str | None = None  # "vits14", ... for the official DINOv2 linear heads
    hf_name: str | None = None  # Meta's transformers checkpoint with the 1-layer head (source="hf")

    @property
    def preprocessing(self) -> str:
        from timm.models import get_pretrained_cfg

        cfg = {**get_pretrained_cfg(self.timm_name).to_dict(), **self.data_config}
        size = self.create_kwargs.get("img_size", cfg["input_size"][-1])
        return (f"{size}px, {cfg['interpolation']}, crop_pct {cfg['crop_pct']}, mean {tuple(cfg['mean'])}, "
                f"std {tuple(cfg['std'])}")


def _vit(key, paper, timm_name):
    return PaperModel(key, paper, timm_name, head="timm checkpoint (ImageNet-1k fine-tuned)")


def _dinov2(key, paper, size):
    return PaperModel(key, paper, f"vit_{size}_patch14_dinov2.lvd142m",
                      head="official DINOv2 linear classifier (CLS ⊕ mean patch tokens)",
                      create_kwargs={"img_size": 224}, data_config=DINOV2_DATA, dinov2_arch=f"vit{size[0]}14",
                      hf_name=f"facebook/dinov2-{size}-imagenet1k-1-layer")


def _cnn(key, paper, timm_name):
    return PaperModel(key, paper, timm_name, head="timm checkpoint (torchvision weights)", kind="cnn")


PAPER_MODELS: dict[str, PaperModel] = {m.key: m for m in [
    _vit("vit-s16", "ViT-S/16", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
    _vit("vit-b16", "ViT-B/16", "vit_base_patch16_224.augreg_in21k_ft_in1k"),
    _vit("vit-l16", "ViT-L/16", "vit_large_patch16_224.augreg_in21k_ft_in1k"),
    _vit("deit3-s16", "DeiT3-S/16", "deit3_small_patch16_224.fb_in1k"),
    _vit("deit3-b16", "DeiT3-B/16", "deit3_base_patch16_224.fb_in1k"),
    _vit("deit3-l16", "DeiT3-L/16", "deit3_large_patch16_224.fb_in1k"),
    _vit("deit3-h14", "DeiT3-H/14", "deit3_huge_patch14_224.fb_in1k"),
    _vit("clip-b16", "CLIP-B/16", "vit_base_patch16_clip_224.openai_ft_in1k"),
    _vit("clip-l14", "CLIP-L/14", "vit_large_patch14_clip_224.openai_ft_in1k"),
    _vit("clip-h14", "CLIP-H/14", "vit_huge_patch14_clip_224.laion2b_ft_in1k"),
    _dinov2("dinov2-s14", "DINOv2-S/14", "small"),
    _dinov2("dinov2-b14", "DINOv2-B/14", "base"),
    _dinov2("dinov2-l14", "DINOv2-L/14", "large"),
    _dinov2("dinov2-g14", "DINOv2-G/14", "giant"),
    _cnn("resnet18", "ResNet-18", "resnet18.tv_in1k"),
    _cnn("resnet50", "ResNet-50", "resnet50.tv_in1k"),
    _cnn("densenet161", "DenseNet-161", "densenet161.tv_in1k"),
    _cnn("vgg16", "VGG-16", "vgg16.tv_in1k"),
]}


def list_paper_models() -> list[str]:
    """``["paper:vit-s16", ...]``: every backbone of the paper, in the table's order."""
    return [PREFIX + key for key in PAPER_MODELS]


def is_paper_model(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def get_paper_model(name: str) -> PaperModel:
    """The table entry for ``"paper:<key>"`` (or the bare key)."""
    key = name[len(PREFIX):] if is_paper_model(name) else name
    if key not in PAPER_MODELS:
        raise ValueError(f"unknown paper model {name!r}; known: {', '.join(list_paper_models())}")
    return PAPER_MODELS[key]


# ---------------------------------------------------------------------------------------- DINOv2 heads
def dinov2_head_url(arch: str, layers: int = 4, n_register_tokens: int = 0) -> str:
    """Official URL of a DINOv2 ImageNet-1k linear head (``dinov2/hub/classifiers.py``): e.g.
    ``.../dinov2_vitl14/dinov2_vitl14_linear4_head.pth`` (``layers=4``) or ``..._linear_head.pth`` (1)."""
    _check_head_layers(layers)
    base = f"dinov2_{arch}"
    full = base + (f"_reg{n_register_tokens}" if n_register_tokens else "")
    return f"{DINOV2_BASE_URL}/{base}/{full}_linear{'4' if layers == 4 else ''}_head.pth"


def _check_head_layers(layers: int) -> None:
    if layers not in (1, 4):
        raise ValueError(f"head_layers must be 1 or 4 (the official DINOv2 linear heads); got {layers!r}")


def read_dinov2_head(path_or_url: str | PathLike, d_model: int, layers: int) -> dict[str, torch.Tensor]:
    """Read an official head checkpoint (``{"weight": [1000, (1+layers)*d_model], "bias": [1000]}``) from a
    local file (safetensors or ``torch.load(weights_only=True)``) or from its URL (``torch.hub`` cache)."""
    _check_head_layers(layers)
    source = str(path_or_url)
    if source.startswith(("http://", "https://")):
        state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
    else:
        from vit_lens.loading import read_state_dict

        state = read_state_dict(path_or_url)
    if set(state) != {"weight", "bias"}:
        raise ValueError(f"DINOv2 linear head {source!r} must hold exactly 'weight' and 'bias'; got {sorted(state)}")
    d_in = (1 + layers) * d_model
    if state["weight"].ndim != 2 or state["weight"].shape[1] != d_in or state["bias"].shape != state["weight"].shape[:1]:
        raise ValueError(f"DINOv2 linear head {source!r}: weight {tuple(state['weight'].shape)} / bias "
                         f"{tuple(state['bias'].shape)} do not fit head_layers={layers} on d_model={d_model} "
                         f"(expected weight [n_classes, {d_in}])")
    return {k: v.float() for k, v in state.items()}


def attach_dinov2_head(model, state: dict[str, torch.Tensor], layers: int):
    """Give a headless DINOv2 HookedViT the official linear classifier: ``pooling="cls_mean"`` reading the
    final-norm CLS tokens of the last ``layers`` blocks and the mean of the last block's patch tokens."""
    set_head = getattr(model, "set_cls_mean_head", None)
    if set_head is None:
        raise UnsupportedModelError("unsupported head: the DINOv2 linear classifier (CLS ⊕ mean patch tokens) "
                                    "needs HookedViT pooling='cls_mean', not available in this version")
    set_head(state["weight"], state["bias"], n_last_blocks=layers)
    return model


# ---------------------------------------------------------------------------------------- loading
def _load_hf(entry: PaperModel, hf_name, head_layers, checkpoint_path, head_path, pretrained, create_kwargs,
             device, dtype):
    """A DINOv2 paper model from Meta's transformers checkpoint (one-layer head), at 224 px with the official
    linear-evaluation preprocessing."""
    given = [k for k, v in (("checkpoint_path", checkpoint_path), ("head_path", head_path),
                            ("create_kwargs", create_kwargs)) if v]
    if entry.hf_name is None:
        raise ValueError(f"source='hf' exists for the DINOv2 paper models only; {entry.paper_name} loads from timm")
    if given or not pretrained or head_layers != 1:
        raise ValueError(f"source='hf' loads {entry.hf_name} as published (pretrained, one-layer head): pass "
                         f"head_layers=1 and none of checkpoint_path/head_path/timm kwargs (got "
                         f"head_layers={head_layers}, pretrained={pretrained}{', ' if given else ''}{', '.join(given)})")
    from vit_lens.hooked_vit import HookedViT

    model = HookedViT.from_hf(str(hf_name or entry.hf_name), image_size=224, device=device, dtype=dtype)
    for key in ("interpolation", "crop_pct", "crop_mode", "mean", "std"):
        setattr(model.cfg, key, entry.data_config[key])
    model.__dict__.pop("transform", None)  # a cached transform would keep the processor's settings
    return model


def load_paper_model(name: str, *, pretrained: bool = True, checkpoint_path: str | PathLike | None = None,
                     head_path: str | PathLike | None = None, head_layers: int = 4, timm_name: str | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                     source: str = "timm", hf_name: str | PathLike | None = None, **create_kwargs: Any):
    """Build a paper backbone with its ImageNet-1k head (``name``: ``"paper:dinov2-l14"`` or ``"dinov2-l14"``).

    ``pretrained=False`` builds random weights (no network); ``checkpoint_path`` loads a local timm state dict;
    for DINOv2 ``head_path`` is a local official head file (default: its official URL when ``pretrained``, a
    random head otherwise) and ``head_layers`` picks the one- or four-layer head. ``create_kwargs`` go to
    ``timm.create_model`` (e.g. ``depth=2`` for tests). Returns a HookedViT, or the timm CNN for CNNs.
    ``source="hf"`` (DINOv2): Meta's transformers checkpoint ``entry.hf_name`` (or ``hf_name``, e.g. a local
    ``save_pretrained`` copy) at 224 px with its one-layer head, through :meth:`HookedViT.from_hf`.
    """
    entry = get_paper_model(name)
    if source not in ("timm", "hf"):
        raise ValueError(f"source must be 'timm' or 'hf'; got {source!r}")
    if source == "hf":
        return _load_hf(entry, hf_name, head_layers, checkpoint_path, head_path, pretrained, create_kwargs,
                        device, dtype)
    timm_name = timm_name or entry.timm_name
    kwargs = {**entry.create_kwargs, **create_kwargs}
    if entry.kind == "cnn":
        from vit_lens.loading import create_timm_model

        model = create_timm_model(timm_name, pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)
        param = next(model.parameters())
        return model.to(device=device or param.device, dtype=dtype or param.dtype).eval()
    from vit_lens.hooked_vit import HookedViT

    if entry.dinov2_arch is None:
        return HookedViT.from_timm(timm_name, pretrained=pretrained, checkpoint_path=checkpoint_path,
                                   device=device, dtype=dtype, data_config=entry.data_config or None, **kwargs)
    _check_head_layers(head_layers)
    kwargs.setdefault("num_classes", 0)
    if kwargs["num_classes"] != 0:
        raise ValueError("DINOv2 paper models take the official linear head; leave num_classes unset")
    model = HookedViT.from_timm(timm_name, pretrained=pretrained, checkpoint_path=checkpoint_path, device=device,
                                dtype=dtype, data_config=entry.data_config, **kwargs)
    if head_path is None and pretrained:
        head_path = dinov2_head_url(entry.dinov2_arch, head_layers, model.cfg.n_register_tokens)
    d = model.cfg.d_model
    if head_path is not None:
        state = read_dinov2_head(head_path, d, head_layers)
    else:  # random head (pretrained=False): same shapes as the official one
        linear = nn.Linear((1 + head_layers) * d, 1000)
        state = {"weight": linear.weight.detach(), "bias": linear.bias.detach()}
    param = next(model.parameters())
    state = {k: v.to(param.device, param.dtype) for k, v in state.items()}
    return attach_dinov2_head(model, state, head_layers)
