"""ROAD (Rong et al. 2022): the noisy linear imputation equals Quantus' and a dense transcription of the authors'
NoisyLinearImputer; the metric equals a slow per-percentage loop; it separates object-first from object-last maps;
``caap bench --metrics road`` writes its rows and columns."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from analysis.cli import main
from analysis.metrics import Context, get_metric
from analysis.metrics.random_logit import image_seed
from analysis.metrics.road import NOISE, PERCENTAGES, curves, noisy_linear_imputation
from tests.conftest import TINY, random_images, write_checkpoint, write_manifest
from vit_lens import HookedViT


def dense_imputation(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The authors' equation written out: each removed pixel = the weighted mean of its in-image 8 neighbours
    (1/6 side, 1/12 diagonal), removed neighbours being unknowns; one dense solve."""
    c, h, w = image.shape
    removed = [(y, x) for y in range(h) for x in range(w) if not keep[y, x]]
    index = {p: k for k, p in enumerate(removed)}
    a, b = np.zeros((len(removed), len(removed))), np.zeros((len(removed), c))
    for k, (y, x) in enumerate(removed):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = y + dy, x + dx
                if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < w):
                    continue
                weight = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                a[k, k] += weight
                if keep[yy, xx]:
                    b[k] += weight * image[:, yy, xx]
                else:
                    a[k, index[(yy, xx)]] -= weight
    out = image.copy()
    for (y, x), value in zip(removed, np.linalg.solve(a, b)):
        out[:, y, x] = value
    return out


def case(h=13, w=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g, dtype=torch.float64)
    keep = torch.rand(h, w, generator=g) > 0.55
    keep[2:9, 3:8] = False  # a removed blob whose inside has no kept neighbour
    keep[0, :] = False  # and a removed border row
    return image, keep


def test_noiseless_imputation_equals_quantus_and_the_dense_system():
    image, keep = case()
    got = noisy_linear_imputation(image, keep, noise=0.0).numpy()
    assert np.abs(got - dense_imputation(image.numpy(), keep.numpy())).max() < 1e-12
    assert np.array_equal(got[:, keep.numpy()], image.numpy()[:, keep.numpy()])
    assert np.abs(got - image.numpy()).max() > 0.1  # removed pixels really changed
    quantus = pytest.importorskip("quantus")
    ref = quantus.functions.perturb_func.noisy_linear_imputation(image.numpy(), np.flatnonzero(~keep.numpy()),
                                                                 noise=0.0)
    assert np.abs(got - ref).max() < 1e-12


def test_noise_has_the_documented_std_on_removed_pixels_only():
    image, keep = case(64, 64, seed=1)
    clean = noisy_linear_imputation(image, keep, noise=0.0)
    noisy = noisy_linear_imputation(image, keep, noise=NOISE, seed=(5, 1, 2))
    diff = (noisy - clean)[:, ~keep]
    assert torch.equal(noisy[:, keep], image[:, keep])
    assert diff.numel() > 5000 and abs(float(diff.std()) / NOISE - 1) < 0.05 and abs(float(diff.mean())) < 5e-4
    field = np.random.default_rng((5, 1, 2)).standard_normal((3, 64 * 64))[:, ~keep.numpy().ravel()]
    assert np.allclose(diff.numpy(), NOISE * field, atol=1e-12)  # the documented draw
    assert not torch.equal(noisy, noisy_linear_imputation(image, keep, noise=NOISE, seed=6))


def test_bad_input():
    image, keep = case()
    with pytest.raises(ValueError, match="noise must be >= 0"):
        noisy_linear_imputation(image, keep, noise=-0.1)
    with pytest.raises(ValueError, match="keep must keep at least one pixel"):
        noisy_linear_imputation(image, torch.zeros_like(keep), noise=0.0)
    with pytest.raises(ValueError, match="keep a bool"):
        noisy_linear_imputation(image, keep.float(), noise=0.0)


