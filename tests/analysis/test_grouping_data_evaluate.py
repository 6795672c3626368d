import json

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.data import load_image_and_mask, load_manifest
from analysis.evaluate import evaluate, format_table, summarize
from tests.conftest import make_hooked


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["image,mask,label,kind"]
    for i in range(3):
        Image.fromarray((rng.random((80, 100, 3)) * 255).astype("uint8")).save(tmp_path / f"im{i}.jpg")
        mask = np.zeros((80, 100), dtype="uint8")
        mask[10:50, 20:70] = 255
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        rows.append(f"im{i}.jpg,m{i}.png,{i},{'single' if i < 2 else 'pair'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


def test_manifest_and_resized_masks(dataset):
    samples = load_manifest(dataset, kind="single")
    assert [s.label for s in samples] == [0, 1] and samples[0].image.is_file()
    model = make_hooked("vit")
    x, mask = load_image_and_mask(model, samples[0])
    assert x.shape == (1, 3, 64, 64) and mask.shape == (64, 64)
    rows, cols = mask.nonzero().T
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 39, 13, 44)  # 10:50 x 20:70 scaled by 0.8 / 0.64
    with pytest.raises(ValueError, match="no samples"):
        load_manifest(dataset, kind="triple")


def test_evaluate_is_resumable_and_summarized(dataset, tmp_path):
    model = make_hooked("vit")
    calls = {"centre": 0, "noise": 0}

    def centre(x, target):
        calls["centre"] += 1
        m = torch.zeros(1, 4, 4)
        m[0, 1:3, 1:3] = 1
        return m

    def noise(x, target):
        calls["noise"] += 1
        return torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(calls["noise"]))

    samples = load_manifest(dataset)
    out = tmp_path / "results" / "r.jsonl"
    records = evaluate(model, {"centre": centre}, samples[:2], out, n_steps=4, progress=False)
    assert len(records) == 2 and calls["centre"] == 2
    records = evaluate(model, {"centre": centre, "noise": noise}, samples, out, n_steps=4, progress=False)
    assert len(records) == 6 and calls == {"centre": 3, "noise": 3}  # nothing recomputed
    assert all(0 <= r["aupr1"] <= 1 and 0 <= r["deletion"] <= 1 for r in records)
    assert all(abs(r["ins_del"] - (r["insertion"] - r["deletion"])) < 1e-9 for r in records)
    assert len(out.read_text().splitlines()) == 6 and json.loads(out.read_text().splitlines()[0])["method"] == "centre"
    summary = summarize(records)
    assert summary["centre"]["aupr1"][2] == 3
    assert summary["centre"]["aupr1"][0] > summary["noise"]["aupr1"][0]  # the centre box overlaps the mask
    table = format_table(summary)
    assert table.count("\n") == 3 and "**" in table.splitlines()[2]
