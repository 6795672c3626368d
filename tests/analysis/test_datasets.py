"""Each dataset loader on a tiny fake tree of its on-disk layout (no downloads)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.data import load_sample
from analysis.datasets import DATASETS, get_dataset
from analysis.datasets._common import imagenet_wnids
from tests.conftest import make_hooked

WNIDS = imagenet_wnids()


def save_rgb(path, value=(120, 60, 30), size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


@pytest.fixture
def squash_model():
    model = make_hooked("vit")
    model.cfg.crop_mode, model.cfg.crop_pct = "squash", 1.0
    return model


def test_imagenet_s_rgb_masks(tmp_path, squash_model):
    base = tmp_path / "ImageNetS50"
    classes = sorted([WNIDS[1], WNIDS[5]] + [f"n9{i:07d}" for i in range(48)])  # 50 category wnids
    (base / "ImageNetS_categories_im50.txt").parent.mkdir(parents=True)
    (base / "ImageNetS_categories_im50.txt").write_text("\n".join(reversed(classes)))  # file order is not id order
    for wnid in (WNIDS[1], WNIDS[5]):
        save_rgb(base / "validation" / wnid / f"ILSVRC2012_val_{wnid}.JPEG")
        cid = classes.index(wnid) + 1
        seg = np.zeros((64, 64, 3), np.uint8)
        seg[:32, :32] = (cid % 256, cid // 256, 0)  # this class: R + 256 G
        seg[32:, 32:] = (1000 % 256, 1000 // 256, 0)  # ignored
        seg[:8, 40:] = ((cid + 1) % 256, 0, 0)  # another category: background for this image
        (base / "validation-segmentation" / wnid).mkdir(parents=True)
        Image.fromarray(seg).save(base / "validation-segmentation" / wnid / f"ILSVRC2012_val_{wnid}.png")
    ds = get_dataset("imagenet-s50", tmp_path)
    assert ds.num_classes == 1000 and ds.has_masks and [s.label for s in ds.samples] == [1, 5]
    loaded = load_sample(squash_model, ds.samples[1])
    assert loaded.mask[:32, :32].all() and loaded.mask.sum() == 32 * 32  # the old reader saw all background
    assert loaded.ignore[32:, 32:].all() and loaded.ignore.sum() == 32 * 32
    with pytest.raises(FileNotFoundError, match="ImageNetS300/validation"):
        get_dataset("imagenet-s300", tmp_path)


def test_imagenet_val_both_layouts(tmp_path):
    save_rgb(tmp_path / "a" / "val" / WNIDS[7] / "x.JPEG")
    ds = get_dataset("imagenet-val", tmp_path / "a")
    assert [s.label for s in ds.samples] == [7] and not ds.has_masks and ds.samples[0].mask is None
    save_rgb(tmp_path / "b" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "b" / "LOC_val_solution.csv").write_text(
        f"ImageId,PredictionString\nILSVRC2012_val_00000001,{WNIDS[42]} 1 2 3 4\n")
    assert [s.label for s in get_dataset("imagenet-val", tmp_path / "b").samples] == [42]
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        get_dataset("imagenet-val", tmp_path / "c")


def test_oxford_pet_trimaps(tmp_path, squash_model):
    base = tmp_path / "oxford-iiit-pet"
    save_rgb(base / "images" / "Abyssinian_1.jpg")
    save_rgb(base / "images" / "yorkshire_terrier_9.jpg")
    (base / "annotations" / "trimaps").mkdir(parents=True)
    (base / "annotations" / "test.txt").write_text("Abyssinian_1 1 1 1\nyorkshire_terrier_9 37 2 25\n")
    tri = np.full((64, 64), 2, np.uint8)
    tri[16:48, 16:48] = 3
    tri[20:44, 20:44] = 1
    for name in ("Abyssinian_1", "yorkshire_terrier_9"):
        Image.fromarray(tri).save(base / "annotations" / "trimaps" / f"{name}.png")
    ds = get_dataset("oxford-pet", tmp_path)
    assert [s.label for s in ds.samples] == [0, 36] and ds.num_classes == 37 and ds.class_names[36] == "yorkshire terrier"
    loaded = load_sample(squash_model, ds.samples[0])
    assert loaded.mask.sum() == 24 * 24 and loaded.ignore.sum() == 32 * 32 - 24 * 24


def test_food101(tmp_path):
    base = tmp_path / "food-101"
    for cls, k in (("apple_pie", 1), ("waffles", 2)):
        save_rgb(base / "images" / cls / f"{k}.jpg")
    (base / "meta").mkdir()
    (base / "meta" / "test.json").write_text(json.dumps({"waffles": ["waffles/2"], "apple_pie": ["apple_pie/1"]}))
    ds = get_dataset("food101", tmp_path)
    assert [(s.name, s.label) for s in ds.samples] == [("apple_pie_1", 0), ("waffles_2", 1)] and not ds.has_masks


def test_imagenet_hard_folder_and_parquet(tmp_path):
    save_rgb(tmp_path / "f" / WNIDS[3] / "a.jpg")
    save_rgb(tmp_path / "f" / "17" / "b.jpg")
    assert sorted(s.label for s in get_dataset("imagenet-hard", tmp_path / "f").samples) == [3, 17]
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    import io
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(buf, format="PNG")
    table = pa.table({"image": [{"bytes": buf.getvalue(), "path": "x.png"}], "label": [[5, 9]]})
    (tmp_path / "p" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "p" / "data" / "validation-00000-of-00001.parquet")
    s = get_dataset("imagenet-hard", tmp_path / "p").samples[0]
    assert s.label == 5 and s.correct(9) and not s.correct(1) and s.image.is_file()


def test_manifest_dataset_and_unknown_name(tmp_path):
    save_rgb(tmp_path / "im.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "m.png")
    (tmp_path / "manifest.csv").write_text("image,mask,label,kind\nim.png,m.png,1,single\n")
    ds = get_dataset("manifest", tmp_path, "single")
    assert ds.has_masks and ds.num_classes is None and len(ds.samples) == 1
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; available: " + ", ".join(DATASETS)):
        get_dataset("imagenet", tmp_path)
