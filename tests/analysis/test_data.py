"""Samples through the checkpoint's eval transform; manifests."""
import numpy as np
import pytest
import torch
from PIL import Image

from analysis.data import Sample, load_image_and_mask, load_manifest, load_sample, subset
from tests.conftest import make_hooked


def two_colour(tmp_path, size=(100, 80)):
    """A red object on a blue background, and its mask, at ``size`` (w, h)."""
    w, h = size
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 2] = 255
    obj = np.zeros((h, w), bool)
    obj[10:50, 55:95] = True  # right of centre: squashing and centre-cropping put it in different places
    rgb[obj] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    Image.fromarray(obj.astype(np.uint8) * 255).save(tmp_path / "m.png")
    return Sample(tmp_path / "im.png", tmp_path / "m.png", 3, "im")


def test_image_and_mask_follow_the_checkpoints_resize_then_centre_crop(tmp_path):
    model = make_hooked("vit")
    model.cfg.crop_mode, model.cfg.crop_pct = "center", 0.875  # resize shorter side to 73, centre crop 64
    sample = two_colour(tmp_path)
    loaded = load_sample(model, sample)
    expected = model.transform(Image.open(sample.image).convert("RGB"))[None]
    assert torch.equal(loaded.image, expected)  # the old loader squashed the whole image instead
    red = loaded.image[0, 0] * model.cfg.std[0] + model.cfg.mean[0] > 0.5  # the object, read off the pixels
    assert loaded.mask.shape == (64, 64) and loaded.ignore is None
    assert (red == loaded.mask).float().mean() > 0.98  # aligned up to interpolation at the edges
    x, mask = load_image_and_mask(model, sample)  # backwards-compatible pair
    assert torch.equal(mask, loaded.mask) and x.shape == (1, 3, 64, 64)


def test_squash_checkpoints_keep_the_whole_image(tmp_path):
    model = make_hooked("vit")
    model.cfg.crop_mode, model.cfg.crop_pct = "squash", 1.0
    sample = two_colour(tmp_path)
    loaded = load_sample(model, sample)
    rows, cols = loaded.mask.nonzero().T
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 39, 35, 60)  # 10:50 x 55:95 scaled 0.8 / 0.64


def test_manifest(tmp_path):
    two_colour(tmp_path)
    (tmp_path / "manifest.csv").write_text("image,mask,label,kind\nim.png,m.png,1,single\nim.png,m.png,2,pair\n")
    assert [s.label for s in load_manifest(tmp_path / "manifest.csv", kind="single")] == [1]
    assert [s.label for s in load_manifest(tmp_path / "manifest.csv", kind="pairs")] == [2]
    with pytest.raises(ValueError, match="no samples"):
        load_manifest(tmp_path / "manifest.csv", kind="triple")
    (tmp_path / "bad.csv").write_text("img,mask\nim.png,m.png\n")
    with pytest.raises(ValueError, match="lacks column\\(s\\) image, label; it has img, mask"):
        load_manifest(tmp_path / "bad.csv")
    (tmp_path / "nomask.csv").write_text("image,label\nim.png,4\n")
    s = load_manifest(tmp_path / "nomask.csv")[0]
    assert s.mask is None and load_sample(make_hooked("vit"), s).mask is None


def test_seeded_subset():
    samples = [Sample(None, None, i, str(i)) for i in range(50)]
    a, b = subset(samples, 10, seed=0), subset(samples, 10, seed=0)
    assert a == b and len(a) == 10 and [s.label for s in a] == sorted(s.label for s in a)
    assert subset(samples, 10, seed=1) != a and subset(samples, None) == samples
