"""Random Logit (Sixt et al. 2020, "When Explanations Lie"; Quantus ``RandomLogit``, v0.6).

As Quantus: the map of the explained class and the map of a random other class are each divided by their
maximum absolute value (``normalise_by_max``; an all-zero map is left as is), flattened, and compared by
SSIM (scikit-image ``structural_similarity`` on the 1-D vectors, default window 7, ``data_range`` = max −
min over both). Lower = the map depends more on the class (better). The other class is drawn as Quantus
does (``np.random.seed(seed); randint(0, C − 1)`` indexing the classes without the target), with the seed
made per image from ``caap bench --seed`` and the image name, so ranks and resumed runs draw the same class
(Quantus reuses one seed for every batch). Maps are compared at image resolution (bilinear), the resolution
Quantus' ``a_batch`` has. Cost: one more explanation per map (the method's own cost).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from analysis.metrics.curves import to_pixels
from analysis.metrics.registry import Context, Metric


def off_class(target: int, n_classes: int, seed: int) -> int:
    """Quantus' off-label draw for one image."""
    if n_classes < 2:
        raise ValueError(f"random-logit needs a classifier with >= 2 classes; got {n_classes}")
    others = [c for c in range(n_classes) if c != target]
    return others[int(np.random.RandomState(seed).randint(0, n_classes - 1, 1)[0])]


def image_seed(seed: int, sample: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(sample.encode())) % 2**32


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Quantus' ``ssim`` of max-abs normalized flattened maps."""
    from skimage.metrics import structural_similarity

    a, b = (x.reshape(-1).astype(np.float64) for x in (a, b))
    a, b = (x / np.abs(x).max() if np.any(x != 0) else x for x in (a, b))
    both = np.concatenate([a, b])
    return float(structural_similarity(a, b, data_range=float(abs(both.max() - both.min()))))


def score(ctx: Context, names, maps) -> list[dict]:
    size = tuple(ctx.image.shape[-2:])
    other = off_class(ctx.target, ctx.model.cfg.num_classes, image_seed(ctx.seed, ctx.sample))
    rows = []
    for name, m in zip(names, maps):
        off = ctx.explain[name](ctx.image, torch.tensor([other], device=ctx.image.device)).float()
        a, b = (to_pixels(x.cpu(), size)[0].numpy() for x in (m, off))
        rows.append({"random_logit": similarity(a, b), "off_class": other})
    return rows


def metric() -> Metric:
    return Metric("random-logit", {"random_logit": "RandomLogit ↓"}, frozenset({"random_logit"}), score=score,
                  settings={"similarity": "skimage SSIM of max-abs normalized flattened maps",
                            "off_class": "Quantus draw, seed per image", "resolution": "image (bilinear)"})
