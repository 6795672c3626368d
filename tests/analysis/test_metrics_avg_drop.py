"""Average Drop / Increase in Confidence equal Chattopadhay et al.'s formula on plain forwards."""
import torch
import torch.nn.functional as F

from analysis.metrics import Context, get_metric
from analysis.metrics.avg_drop import explanation_scores
from tests.conftest import make_hooked, random_images


def test_avg_drop_matches_the_formula():
    model = make_hooked("vit")
    image = random_images(model, 1)
    gh, gw = model.cfg.grid_size
    maps = [torch.rand(1, gh, gw, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    maps.append(torch.full((1, gh, gw), 2.0))  # constant map: the explanation image is 0 (the mean colour)
    target = 3
    ctx = Context(model, image, target, None, None, {}, batch_size=2)
    rows = get_metric("avg-drop").score(ctx, ["a", "b", "c", "d"], maps)
    y_engine, o_engine = explanation_scores(ctx, maps)
    with torch.no_grad():
        y = model(image).softmax(-1)[0, target]
        for k, (m, row) in enumerate(zip(maps, rows)):
            up = F.interpolate(m[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            span = up.max() - up.min()
            norm = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
            o = model(image * norm).softmax(-1)[0, target]
            assert abs(float(o_engine[k]) - float(o)) < 1e-5
            assert abs(row["avg_drop"] - float((y - o).clamp_min(0) / y)) < 1e-5
            assert row["inc_conf"] == float(o > y)
        assert abs(y_engine - float(y)) < 1e-5
