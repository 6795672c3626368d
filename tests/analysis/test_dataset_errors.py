"""Bad dataset trees (issue 18): each gives one error naming the file (and line), what was found and what is
allowed, or is handled correctly; masks in another encoding no longer drop the localization metrics silently."""
import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from analysis.cli import main
from analysis.data import Sample, decode_mask, load_manifest, load_sample
from analysis.datasets import get_dataset
from analysis.datasets._common import imagenet_wnids
from analysis.evaluate import score_sample, Protocol
from analysis.sweeps import load_instance_manifest
from tests.conftest import make_hooked, write_checkpoint

WNIDS = imagenet_wnids()


def save_rgb(path, value=(120, 60, 30), size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def squash_model():
    model = make_hooked("vit")
    model.cfg.crop_mode, model.cfg.crop_pct = "squash", 1.0
    return model


# ------------------------------------------------------------------------------------------ ImageNet-S
def imagenet_s_tree(root, seg):
    """ImageNetS50 with one image of WNIDS[1] whose mask file holds ``seg``; returns (dataset, mask path, class id)."""
    base = root / "ImageNetS50"
    classes = sorted([WNIDS[1]] + [f"n9{i:07d}" for i in range(49)])
    base.mkdir(parents=True)
    (base / "ImageNetS_categories_im50.txt").write_text("\n".join(classes))
    save_rgb(base / "validation" / WNIDS[1] / "v1.JPEG")
    mask = base / "validation-segmentation" / WNIDS[1] / "v1.png"
    mask.parent.mkdir(parents=True)
    cid = classes.index(WNIDS[1]) + 1
    Image.fromarray(seg(cid)).save(mask)
    return get_dataset("imagenet-s50", root), mask, cid


def test_imagenet_s_greyscale_mask_is_refused(tmp_path, squash_model):
    def grey(cid):  # the class id written as a grey value: decoded as R + 256 G = 257 * cid before
        m = np.zeros((64, 64), np.uint8)
        m[:32] = cid
        return m

    ds, mask, cid = imagenet_s_tree(tmp_path, grey)
    with pytest.raises(ValueError, match=rf"ImageNet-S mask '{re.escape(str(mask))}' is a L \(single-channel\) image; "
                                         rf"expected an RGB PNG with class id R \+ 256 G"):
        load_sample(squash_model, ds.samples[0])


def test_imagenet_s_mask_without_the_images_class_is_refused(tmp_path, squash_model):
    def other_class(cid):
        m = np.zeros((64, 64, 3), np.uint8)
        m[:32] = (cid + 1, 0, 0)  # another category only: the object mask would be empty
        m[40:] = (1000 % 256, 1000 // 256, 0)
        return m

    ds, mask, cid = imagenet_s_tree(tmp_path, other_class)
    with pytest.raises(ValueError, match=rf"'{re.escape(str(mask))}' has no pixel of this image's class id "
                                         rf"{cid}: ids found \[0, {cid + 1}, 1000\]"):
        load_sample(squash_model, ds.samples[0])


def test_corrupt_image_in_imagenet_s_tree_names_the_file(tmp_path, squash_model):
    ds, mask, cid = imagenet_s_tree(tmp_path, lambda cid: np.full((64, 64, 3), (cid, 0, 0), np.uint8))
    ds.samples[0].image.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=rf"cannot read image '{re.escape(str(ds.samples[0].image))}'"):
        load_sample(squash_model, ds.samples[0])
    mask.write_bytes(b"garbage")
    save_rgb(ds.samples[0].image)
    with pytest.raises(ValueError, match=rf"cannot read mask '{re.escape(str(mask))}'"):
        load_sample(squash_model, ds.samples[0])


# ------------------------------------------------------------------------------------------ Oxford-IIIT-Pet
def pet_tree(root, listing, trimap):
    base = root / "oxford-iiit-pet"
    (base / "annotations" / "trimaps").mkdir(parents=True)
    save_rgb(base / "images" / "Abyssinian_1.jpg")
    Image.fromarray(trimap).save(base / "annotations" / "trimaps" / "Abyssinian_1.png")
    (base / "annotations" / "test.txt").write_text(listing)
    return base


def trimap_values():
    t = np.full((64, 64), 2, np.uint8)
    t[16:48, 16:48] = 3
    t[20:44, 20:44] = 1
    return t


def test_pet_trimap_in_another_encoding_is_refused(tmp_path, squash_model):
    t = np.where(trimap_values() == 1, 255, 0).astype(np.uint8)  # a {0, 255} object mask, not a trimap
    base = pet_tree(tmp_path, "Abyssinian_1 1 1 1\n", t)
    sample = get_dataset("oxford-pet", tmp_path).samples[0]
    with pytest.raises(ValueError, match=r"trimap '.*Abyssinian_1.png' holds values \[0, 255\]; expected a "
                                         r"single-channel PNG holding 1 pet, 2 background, 3 border"):
        load_sample(squash_model, sample)
    # saved RGB: equal channels are the same trimap (read as grey), differing channels are refused (was IndexError)
    trimap = base / "annotations" / "trimaps" / "Abyssinian_1.png"
    Image.fromarray(np.repeat(trimap_values()[..., None], 3, -1)).save(trimap)
    loaded = load_sample(squash_model, sample)
    assert loaded.mask.sum() == 24 * 24 and loaded.ignore.sum() == 32 * 32 - 24 * 24
    coloured = np.zeros((64, 64, 3), np.uint8)
    coloured[trimap_values() == 1] = (255, 0, 0)
    Image.fromarray(coloured).save(trimap)
    with pytest.raises(ValueError, match=r"trimap '.*' is a RGB image with differing channels"):
        load_sample(squash_model, sample)


@pytest.mark.parametrize("listing,message", [
    ("Abyssinian_1 0 1 1\n", r"test.txt line 1: class 0 is outside 1..37 \(the list's classes are 1-based\)"),
    ("# comment\nAbyssinian_1 -2 1 1\n", r"test.txt line 2: label -2 is negative"),
    ("Abyssinian_1 one 1 1\n", r"test.txt line 1: label 'one' is not an integer"),
    ("Abyssinian_1\n", r"test.txt line 1: 'Abyssinian_1' has no class"),
])
def test_pet_listing_labels(tmp_path, listing, message):
    pet_tree(tmp_path, listing, trimap_values())
    with pytest.raises(ValueError, match=message):
        get_dataset("oxford-pet", tmp_path)


# ------------------------------------------------------------------------------------------ manifests
def manifest(tmp_path, rows, header="image,mask,label"):
    save_rgb(tmp_path / "im.png")
    m = np.zeros((64, 64), np.uint8)
    m[8:40, 8:40] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    (tmp_path / "manifest.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


@pytest.mark.parametrize("label,message", [("-1", "label -1 is negative"), ("cat", "label 'cat' is not an integer"),
                                           ("2.0", "label '2.0' is not an integer"), ("", "label '' is not")])
def test_manifest_labels_name_file_and_line(tmp_path, label, message):
    csv_path = manifest(tmp_path, ["im.png,m.png,3", f"im.png,m.png,{label}"])
    where = rf"manifest '{re.escape(str(csv_path))}' line 3"
    with pytest.raises(ValueError, match=rf"{where}: {message}.*class indices 0, 1, 2"):
        load_manifest(csv_path)
    with pytest.raises(ValueError, match=rf"{where}: {message}"):
        load_instance_manifest(csv_path)  # the grouping figure's reader says the same


def test_corrupt_or_missing_manifest_image(tmp_path, squash_model):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    csv_path = manifest(tmp_path, ["bad.png,m.png,1", "gone.png,m.png,1"])
    bad, gone = load_manifest(csv_path)
    with pytest.raises(ValueError, match=rf"cannot read image '{re.escape(str(tmp_path / 'bad.png'))}'"):
        load_sample(squash_model, bad)
    with pytest.raises(FileNotFoundError, match=rf"image '{re.escape(str(tmp_path / 'gone.png'))}' not found"):
        load_sample(squash_model, gone)


def test_binary_mask_without_object_is_refused(tmp_path, squash_model):
    Image.fromarray(np.pad(np.ones((32, 32), np.uint8), 16)).save(tmp_path / "01.png")  # a 0/1 mask
    sample = Sample(tmp_path / "im.png", tmp_path / "01.png", 0, "im")
    save_rgb(sample.image)
    with pytest.raises(ValueError, match=r"mask '.*01.png' has no object pixel: values found \[0, 1\] \(L\); "
                                         r"expected a binary mask with the object > 127"):
        decode_mask(sample)


def test_object_outside_the_crop_is_a_warning_and_none(tmp_path, caplog):
    """Present in the file, cut away by the centre crop: legitimate, so recorded as None (with a warning)."""
    model = make_hooked("vit")
    model.cfg.crop_mode, model.cfg.crop_pct = "center", 0.5  # keeps the central half
    save_rgb(tmp_path / "im.png")
    m = np.zeros((64, 64), np.uint8)
    m[:6, :6] = 255  # a corner object
    Image.fromarray(m).save(tmp_path / "m.png")
    sample = Sample(tmp_path / "im.png", tmp_path / "m.png", 0, "im")
    with caplog.at_level(logging.WARNING, logger="analysis.data"):
        loaded = load_sample(model, sample)
    assert not loaded.mask.any()
    assert any("the object lies outside the model's crop" in r.getMessage() and "m.png" in r.getMessage()
               for r in caplog.records)
    (row,) = score_sample(model, {"c": lambda x, t: x.new_ones(1, 4, 4)}, ["c"], sample, Protocol(n_steps=2))
    assert row["aupr1"] is None and row["pointing_game"] is None and row["deletion"] is not None


def test_grouping_manifest_without_masks(tmp_path):
    csv_path = manifest(tmp_path, ["im.png,1"], header="image,label")
    with pytest.raises(ValueError, match=rf"manifest '{re.escape(str(csv_path))}' lacks column\(s\) mask; it has "
                                         rf"image, label \(attention grouping needs object masks"):
        load_instance_manifest(csv_path)
    csv_path = manifest(tmp_path, ["im.png,m.png,1", "im.png,,2"])
    with pytest.raises(ValueError, match=rf"manifest '{re.escape(str(csv_path))}' line 3: empty image or mask cell"):
        load_instance_manifest(csv_path)


# ------------------------------------------------------------------------------------------ Food-101, ImageNet-val
@pytest.mark.parametrize("content,message", [
    (json.dumps(["apple_pie/1"]), r"holds a JSON list; expected a JSON object"),
    (json.dumps({"apple_pie": "apple_pie/1"}), r"class 'apple_pie' maps to str"),
    ("{not json", r"is not JSON"),
])
def test_food101_meta_must_be_an_object_of_lists(tmp_path, content, message):
    (tmp_path / "food-101" / "meta").mkdir(parents=True)
    save_rgb(tmp_path / "food-101" / "images" / "apple_pie" / "1.jpg")
    (tmp_path / "food-101" / "meta" / "test.json").write_text(content)
    with pytest.raises(ValueError, match=r"food101: .*meta/test.json.*" + message):
        get_dataset("food101", tmp_path)


@pytest.mark.parametrize("rows,message", [
    ("ILSVRC2012_val_00000001,n99999999 1 2 3 4", r"line 2: 'n99999999' is not an ImageNet-1k wnid"),
    ("ILSVRC2012_val_00000001,", r"line 2: empty PredictionString"),
])
def test_imagenet_val_solution_rows(tmp_path, rows, message):
    save_rgb(tmp_path / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\n{rows}\n")
    with pytest.raises(ValueError, match=r"imagenet-val: .*LOC_val_solution.csv " + message):
        get_dataset("imagenet-val", tmp_path)
    (tmp_path / "LOC_val_solution.csv").write_text("Id,Prediction\nx,y\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) ImageId, PredictionString; it has Id, Prediction"):
        get_dataset("imagenet-val", tmp_path)


# ------------------------------------------------------------------------------------------ through the CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_bench_on_masks_in_another_encoding_exits_2_in_one_line(tmp_path, checkpoint, capsys):
    """Before: exit 0 and a table without AUPR/PG columns."""
    csv_path = manifest(tmp_path, ["im.png,01.png,1"])
    Image.fromarray(np.pad(np.ones((32, 32), np.uint8), 16)).save(tmp_path / "01.png")
    code = main(["bench", "--weights", str(checkpoint), "--dataset", "manifest", "--root", str(csv_path),
                 "--methods", "grad-cam", "--n-steps", "2", "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"caap: mask '{tmp_path / '01.png'}' has no object pixel: values found [0, 1] (L); "
                                 f"expected a binary mask with the object > 127 (e.g. 0 background, 255 object)"]


@pytest.mark.parametrize("labels", [[-1], [3, 1000], []])
def test_imagenet_hard_parquet_labels_must_be_imagenet_indices(tmp_path, labels):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    import io
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    table = pa.table({"image": [{"bytes": buf.getvalue(), "path": "x.png"}] * 2, "label": [[5], labels]})
    shard = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(table, shard)
    with pytest.raises(ValueError, match=rf"{re.escape(str(shard))} row 1: label {re.escape(str(labels))} is not a "
                                         rf"list of ImageNet-1k class indices 0..999"):
        get_dataset("imagenet-hard", tmp_path)


def test_sixteen_bit_dataset_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit greyscale image in a dataset reaches the model scaled by 65535 (PIL's convert('RGB') clips every
    value above 255 to white); 32-bit integer pixels beyond 16 bits are refused naming the file."""
    from analysis.data import open_image, to_rgb

    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    rgb = np.asarray(to_rgb(open_image(tmp_path / "g16.png"), tmp_path / "g16.png"))
    expected = np.round(ramp / 65535.0 * 255).astype(np.uint8)
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == expected).all() and (rgb[..., 2] == expected).all()
    assert len(np.unique(rgb)) > 200  # not clipped to white
    wide = Image.fromarray(np.full((8, 8), 255000, np.int32), "I")
    with pytest.raises(ValueError, match=r"i32\.tif.*32-bit integer pixels \(values 255000\.\.255000\)"):
        to_rgb(wide, tmp_path / "i32.tif")
