"""Segmentation metrics equal Chefer et al.'s imagenet_seg_eval.py / utils/metrices.py written out."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from analysis.metrics import Context, get_metric
from analysis.metrics.segmentation import pooled, segment


def chefer(res_patch, labels):
    """Their eval_batch for one image: labels [H, W] in {0, 1, -1 (ignored)}."""
    res = F.interpolate(res_patch[None], size=labels.shape, mode="bilinear", align_corners=False)
    res = (res - res.min()) / (res.max() - res.min())
    ret = res.mean()
    output = torch.cat((res.le(ret).float(), res.gt(ret).float()), 1)[0]
    output_ap = torch.cat((1 - res, res), 1)[0]
    predict = output.argmax(0).numpy() + 1
    target = labels.numpy() + 1
    labeled = np.sum(target > 0)
    correct = np.sum((predict == target) * (target > 0))
    predict = predict * (target > 0)
    intersection = predict * (predict == target)
    inter, _ = np.histogram(intersection, bins=2, range=(1, 2))
    area_pred, _ = np.histogram(predict, bins=2, range=(1, 2))
    area_lab, _ = np.histogram(target, bins=2, range=(1, 2))
    union = area_pred + area_lab - inter
    onehot = torch.zeros(2, *labels.shape).scatter_(0, labels.clamp(min=0)[None].long(), 1)
    keep = (labels[None].expand(2, -1, -1) != -1).reshape(-1).numpy()
    ap = average_precision_score(onehot.reshape(-1).numpy()[keep], output_ap.reshape(-1).numpy()[keep])
    return correct, labeled, inter, union, ap


def test_segment_equals_chefer_with_ignored_pixels():
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(1, 4, 4, generator=g) for _ in range(3)]
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:20, 8:28] = True
    ignore = torch.zeros(32, 32, dtype=torch.bool)
    ignore[:, :3] = True
    labels = mask.long().masked_fill(ignore, -1)
    rows = get_metric("segmentation").score(Context(None, None, 0, mask, ignore), ["a", "b", "c"], maps)
    totals = np.zeros(2), np.zeros(2), 0, 0
    for m, row in zip(maps, rows):
        correct, labeled, inter, union, ap = chefer(m, labels)
        assert row["pix_acc"] == pytest.approx(correct / labeled) and row["map"] == pytest.approx(ap)
        assert row["miou"] == pytest.approx(np.mean(inter / union))
        totals = (totals[0] + inter, totals[1] + union, totals[2] + correct, totals[3] + labeled)
    agg = pooled(rows)  # their dataset-level aggregation
    assert agg["pix_acc"] == pytest.approx(totals[2] / totals[3]) and agg["miou"] == pytest.approx(
        np.mean(totals[0] / totals[1]))
    assert len({round(r["miou"], 6) for r in rows}) == 3


def test_segment_refuses_an_all_foreground_mask():
    with pytest.raises(ValueError, match="both foreground and background"):
        segment(torch.rand(1, 4, 4), torch.ones(8, 8, dtype=torch.bool))
