"""Average Drop and Increase in Confidence (Chattopadhay et al. 2018, Grad-CAM++, Sec. 5.2).

The explanation image is the image times the map, bilinearly upsampled and min-max normalized to [0, 1]
(a constant map gives 0 everywhere), multiplied in normalized space as jacobgil/pytorch-grad-cam's
``CamMultImageConfidenceChange`` does: on the masking engine that is reference 0 (the mean colour) +
map × (image − 0). With Y = the softmax probability of the explained class on the image and O = on the
explanation image, per image ``AvgDrop = max(0, Y − O) / Y`` (lower is better) and ``IncConf = [O > Y]``
(higher is better); the table's means are the paper's percentages / 100.
Cost: 1 forward per map plus 1 per image, one batched stream.
"""
from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from analysis.metrics.curves import check_finite, to_pixels
from analysis.metrics.registry import Context, Metric
from caap.masking import masked_scores


def normalize(maps: Float[Tensor, "k H W"]) -> Float[Tensor, "k H W"]:
    """Min-max to [0, 1] per map; a constant map becomes 0."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def explanation_scores(ctx: Context, maps) -> tuple[float, Tensor]:
    """Y (the image) and O per map (image × normalized map), softmax probabilities of ``ctx.target``."""
    h, w = ctx.image.shape[-2:]
    for m in maps:
        check_finite(m)
    pixel = normalize(torch.cat([to_pixels(m.float(), (h, w)) for m in maps]).to(ctx.image.device))
    masks = torch.cat([torch.ones(1, h, w, device=pixel.device), pixel])
    scores = masked_scores(ctx.model, ctx.image[0], masks, torch.zeros_like(ctx.image[0]), ctx.target,
                           memory_budget_gb=ctx.memory_budget_gb, batch_size=ctx.batch_size).cpu()
    return float(scores[0]), scores[1:]


def score(ctx: Context, names, maps) -> list[dict]:
    y, o = explanation_scores(ctx, maps)
    return [{"avg_drop": max(0.0, y - float(v)) / y if y > 0 else None, "inc_conf": float(float(v) > y)}
            for v in o]


def metric() -> Metric:
    return Metric("avg-drop", {"avg_drop": "AvgDrop ↓", "inc_conf": "IncConf ↑"}, frozenset({"avg_drop"}),
                  score=score, settings={"map": "min-max normalized, bilinear", "reference": "0 after normalization",
                                         "score": "softmax probability"})
