"""Two-object composites (issue 24): localization is scored against the explained object's mask, not the union."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from analysis.cli import main
from analysis.data import load_manifest
from analysis.datasets import get_dataset
from analysis.evaluate import Protocol, evaluate, score_sample
from tests.conftest import FAMILIES, make_hooked, make_timm

# 64x64 images, 4x4 grid of 16 px patches: object A (class `label`) top-left, object B (`label2`) bottom-right
A, B = (slice(0, 32), slice(0, 32)), (slice(32, 64), slice(32, 64))
HEADER = "image,mask,label,label_name,kind,label2,label2_name,mask_a,mask_b"


def at(region: tuple[slice, slice]):
    """A patch-level map [1, 4, 4] peaked on one object (unique maximum inside it), low elsewhere."""
    def method(x, target):
        m = torch.full((1, 4, 4), 0.1)
        rows, cols = slice(region[0].start // 16, region[0].stop // 16), slice(region[1].start // 16,
                                                                                region[1].stop // 16)
        m[0, rows, cols] = 1.0
        m[0, rows.start, cols.start] = 1.5
        return m
    return method


def save_mask(path, *regions):
    mask = np.zeros((64, 64), "uint8")
    for r in regions:
        mask[r] = 255
    Image.fromarray(mask).save(path)


def write_pairs(folder, labels: list[tuple[int, int]], extra_rows=()):
    rng = np.random.default_rng(0)
    rows = [HEADER]
    for i, (a, b) in enumerate(labels):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(folder / f"p{i}.png")
        save_mask(folder / f"u{i}.png", A, B)
        save_mask(folder / f"a{i}.png", A)
        save_mask(folder / f"b{i}.png", B)
        rows.append(f"p{i}.png,u{i}.png,{a},cls{a},pair,{b},cls{b},a{i}.png,b{i}.png")
    rows += list(extra_rows)
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def predictions(model, folder, n):
    with torch.no_grad():
        return [int(model(model.transform(Image.open(folder / f"p{i}.png").convert("RGB"))[None]).argmax())
                for i in range(n)]


def test_manifest_keeps_each_objects_mask(tmp_path):
    save_mask(tmp_path / "s.png", A)
    Image.fromarray(np.zeros((64, 64, 3), "uint8")).save(tmp_path / "s.jpg")
    csv = write_pairs(tmp_path, [(2, 5)], ["s.jpg,s.png,3,cls3,single,,,,"])
    pair, single = load_manifest(csv)
    assert pair.objects == (2, 5) and pair.mask == tmp_path / "u0.png"
    assert pair.object_mask(2) == tmp_path / "a0.png" and pair.object_mask(5) == tmp_path / "b0.png"
    assert pair.object_mask(3) is None  # no object of that class
    assert single.objects is None and single.masks_by_label is None and single.object_mask(3) == tmp_path / "s.png"
    # correctness: the explained object's class must be the prediction
    assert pair.correct(2, "label") and not pair.correct(5, "label")
    assert pair.correct(2) and pair.correct(5) and not pair.correct(3)
    ds = get_dataset("manifest", csv, "pair")
    assert len(ds.samples) == 1 and ds.samples[0].masks_by_label == pair.masks_by_label


def test_a_pair_row_needs_all_three_masks_or_none(tmp_path):
    csv = write_pairs(tmp_path, [(2, 5)])
    text = csv.read_text().replace(",a0.png,", ",,")
    csv.write_text(text)
    with pytest.raises(ValueError, match=r"manifest .* line 2: a two-object row \(label2 5\) needs every mask cell "
                                         r"mask, mask_a, mask_b .*; mask_a empty"):
        load_manifest(csv)
    csv.write_text(HEADER + "\np0.png,,2,x,pair,5,y,,\n")
    (sample,) = load_manifest(csv)
    assert sample.objects == (2, 5) and sample.mask is None and sample.masks_by_label is None


def test_a_map_on_the_wrong_object_scores_low_against_the_explained_mask_and_high_against_the_union(tmp_path):
    model = make_hooked("vit")
    csv = write_pairs(tmp_path, [(1, 4)])
    (sample,) = load_manifest(csv)
    protocol = Protocol(target="label", n_steps=2)
    methods = {"wrong": at(B), "right": at(A)}

    def rows(pair_mask):
        return {r["method"]: r for r in score_sample(model, methods, list(methods), sample, protocol,
                                                      curves=False, pair_mask=pair_mask)}

    explained, union = rows("explained"), rows("union")
    assert explained["wrong"]["target"] == 1 and explained["wrong"]["mask_object"] == 1
    assert explained["wrong"]["pair_mask"] == "explained" and union["wrong"]["mask_object"] == "union"
    assert explained["wrong"]["pointing_game"] == 0.0 and union["wrong"]["pointing_game"] == 1.0
    assert explained["wrong"]["aupr1"] < 0.3 < 0.6 < union["wrong"]["aupr1"]  # B is half of the union
    assert explained["right"]["pointing_game"] == 1.0 and explained["right"]["aupr1"] > 0.9
    # faithfulness does not depend on the mask
    assert explained["wrong"]["deletion"] == union["wrong"]["deletion"]


def test_target_predicted_takes_the_predicted_objects_mask_and_neither_is_misclassified(tmp_path):
    model = make_hooked("vit")
    write_pairs(tmp_path, [(0, 0)] * 3)  # images first, to learn the predictions
    p = predictions(model, tmp_path, 3)
    other = lambda *c: next(k for k in range(7) if k not in c)  # noqa: E731
    labels = [(p[0], other(p[0])), (other(p[1]), p[1]), (other(p[2]), other(p[2], other(p[2])))]
    csv = write_pairs(tmp_path, labels)
    samples = load_manifest(csv)
    protocol = Protocol(target="predicted", n_steps=2)
    got = [next(score_sample(model, {"b": at(B)}, ["b"], s, protocol, curves=False)) for s in samples]
    assert [r["correct"] for r in got] == [True, True, False]
    assert [r["mask_object"] for r in got] == [p[0], p[1], None]
    assert got[0]["pointing_game"] == 0.0  # predicted `label`: object A's mask; the map points at B
    assert got[1]["pointing_game"] == 1.0  # predicted `label2`: object B's mask
    assert got[2]["aupr1"] is None and got[2]["pointing_game"] is None and "no object" in got[2]["mask_note"]
    assert got[2]["deletion"] is not None  # faithfulness is still scored
    skipped = next(score_sample(model, {"b": at(B)}, ["b"], samples[2], Protocol(only_correct=True, n_steps=2)))
    assert skipped["skipped"] == "incorrect"
    # --target label: correct only when `label` itself is predicted
    by_label = [next(score_sample(model, {"b": at(B)}, ["b"], s, Protocol(target="label", n_steps=2), curves=False))
                for s in samples]
    assert [r["correct"] for r in by_label] == [True, False, False]
    assert all(r["mask_object"] == s.label for r, s in zip(by_label, samples))


def test_evaluate_refuses_rows_of_the_other_pair_mask(tmp_path):
    model = make_hooked("vit")
    samples = load_manifest(write_pairs(tmp_path, [(1, 4)]))
    out = tmp_path / "r.jsonl"
    evaluate(model, {"b": at(B)}, samples, out, n_steps=2, progress=False, pair_mask="union")
    with pytest.raises(ValueError, match="pair_mask 'union', not 'explained'"):
        evaluate(model, {"b": at(B)}, samples, out, n_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"pair_mask must be one of \('explained', 'union'\); got 'any'"):
        evaluate(model, {"b": at(B)}, samples, tmp_path / "x.jsonl", n_steps=2, progress=False, pair_mask="any")


def test_bench_pair_mask_option_is_recorded_and_part_of_the_resume_key(tmp_path, capsys):
    name, kwargs = FAMILIES["vit"]
    save_file(make_timm("vit").state_dict(), tmp_path / "tiny.safetensors")
    (tmp_path / "tiny.json").write_text(json.dumps({"timm_model_name": name, "create_model_kwargs": kwargs,
                                                    "data_config": {"crop_pct": 1.0, "crop_mode": "squash"}}))
    csv = write_pairs(tmp_path, [(1, 4), (2, 3)])

    def bench(out, *extra):
        return main(["bench", "--weights", str(tmp_path / "tiny.safetensors"), "--dataset", "manifest", "--root",
                     str(csv), "--split", "pair", "--methods", "grad-cam,caap-margin", "--n-steps", "2",
                     "--target", "label", "--no-progress", "--no-curves", "--out", str(out), *extra])

    assert bench(tmp_path / "e") == 0
    run = json.loads((tmp_path / "e" / "run.json").read_text())
    assert run["pair_mask"] == "explained" and run["method_settings"]["caap-margin"]["score"] == "logit-margin"
    rows = [json.loads(line) for line in (tmp_path / "e" / "results.jsonl").read_text().splitlines()]
    assert [r["mask_object"] for r in rows] == [1, 1, 2, 2]
    capsys.readouterr()
    assert bench(tmp_path / "e", "--pair-mask", "union") == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "pair_mask" in err
    assert bench(tmp_path / "u", "--pair-mask", "union") == 0
    union = [json.loads(line) for line in (tmp_path / "u" / "results.jsonl").read_text().splitlines()]
    assert all(r["mask_object"] == "union" for r in union)
    assert [r["deletion"] for r in union] == [r["deletion"] for r in rows]
    assert any(u["aupr1"] != e["aupr1"] for u, e in zip(union, rows))