def slow_road(ctx, attribution):
    """One forward per (order, percentage): the authors' slicing of the sorted map, imputation in [0, 1] pixel
    space (Quantus' or the dense one) plus the seeded noise field, normalize, top-1 and probability."""
    model, image = ctx.model, ctx.image
    mean = torch.tensor(model.cfg.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(model.cfg.std, dtype=torch.float64).view(-1, 1, 1)
    pixels = (image[0].double() * std + mean).numpy()
    c, h, w = pixels.shape
    up = F.interpolate(attribution[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    order = np.argsort(-up.flatten().numpy(), kind="stable")  # most relevant first, ties in raster order
    hits, probs = [], []
    for o, morf in enumerate((True, False)):
        for p, share in enumerate(PERCENTAGES):
            cut = int(h * w * share)
            removed = order[:cut] if morf else order[cut:]
            keep = np.ones(h * w, bool)
            keep[removed] = False
            filled = dense_imputation(pixels, keep.reshape(h, w)).reshape(c, -1)
            noise = np.random.default_rng((image_seed(ctx.seed, ctx.sample), o, p)).standard_normal((c, h * w))
            filled[:, removed] += NOISE * noise[:, removed]
            x = (torch.from_numpy(filled.reshape(c, h, w)) - mean) / std
            with torch.no_grad():
                out = model(x[None].float())
            hits.append(float(out.argmax(-1)[0] == ctx.target))
            probs.append(float(out.softmax(-1)[0, ctx.target]))
    return hits, probs


def tiny_vit(size: int = 32, seed: int = 1) -> HookedViT:
    """A random 2x2-patch ViT (32 px), small enough for the dense reference solve."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=size, num_classes=7, **TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return HookedViT.from_timm(model)


def test_metric_equals_a_slow_loop_per_percentage():
    model = tiny_vit()
    image = random_images(model, 1, seed=3)
    with torch.no_grad():
        target = int(model(image).argmax(-1))
    maps = [torch.rand(1, *model.cfg.grid_size, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    ctx = Context(model, image, target, None, None, batch_size=5, seed=4, sample="im7.png")
    rows = get_metric("road").score(ctx, ["a", "b"], maps)
    for m, row in zip(maps, rows):
        hits, probs = slow_road(ctx, m)
        assert row["road_curves"]["morf"] + row["road_curves"]["lerf"] == hits
        assert np.allclose(row["road_curves"]["morf_prob"] + row["road_curves"]["lerf_prob"], probs, atol=1e-5)
        assert row["road_morf"] == pytest.approx(np.mean(hits[:7])) and row["road_lerf"] == pytest.approx(
            np.mean(hits[7:]))
    assert len({round(p, 4) for r in rows for p in r["road_curves"]["morf_prob"]}) > 10  # the images differ


class TextureDetector(torch.nn.Module):
    """Class 1 while the image keeps more than half of the checkerboard's high-frequency energy (|Laplacian|
    in pixel space), class 0 otherwise: removing the object first must kill class 1, removing it last not."""

    def __init__(self, energy: float):
        super().__init__()
        self.cfg = SimpleNamespace(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3), num_classes=2)
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.energy = energy

    def forward(self, x):
        pixels = x * torch.tensor(self.cfg.std).view(1, -1, 1, 1) + torch.tensor(self.cfg.mean).view(1, -1, 1, 1)
        kernel = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]]).expand(3, 1, 3, 3)
        energy = F.conv2d(pixels, kernel, groups=3).abs().flatten(1).sum(1)
        margin = self.scale * (energy / self.energy - 0.5)
        return torch.stack([-margin, margin], 1)


def test_object_first_map_has_lower_morf_than_its_negation():
    size, lo, hi = 32, 10, 22
    pixels = torch.full((3, size, size), 0.5)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = ((yy + xx) % 2).float() - 0.5
    inside = (yy >= lo) & (yy < hi) & (xx >= lo) & (xx < hi)
    pixels = torch.where(inside, 0.5 + 0.8 * board, pixels)
    model = TextureDetector(1.0)
    mean, std = torch.tensor(model.cfg.mean).view(-1, 1, 1), torch.tensor(model.cfg.std).view(-1, 1, 1)
    image = ((pixels - mean) / std)[None]
    with torch.no_grad():
        model.energy = float(model(image)[0, 1] + 0.5)  # the image's own energy: margin 0.5 on the image
        assert int(model(image).argmax(-1)) == 1
    centre = -((yy - 15.5) ** 2 + (xx - 15.5) ** 2).float()  # highest on the object, no ties
    ctx = Context(model, image, 1, None, None, batch_size=7, sample="board")
    first, last = get_metric("road").score(ctx, ["first", "last"], [centre[None], -centre[None]])
    assert first["road_morf"] < last["road_morf"]
    assert first["road_morf"] == 0.0 and last["road_morf"] == 1.0
    assert first["road_lerf"] > last["road_lerf"]
    hits, _ = curves(ctx, [centre[None]])
    assert hits.shape == (1, 2, 7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("road")
    write_checkpoint(tmp)
    write_manifest(tmp, 2)
    return tmp


def test_bench_writes_road_rows_and_columns(setup, tmp_path):
    out = tmp_path / "run"
    argv = ["bench", "--weights", str(setup / "tiny.safetensors"), "--dataset", "manifest", "--root",
            str(setup / "manifest.csv"), "--methods", "grad-cam,rollout", "--n-steps", "4", "--no-progress",
            "--out", str(out), "--metrics", "road"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (out / "metrics-road.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["metric"] for r in rows} == {"road"}
    for r in rows:
        assert r["road_morf"] == pytest.approx(np.mean(r["road_curves"]["morf"]))
        assert all(len(r["road_curves"][k]) == 7 for k in ("morf", "lerf", "morf_prob", "lerf_prob"))
    assert "| method | n | ROAD-MoRF ↓ | ROAD-LeRF ↑ |" in (out / "table.md").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["metric_settings"]["road"]["percentages"] == list(PERCENTAGES)
