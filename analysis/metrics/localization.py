"""The paper's localization metrics (Sec. 4.1): AUPR1 / AUPR0 (scikit-learn's average precision) and the
Pointing Game (Quantus' tie rule), against an object mask. No forwards: cost is one upsampling per map."""
from __future__ import annotations

import logging

import numpy as np
from jaxtyping import Bool, Float
from sklearn.metrics import average_precision_score
from torch import Tensor

from analysis.metrics.curves import check_finite, to_pixels

log = logging.getLogger(__name__)


def _check_mask(attribution: Tensor, mask: Tensor, ignore: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """One image: a ``[h, w]`` map and ``[H, W]`` masks (a batch dimension would be read as rows)."""
    for name, value in (("attribution", attribution), ("mask", mask), ("ignore", ignore)):
        if value is None and name == "ignore":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [{'h, w' if name == 'attribution' else 'H, W'}]; got "
                            f"{type(value).__name__}")
        if value.ndim != 2:
            raise ValueError(f"{name} must be a 2-D [{'h, w' if name == 'attribution' else 'H, W'}] tensor for one "
                             f"image; got shape {tuple(value.shape)} (pass attribution[i], mask[i] per image)")
    if ignore is not None and ignore.shape != mask.shape:
        raise ValueError(f"ignore must have the mask's shape {tuple(mask.shape)}; got {tuple(ignore.shape)}")
    check_finite(attribution)
    a = to_pixels(attribution[None], tuple(mask.shape))[0].flatten().cpu().numpy()
    m = mask.flatten().cpu().numpy().astype(bool)
    if ignore is not None:
        keep = ~ignore.flatten().cpu().numpy().astype(bool)
        a, m = a[keep], m[keep]
    if m.all() or not m.any():
        raise ValueError("mask must contain both foreground and background pixels (outside ignored pixels)")
    return a, m


def aupr(attribution: Float[Tensor, "h w"], mask: Bool[Tensor, "H W"],
         ignore: Bool[Tensor, "H W"] | None = None) -> tuple[float, float]:
    """``(AUPR1, AUPR0)``: average precision of the min-max normalized map for the foreground, and of
    ``1 - map`` for the background (Sec. 4.1). ``ignore`` pixels (ImageNet-S 1000, Pet trimap borders)
    are left out."""
    a, m = _check_mask(attribution, mask, ignore)
    span = a.max() - a.min()
    a = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    return float(average_precision_score(m, a)), float(average_precision_score(~m, 1 - a))


def pointing_game(attribution: Float[Tensor, "h w"], mask: Bool[Tensor, "H W"],
                  ignore: Bool[Tensor, "H W"] | None = None) -> bool:
    """Whether a maximum of the (upsampled) map falls inside the foreground. Ties as Quantus'
    ``PointingGame``: a hit if ANY pixel attaining the maximum is foreground. A constant map points
    nowhere: a miss, with a warning. ``ignore`` pixels are left out."""
    a, m = _check_mask(attribution, mask, ignore)
    if a.max() == a.min():
        log.warning("pointing_game: constant attribution map, counted as a miss")
        return False
    return bool(m[a == a.max()].any())
