"""A CNN classifier seen as ``stem -> blocks[0..L-1] -> head``, with the patch-grid interface of HookedViT.

CAAP for CNNs (:mod:`caap.cnn`) patches the *inputs* of the blocks (``h^b``, the analogue of a ViT's
``blocks.{b}.hook_resid_pre``), and the input-level baselines only need ``cfg``/``layout``/``check_images``.
:class:`CNNClassifier` gives both for ResNet, DenseNet and VGG (timm or torchvision); any other network
gets ``UnsupportedModelError`` unless you pass ``stem``/``blocks``/``head`` yourself.

The decompositions put the input of the last default-patched block at stride 16 for all four paper CNNs
(ResNet ``layer3`` output, DenseNet ``denseblock3`` output, VGG ``conv4_3`` pooled), i.e. one cell per
16-px patch at the default ``patch_size=16``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from vit_lens.loading import UnsupportedModelError
from vit_lens.validation import check_finite
from vit_lens.tokens import TokenLayout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CNNConfig:
    """What CAAP, the baselines and the blanks read off a model (the subset of ``ViTConfig`` they use)."""

    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    num_classes: int
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    model_name: str = ""
    n_prefix_tokens: int = 0  # no CLS/register tokens: TokenLayout indices are plain patch indices
    n_layers: int = 0  # number of blocks L

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def n_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def data_config(self) -> dict:
        return {"input_size": (self.in_chans, *self.image_size), "interpolation": self.interpolation,
                "mean": tuple(self.mean), "std": tuple(self.std), "crop_pct": self.crop_pct,
                "crop_mode": self.crop_mode}


def _pair(x: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (x, x) if isinstance(x, int) else tuple(x)
    if len(pair) != 2 or any(not isinstance(v, int) or v <= 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width); got {x!r}")
    return pair


def _split_sequential(features: nn.Sequential, cuts: Sequence[int]) -> tuple[nn.Module, list[nn.Module]]:
    """``features[:cuts[0]]`` is the stem; block i is ``features[cuts[i]:cuts[i+1]]`` (the last runs to the end)."""
    bounds = list(cuts) + [len(features)]
    return features[:cuts[0]], [features[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def decompose(model: nn.Module) -> tuple[nn.Module, list[nn.Module], Callable[[Tensor], Tensor], str]:
    """``(stem, blocks, head, family)`` such that ``model(x) == head(blocks[-1](...blocks[0](stem(x))))``.

    Supported: timm/torchvision ResNet (blocks ``layer1..4``), DenseNet (block i = ``transition{i-1}`` +
    ``denseblock{i}``; ``norm5`` closes the last), VGG (blocks end at each max-pool after the first)."""
    kind = type(model).__name__
    module = type(model).__module__
    timm_model = module.startswith("timm.")
    if kind == "ResNet" and hasattr(model, "layer4"):
        act = model.act1 if timm_model else model.relu
        stem = nn.Sequential(model.conv1, model.bn1, act, model.maxpool)
        blocks = [model.layer1, model.layer2, model.layer3, model.layer4]
        head = model.forward_head if timm_model else (lambda x: model.fc(torch.flatten(model.avgpool(x), 1)))
        return stem, blocks, head, "resnet"
    if kind == "DenseNet" and hasattr(model, "features"):
        names = [n for n, _ in model.features.named_children()]
        if not all(f"denseblock{i}" in names for i in range(1, 5)) or names[-1] != "norm5":
            raise UnsupportedModelError(f"unsupported DenseNet layout {names} (expected denseblock1..4, norm5)")
        starts = [names.index("denseblock1")] + [names.index(f"transition{i}") for i in (1, 2, 3)]
        stem, blocks = _split_sequential(model.features, starts)
        if timm_model:
            head = model.forward_head
        else:
            head = lambda x: model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(x), 1), 1))  # noqa: E731
        return stem, blocks, head, "densenet"
    if kind == "VGG" and hasattr(model, "features"):
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        if len(pools) != 5 or pools[-1] != len(model.features) - 1:
            raise UnsupportedModelError(f"unsupported VGG layout with max-pools at {pools} (expected 5, the last "
                                        f"closing features)")
        stem, blocks = _split_sequential(model.features, [p + 1 for p in pools[:4]])
        if timm_model:
            head = model.forward_head  # timm's VGG head starts with pre_logits (fc6/fc7 as convs)
        else:
            head = lambda x: model.classifier(torch.flatten(model.avgpool(x), 1))  # noqa: E731
        return stem, blocks, head, "vgg"
    raise UnsupportedModelError(
        f"unsupported CNN {module}.{kind}: CAAP for CNNs knows timm/torchvision ResNet, DenseNet and VGG; for "
        f"another network pass stem=, blocks= and head= to CNNClassifier")


class CNNClassifier(nn.Module):
    """Wrap a CNN classifier: ``forward`` is the CNN's own; ``block_inputs`` / ``run_from`` expose ``h^b``.

    ``image_size`` (default: the timm ``input_size``, else 224), ``patch_size`` (default 16, the ViT-B/16
    grid) and ``mean``/``std`` (default: the timm pretrained cfg, else ImageNet's) define the patch grid
    and the blanks. Images must be ``image_size`` (one blank context per model is cached).
    """

    def __init__(self, model: nn.Module, *, image_size: int | Sequence[int] | None = None,
                 patch_size: int | Sequence[int] = 16, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, stem: nn.Module | None = None,
                 blocks: Sequence[nn.Module] | None = None, head: Callable[[Tensor], Tensor] | None = None,
                 check: bool = True):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module CNN; got {type(model).__name__}")
        if isinstance(model, CNNClassifier):
            raise TypeError("model is already a CNNClassifier")
        self.model = model.eval()
        given = (stem is not None, blocks is not None, head is not None)
        if any(given) and not all(given):
            raise ValueError("pass all of stem=, blocks= and head= (or none, to detect ResNet/DenseNet/VGG)")
        if all(given):
            self.stem, self._blocks, self._head, family = stem, list(blocks), head, "custom"
        else:
            self.stem, self._blocks, self._head, family = decompose(model)
        if len(self._blocks) < 1:
            raise ValueError("blocks must hold at least one module")
        data = _data_config(model)
        size = _pair(image_size if image_size is not None else tuple(data.get("input_size", (3, 224, 224))[1:]),
                     "image_size")
        patch = _pair(patch_size, "patch_size")
        if size[0] % patch[0] or size[1] % patch[1]:
            raise ValueError(f"image_size {size} must be a multiple of patch_size {patch}")
        in_chans = _in_chans(model)
        mean = tuple(mean if mean is not None else data.get("mean", IMAGENET_MEAN))
        std = tuple(std if std is not None else data.get("std", IMAGENET_STD))
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean and std must have {in_chans} values (one per input channel); got {mean}, {std}")
        self.family = family
        self.cfg = CNNConfig(image_size=size, patch_size=patch, num_classes=_num_classes(model), in_chans=in_chans,
                             mean=mean, std=std, interpolation=data.get("interpolation", "bilinear"),
                             crop_pct=data.get("crop_pct", 0.875), crop_mode=data.get("crop_mode", "center"),
                             model_name=getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__),
                             n_layers=len(self._blocks))
        self.layout = TokenLayout(self.cfg)
        if check:
            self._check_decomposition()

    # ------------------------------------------------------------------ interface shared with HookedViT
    @cached_property
    def transform(self) -> Callable:
        from timm.data import create_transform

        return create_transform(**self.cfg.data_config, is_training=False)

    def check_images(self, images: Any, name: str = "images") -> None:
        cfg = self.cfg
        shape = f"[batch, {cfg.in_chans}, {cfg.image_size[0]}, {cfg.image_size[1]}]"
        if not isinstance(images, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {shape}; got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != cfg.in_chans or tuple(images.shape[2:]) != cfg.image_size:
            raise ValueError(f"{name} must have shape {shape} (image_size={cfg.image_size}); got "
                             f"{tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (normalized pixels); got dtype {images.dtype}. "
                            f"Use model.transform or convert with .float().")
        dtype = next(self.model.parameters()).dtype
        if images.dtype != dtype:
            raise TypeError(f"{name} has dtype {images.dtype} but the model runs in {dtype}; convert with .to({dtype})")
        check_finite(images, name)  # NaN/inf pixels would turn every score and map into NaN silently

    def forward(self, images: Float[Tensor, "batch chan height width"]) -> Float[Tensor, "batch n_out"]:
        return self.model(images)

    # ------------------------------------------------------------------ stages
    @property
    def blocks(self) -> list[nn.Module]:
        return self._blocks

    def block_inputs(self, images: Float[Tensor, "batch chan height width"], upto: int | None = None) -> list[Tensor]:
        """``[h^0, ..., h^upto]``: the input of every block up to ``upto`` (default all), each ``[batch, C_b, h_b, w_b]``."""
        upto = len(self._blocks) - 1 if upto is None else upto
        x = self.stem(images)
        out = [x]
        for block in self._blocks[:upto]:
            x = block(x)
            out.append(x)
        return [h.clone() for h in out]  # later blocks may work in place on what they are given

    def run_from(self, h: Float[Tensor, "batch C h w"], start: int,
                 edit: Callable[[int, Tensor], Tensor] | None = None) -> Float[Tensor, "batch n_out"]:
        """Run blocks ``start..L-1`` and the head on ``h = h^start``; ``edit(b, h^b)`` may replace each later
        block input ``h^b`` (b > start)."""
        for b in range(start, len(self._blocks)):
            if edit is not None and b > start:
                h = edit(b, h)
            h = self._blocks[b](h)
        return self._head(h)

    def _check_decomposition(self) -> None:
        """One forward on a random image: the stem/blocks/head split must reproduce ``model(x)``."""
        param = next(self.model.parameters())
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, self.cfg.in_chans, *self.cfg.image_size, generator=g).to(param.device, param.dtype)
        with torch.inference_mode():
            ref = self.model(x)
            got = self.run_from(self.stem(x), 0)
        if ref.shape != got.shape or not torch.allclose(ref, got, rtol=1e-4, atol=1e-4 * float(ref.abs().max()) + 1e-6):
            raise UnsupportedModelError(
                f"the stem/blocks/head split of {type(self.model).__name__} does not reproduce its forward "
                f"(max |diff| {float((ref - got).abs().max()) if ref.shape == got.shape else 'shape'}); pass "
                f"stem=, blocks=, head= explicitly")


def _data_config(model: nn.Module) -> dict:
    if getattr(model, "pretrained_cfg", None):
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=model)
    return {}


def _in_chans(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise UnsupportedModelError(f"{type(model).__name__} has no Conv2d: not a CNN")


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else 0


def as_cnn_classifier(model: nn.Module | CNNClassifier, **kwargs: Any) -> CNNClassifier:
    """``model`` itself if already wrapped (kwargs must then be empty), else ``CNNClassifier(model, **kwargs)``."""
    if isinstance(model, CNNClassifier):
        if kwargs:
            raise ValueError(f"{sorted(kwargs)} apply when wrapping a raw CNN, not to a CNNClassifier")
        return model
    return CNNClassifier(model, **kwargs)
