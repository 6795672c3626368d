"""Chefer et al.'s positive / negative perturbation equals their script's loop (pertubation_eval_from_hdf5.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.metrics import Context, get_metric
from analysis.metrics.perturbation import hits
from tests.conftest import make_hooked, random_images


def chefer_hits(model, image, vis, label, neg):
    """Their loop, written out: data in [0, 1], topk pixels of the (negated) map set to 0, normalize, top-1."""
    mean = torch.tensor(model.cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(model.cfg.std).view(1, -1, 1, 1)
    data = image * std + mean
    vis = (-vis if neg else vis).reshape(1, -1)
    out = []
    for step in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        _, idx = torch.topk(vis, int(vis.shape[1] * step), dim=-1)
        idx = idx.unsqueeze(1).repeat(1, data.shape[1], 1)
        _data = data.clone().reshape(1, data.shape[1], -1).scatter_(-1, idx, 0).reshape(data.shape)
        with torch.no_grad():
            out.append(float(model((_data - mean) / std).argmax(-1)[0] == label))
    return out


def test_hits_and_auc_equal_cheferss_loop():
    model = make_hooked("vit", seed=1)  # a seed whose prediction flips as pixels turn black
    image = random_images(model, 1)
    with torch.no_grad():
        label = int(model(image).argmax(-1))
    maps = [torch.rand(1, *model.cfg.grid_size, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    ctx = Context(model, image, label, None, None, batch_size=5, label=label)
    got = hits(ctx, maps)
    expected = []
    for m in maps:
        vis = F.interpolate(m[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        expected.append([chefer_hits(model, image, vis, label, neg) for neg in (False, True)])
    assert got.tolist() == expected
    assert 0 < got.sum() < got.numel()  # the check has both outcomes
    rows = get_metric("perturbation").score(ctx, ["a", "b"], maps)
    for row, e in zip(rows, expected):
        assert row["pos_pert"] == pytest.approx(np.trapezoid(e[0], dx=0.1)) and row["pert_hits"]["negative"] == e[1]
        assert row["neg_pert"] == pytest.approx(np.trapezoid(e[1], dx=0.1))


def test_needs_a_label():
    model = make_hooked("vit")
    ctx = Context(model, random_images(model, 1), 0, None, None)
    with pytest.raises(ValueError, match="needs the dataset label"):
        hits(ctx, [torch.rand(1, *model.cfg.grid_size)])
