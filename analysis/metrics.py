"""The paper's attribution metrics (Sec. 4.1): Deletion / Insertion AUC, AUPR1, AUPR0 and the Pointing Game.

Attribution maps may be patch-level or pixel-level: they are upsampled (bilinear) to the image size.
Faithfulness curves track the softmax probability of the target class, as in RISE (Petsiuk et al.).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from sklearn.metrics import average_precision_score
from torch import Tensor


def to_pixels(attribution: Float[Tensor, "batch h w"], image_size: tuple[int, int]) -> Float[Tensor, "batch H W"]:
    if tuple(attribution.shape[-2:]) == tuple(image_size):
        return attribution.float()
    return F.interpolate(attribution[:, None].float(), size=tuple(image_size), mode="bilinear",
                         align_corners=False)[:, 0]


def blur(images: Float[Tensor, "batch chan H W"], sigma: float = 10.0) -> Float[Tensor, "batch chan H W"]:
    """Heavy Gaussian blur: the Insertion start image."""
    from torchvision.transforms.functional import gaussian_blur

    size = 2 * int(3 * sigma) + 1
    return gaussian_blur(images, [size, size], [sigma, sigma])


@torch.inference_mode()
def perturbation_curves(model, images: Float[Tensor, "batch chan H W"], attributions: Float[Tensor, "batch h w"],
                        target: Int[Tensor, "batch"], *, mode: str = "deletion", n_steps: int = 32,
                        reference: Float[Tensor, "batch chan H W"] | None = None,
                        batch_size: int = 32) -> Float[Tensor, "batch steps"]:
    """Target-class probability as the top-ranked pixels are removed (``"deletion"``: replaced by
    ``reference``, default 0 = the dataset mean colour after normalization) or revealed (``"insertion"``:
    starting from ``reference``, default a blurred copy). Returns ``[batch, n_steps + 1]`` at fractions
    ``0, 1/n_steps, ..., 1``."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1; got {n_steps}")
    b, c, h, w = images.shape
    if attributions.shape[0] != b:
        raise ValueError(f"attributions batch {attributions.shape[0]} != images batch {b}")
    if reference is None:
        reference = torch.zeros_like(images) if mode == "deletion" else blur(images)
    start, end = (images, reference) if mode == "deletion" else (reference, images)
    order = to_pixels(attributions, (h, w)).flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1))
    counts = torch.round(torch.linspace(0, h * w, n_steps + 1)).long()
    curves = torch.empty(b, n_steps + 1)
    for i in range(b):
        # step s switches the pixels of rank < counts[s] from start to end
        switched = (rank[i][None] < counts[:, None].to(rank.device)).view(-1, 1, h, w).to(images.dtype)
        probs = []
        for lo in range(0, n_steps + 1, batch_size):
            m = switched[lo:lo + batch_size]
            x = start[i][None] * (1 - m) + end[i][None] * m
            probs.append(model(x).softmax(-1)[:, target[i]])
        curves[i] = torch.cat(probs).cpu()
    return curves


def auc(curves: Float[Tensor, "batch steps"]) -> Float[Tensor, "batch"]:
    """Trapezoidal area under curves sampled at evenly spaced fractions of [0, 1]."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def _check_mask(attribution: Tensor, mask: Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = to_pixels(attribution[None], tuple(mask.shape))[0].flatten().cpu().numpy()
    m = mask.flatten().cpu().numpy().astype(bool)
    if m.all() or not m.any():
        raise ValueError("mask must contain both foreground and background pixels")
    return a, m


def aupr(attribution: Float[Tensor, "h w"], mask: Bool[Tensor, "H W"]) -> tuple[float, float]:
    """``(AUPR1, AUPR0)``: average precision of the min-max normalized map for the foreground, and of
    ``1 - map`` for the background (Sec. 4.1)."""
    a, m = _check_mask(attribution, mask)
    span = a.max() - a.min()
    a = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    return float(average_precision_score(m, a)), float(average_precision_score(~m, 1 - a))


def pointing_game(attribution: Float[Tensor, "h w"], mask: Bool[Tensor, "H W"]) -> bool:
    """Whether the maximum of the (upsampled) map falls inside the foreground."""
    a, m = _check_mask(attribution, mask)
    return bool(m[int(np.argmax(a))])
