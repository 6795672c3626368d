"""Neutral target contexts ("blank images"), defined in pixel space and normalized like real inputs."""
from __future__ import annotations

from typing import Union
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens.patching import ContextCache, cache_context

Blank = Union[str, Tensor]
BLANKS = ("white", "black", "mean", "noisy", "blur_noisy")
NOISE_STD = 0.25  # pixel-space std of the noisy blanks, around the dataset mean colour
BLUR_SIGMA = 2.0  # pixels

_CONTEXTS: "WeakKeyDictionary[torch.nn.Module, dict]" = WeakKeyDictionary()


def blank_pixels(kind: Blank, image_size: tuple[int, int], mean: tuple[float, ...], seed: int = 0) -> Float[Tensor, "chan height width"]:
    """The blank image in ``[0, 1]`` pixel space. Noise is i.i.d. Gaussian around the dataset mean colour
    (seeded, clipped to [0, 1]); ``blur_noisy`` then applies a Gaussian blur."""
    h, w = image_size
    c = len(mean)
    if isinstance(kind, Tensor):
        pixels = kind[0] if kind.ndim == 4 and kind.shape[0] == 1 else kind
        if tuple(pixels.shape) != (c, h, w):
            raise ValueError(f"blank tensor must have shape [{c}, {h}, {w}] (pixels in [0, 1]); got {tuple(kind.shape)}")
        return pixels.float()
    if kind not in BLANKS:
        raise ValueError(f"blank must be one of {BLANKS} or a [chan, height, width] tensor; got {kind!r}")
    mean_t = torch.tensor(mean).view(c, 1, 1)
    if kind == "white":
        return torch.ones(c, h, w)
    if kind == "black":
        return torch.zeros(c, h, w)
    if kind == "mean":
        return mean_t.expand(c, h, w).clone()
    g = torch.Generator().manual_seed(seed)
    pixels = (mean_t + NOISE_STD * torch.randn(c, h, w, generator=g)).clamp(0, 1)
    if kind == "blur_noisy":
        from torchvision.transforms.functional import gaussian_blur

        size = 2 * int(3 * BLUR_SIGMA) + 1
        pixels = gaussian_blur(pixels[None], [size, size], [BLUR_SIGMA, BLUR_SIGMA])[0]
    return pixels


def normalize(model, pixels: Float[Tensor, "... chan height width"]) -> Float[Tensor, "... chan height width"]:
    """Apply the model's own mean/std normalization."""
    mean = torch.tensor(model.cfg.mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    std = torch.tensor(model.cfg.std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    return (pixels - mean) / std


def blank_image(model, kind: Blank = "white", seed: int = 0) -> Float[Tensor, "1 chan height width"]:
    """The normalized blank input ``[1, chan, height, width]`` on the model's device and dtype."""
    param = next(model.parameters())
    pixels = blank_pixels(kind, model.cfg.image_size, model.cfg.mean, seed)
    return normalize(model, pixels.to(param.device, param.dtype))[None]


def blank_context(model, kind: Blank = "white", seed: int = 0) -> ContextCache:
    """The cached target context of a blank: computed once per (model, blank, seed, device, dtype) and
    reused for every image (with queries, so the efficient engine can use it too). Tensor blanks are
    not cached."""
    param = next(model.parameters())
    if isinstance(kind, Tensor):
        return cache_context(model, blank_image(model, kind, seed), with_queries=True)
    key = (kind, seed, tuple(model.cfg.image_size), param.device, param.dtype)
    per_model = _CONTEXTS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = cache_context(model, blank_image(model, kind, seed), with_queries=True)
    return per_model[key]
