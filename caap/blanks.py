"""Neutral target contexts ("blank images"), defined in pixel space and normalized like real inputs."""
from __future__ import annotations

import itertools
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

CACHE_LIMIT_GB = 2.0  # bound on the blank contexts (and E-CAAP statistics) kept between calls
_CONTEXTS: "WeakKeyDictionary[torch.nn.Module, dict]" = WeakKeyDictionary()  # model -> key -> (fingerprint, ctx, last use)
_USE_COUNTER = itertools.count()


def check_blank_kind(kind) -> None:
    if not isinstance(kind, Tensor) and (not isinstance(kind, str) or kind not in BLANKS):
        raise ValueError(f"blank must be one of {BLANKS} or a [chan, height, width] tensor; got {kind!r}")


def blank_pixels(kind: Blank, image_size: tuple[int, int], mean: tuple[float, ...], seed: int = 0) -> Float[Tensor, "chan height width"]:
    """The blank image in ``[0, 1]`` pixel space. Noise is i.i.d. Gaussian around the dataset mean colour
    (seeded, clipped to [0, 1]); ``blur_noisy`` then applies a Gaussian blur."""
    h, w = image_size
    c = len(mean)
    if isinstance(kind, Tensor):
        pixels = kind[0] if kind.ndim == 4 and kind.shape[0] == 1 else kind
        if tuple(pixels.shape) != (c, h, w):
            raise ValueError(f"blank tensor must have shape [{c}, {h}, {w}] (pixels in [0, 1]); got {tuple(kind.shape)}")
        if not pixels.is_floating_point():
            raise TypeError(f"blank tensor must be floating point with pixels in [0, 1]; got dtype {pixels.dtype} "
                            f"(for uint8 pixels pass blank.float() / 255)")
        if not bool(torch.isfinite(pixels).all()):
            raise ValueError("blank tensor has NaN or Inf pixels; it must hold finite pixels in [0, 1]")
        if float(pixels.min()) < 0 or float(pixels.max()) > 1:
            raise ValueError(f"blank tensor pixels must lie in [0, 1] (pixel space, before normalization); got "
                             f"range [{float(pixels.min()):.3g}, {float(pixels.max()):.3g}]")
        return pixels.float()
    check_blank_kind(kind)
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


def state_fingerprint(model) -> tuple:
    """Identity of everything a cached context depends on: each parameter's and buffer's storage, version
    counter (bumped by in-place edits, ``load_state_dict``, optimizer steps), dtype and device, and the
    handles of the hooks registered on the model. Edits through ``tensor.data`` bypass version counters:
    call :func:`clear_cache` after those."""
    tensors = tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
                    for t in (*model.parameters(), *model.buffers()))
    hooks = tuple((name, tuple(point._forward_hooks)) for name, point in model.hook_dict.items()
                  if point._forward_hooks)
    return tensors, hooks


def context_nbytes(context: ContextCache) -> int:
    """Bytes held by a context, including statistics engines derived from it (E-CAAP)."""
    def nbytes(obj) -> int:
        if isinstance(obj, Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, (tuple, list)):
            return sum(nbytes(o) for o in obj)
        if isinstance(obj, dict):
            return sum(nbytes(o) for o in obj.values())
        return 0
    return nbytes([context.resid_pre, context.k, context.v, context.q, context.derived])


def cache_info() -> dict:
    """``{"entries": n, "bytes": total, "limit_bytes": limit}`` of the blank-context cache."""
    entries = [entry for per_model in _CONTEXTS.values() for entry in per_model.values()]
    return {"entries": len(entries), "bytes": sum(context_nbytes(ctx) for _, ctx, _ in entries),
            "limit_bytes": int(CACHE_LIMIT_GB * 2**30)}


def clear_cache(model=None) -> None:
    """Drop the cached blank contexts (and their E-CAAP statistics) of ``model``, or of every model."""
    if model is None:
        _CONTEXTS.clear()
    else:
        _CONTEXTS.pop(model, None)


def _evict_beyond_limit(keep: ContextCache) -> None:
    """Drop least recently used contexts until the cache fits ``CACHE_LIMIT_GB`` (``keep`` stays)."""
    entries = sorted(((used, per_model, key) for per_model in _CONTEXTS.values()
                      for key, (_, _, used) in per_model.items()), key=lambda e: e[0])
    total = cache_info()["bytes"]
    for _, per_model, key in entries:
        if total <= CACHE_LIMIT_GB * 2**30:
            break
        if per_model[key][1] is not keep:
            total -= context_nbytes(per_model.pop(key)[1])


def blank_context(model, kind: Blank = "white", seed: int = 0) -> ContextCache:
    """The target context of a blank, cached per (model, blank, seed, image size, device, dtype) and
    recomputed whenever the model's weights or hooks change (:func:`state_fingerprint`); with queries, so
    the efficient engine can derive its statistics from it. The cache holds at most ``CACHE_LIMIT_GB``
    (least recently used contexts are dropped first); :func:`clear_cache` empties it. Tensor blanks are
    not cached."""
    check_blank_kind(kind)
    if isinstance(kind, Tensor):
        return cache_context(model, blank_image(model, kind, seed), with_queries=True)
    param = next(model.parameters())
    key = (kind, seed, tuple(model.cfg.image_size), param.device, param.dtype)
    per_model = _CONTEXTS.setdefault(model, {})
    fingerprint = state_fingerprint(model)
    entry = per_model.get(key)
    if entry is None or entry[0] != fingerprint:
        per_model.pop(key, None)
        entry = (fingerprint, cache_context(model, blank_image(model, kind, seed), with_queries=True), 0)
    per_model[key] = (entry[0], entry[1], next(_USE_COUNTER))
    _evict_beyond_limit(keep=entry[1])
    return entry[1]
