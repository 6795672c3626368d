"""Matplotlib overlays of attribution maps on images, and side-by-side grids of methods."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


def to_display(model, images: Float[Tensor, "batch chan height width"]) -> np.ndarray:
    """Undo the model's normalization: ``[batch, height, width, chan]`` floats in [0, 1]."""
    mean = torch.tensor(model.cfg.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(model.cfg.std, device=images.device).view(1, -1, 1, 1)
    pixels = (images.detach().float() * std + mean).clamp(0, 1)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _normalize_map(attribution: Tensor) -> np.ndarray:
    a = attribution.detach().float().cpu().numpy()
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def overlay(image: np.ndarray, attribution: Float[Tensor, "h w"], ax=None, *, alpha: float = 0.5,
            cmap: str = "jet", title: str | None = None):
    """Draw ``attribution`` (any resolution; min-max normalized, stretched over the image) on
    ``image`` (``[height, width, chan]`` in [0, 1]). Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    h, w = image.shape[:2]
    ax.imshow(image)
    ax.imshow(_normalize_map(attribution), cmap=cmap, alpha=alpha, extent=(0, w, h, 0),
              interpolation="bilinear")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def compare(images: np.ndarray, maps: Mapping[str, Float[Tensor, "batch h w"]], *,
            row_titles: Sequence[str] | None = None, size: float = 2.5, **overlay_kwargs):
    """A grid with one row per image: the image, then one overlay per method. Returns the figure."""
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(images), len(maps) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
    for r in range(n_rows):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_axis_off()
        axes[r, 0].set_title(row_titles[r] if row_titles else "image", fontsize=9)
        for c, (name, m) in enumerate(maps.items(), start=1):
            overlay(images[r], m[r], axes[r, c], title=name if r == 0 else None, **overlay_kwargs)
    fig.tight_layout()
    return fig
