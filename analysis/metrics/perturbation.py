"""Chefer et al.'s positive and negative perturbation (CVPR 2021, Transformer-Explainability,
``baselines/ViT/pertubation_eval_from_hdf5.py``).

Their protocol, followed here: the map is bilinearly upsampled to the image; for each of 10%, 20%, ..., 90%
of the pixels (``int(H·W·p)``) the most relevant (positive) or least relevant (negative: their ``--neg``,
the map negated) pixels are set to 0 in [0, 1] pixel space (black; here ``(0 − mean) / std`` after
normalization), and the model's top-1 is compared with the dataset label. ``Pos-Pert`` / ``Neg-Pert`` are
the areas under the accuracy curve over the 9 levels (trapezoid, dx = 0.1; lower is better for Pos, higher
for Neg), the AUC their paper reports; the 9 hits per mode are stored in the row. Which class the map
explains (their ``--vis-class top|target``) is ``caap bench --target predicted|label``. Their ``topk``
leaves tie order unspecified; ties here keep raster order. Cost: 18 forwards per map, one batched stream.
"""
from __future__ import annotations

import torch
from torch import Tensor

from analysis.metrics.pixels import black, pixel_ranks
from analysis.metrics.registry import Context, Metric
from caap.masking import masked_scores

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def hits(ctx: Context, maps) -> Tensor:
    """``[maps, 2 (positive, negative), 9]`` top-1 hits (1.0 = the label still predicted)."""
    if ctx.label is None:
        raise ValueError("perturbation needs the dataset label (Chefer et al. read top-1 accuracy); got none")
    c, h, w = ctx.image.shape[1:]
    device = ctx.image.device
    ranks = torch.stack([pixel_ranks(m, (h, w), descending=d, device=device) for m in maps for d in (True, False)])
    counts = torch.tensor([int(h * w * p) for p in LEVELS], device=device)

    def masks(lo: int, hi: int) -> Tensor:
        i = torch.arange(lo, hi, device=device)
        return (ranks[i // len(LEVELS)] >= counts[i % len(LEVELS)].view(-1, 1, 1)).float()  # 1 keeps the pixel

    label = ctx.label
    scores = masked_scores(ctx.model, ctx.image[0], masks, black(ctx.model, ctx.image[0]), None,
                           kind=lambda out: (out.argmax(-1) == label).float(), n_masks=len(ranks) * len(LEVELS),
                           memory_budget_gb=ctx.memory_budget_gb, batch_size=ctx.batch_size)
    return scores.view(len(maps), 2, len(LEVELS)).cpu()


def score(ctx: Context, names, maps) -> list[dict]:
    h = hits(ctx, maps)
    area = torch.trapezoid(h, dx=0.1, dim=-1)
    return [{"pos_pert": float(area[k, 0]), "neg_pert": float(area[k, 1]),
             "pert_hits": {"positive": h[k, 0].tolist(), "negative": h[k, 1].tolist()}} for k in range(len(maps))]


def metric() -> Metric:
    return Metric("perturbation", {"pos_pert": "Pos-Pert ↓", "neg_pert": "Neg-Pert ↑"}, frozenset({"pos_pert"}),
                  score=score, settings={"levels": list(LEVELS), "removed_to": "black (0 in pixel space)",
                                         "read": "top-1 == label", "auc": "trapezoid dx 0.1 over the 9 levels"})
