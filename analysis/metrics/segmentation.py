"""Segmentation of the object mask by the map: pixel accuracy, mIoU and mAP with Chefer et al.'s mean-value
threshold (CVPR 2021, Transformer-Explainability ``baselines/ViT/imagenet_seg_eval.py`` and
``utils/metrices.py``).

As their ``eval_batch``: the map is bilinearly upsampled, min-max normalized, and a pixel is foreground when
it exceeds the map's mean (``Res.gt(Res.mean())``). Per image, PixAcc = correct / labeled pixels; IoU per
class (background, foreground) = intersection / union, mIoU their mean; mAP = scikit-learn's average
precision of the channel pair (1 − map for background, map for foreground) against the one-hot mask,
flattened together (their ``get_ap_scores``). Ignored pixels (their label −1) are left out.
Their script pools PixAcc and IoU over the dataset (sums of counts, then ratios) while averaging AP per
image; the table here averages per-image values (the same PixAcc when every image has the same labeled
pixel count), and each row stores the counts so :func:`pooled` gives their dataset-level numbers.
No forwards: cost is one upsampling and one AP per map. Needs object masks.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from analysis.metrics.localization import _check_mask
from analysis.metrics.registry import Context, Metric


def segment(attribution, mask, ignore=None) -> dict:
    """PixAcc, mIoU, mAP of one ``[1, h, w]`` map against an ``[H, W]`` mask, and the counts behind them."""
    _check_mask(attribution[0].cpu(), mask.cpu(), None if ignore is None else ignore.cpu())  # shapes, both classes
    a, m = _check_mask(attribution[0].cpu(), mask.cpu(), None)
    a = a.astype(np.float32)  # float32 as theirs: AP ranks the values, so their ties matter
    span = a.max() - a.min()
    a = (a - a.min()) / span if span > 0 else np.zeros_like(a)  # theirs: 0/0 = NaN, then zeroed
    fg = a > a.mean()  # normalization and threshold over the whole image, ignored pixels included (as theirs)
    if ignore is not None:
        keep = ~ignore.flatten().cpu().numpy().astype(bool)
        a, m, fg = a[keep], m[keep], fg[keep]
    correct, labeled = int((fg == m).sum()), int(m.size)
    inter = [int((~fg & ~m).sum()), int((fg & m).sum())]
    union = [int((~fg | ~m).sum()), int((fg | m).sum())]
    iou = [i / u if u else 0.0 for i, u in zip(inter, union)]
    ap = float(np.nan_to_num(average_precision_score(np.concatenate([~m, m]), np.concatenate([1 - a, a]))))
    return {"pix_acc": correct / labeled, "miou": float(np.mean(iou)), "map": ap,
            "seg_counts": {"correct": correct, "labeled": labeled, "inter": inter, "union": union}}


def pooled(rows) -> dict:
    """Chefer et al.'s dataset-level numbers from the rows' counts: pooled PixAcc, pooled mIoU, mean AP."""
    counts = [r["seg_counts"] for r in rows if r.get("seg_counts")]
    eps = np.spacing(1, dtype=np.float64)
    inter = np.sum([c["inter"] for c in counts], axis=0)
    union = np.sum([c["union"] for c in counts], axis=0)
    return {"pix_acc": sum(c["correct"] for c in counts) / (eps + sum(c["labeled"] for c in counts)),
            "miou": float(np.mean(inter / (eps + union))),
            "map": float(np.mean([r["map"] for r in rows if r.get("seg_counts")]))}


def score(ctx: Context, names, maps) -> list[dict]:
    return [segment(m, ctx.mask, ctx.ignore) for m in maps]


def metric() -> Metric:
    return Metric("segmentation", {"pix_acc": "PixAcc ↑", "miou": "mIoU ↑", "map": "mAP ↑"}, needs_mask=True,
                  score=score, settings={"threshold": "mean of the min-max normalized upsampled map",
                                         "aggregate": "per-image mean (pooled counts stored)"})
