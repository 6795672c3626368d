"""``caap figure ...`` (analysis.figure_cli) end to end on a tiny checkpoint and a tiny manifest."""
import argparse
import csv
import json

import matplotlib
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from analysis import figure_cli
from tests.conftest import FAMILIES, make_timm

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fig")
    name, kwargs = FAMILIES["dinov2"]  # 56 px, 14 px patches, 3 blocks, 7 classes
    save_file(make_timm("dinov2").state_dict(), str(tmp / "tiny.safetensors"))
    (tmp / "tiny.json").write_text(json.dumps({
        "timm_model_name": name, "create_model_kwargs": kwargs, "class_names": [f"c{i}" for i in range(7)],
        "data_config": {"crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bicubic",
                        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    rng = np.random.default_rng(0)
    rows = [["image", "mask", "label", "kind", "mask_a", "mask_b"]]
    for i in range(4):
        Image.fromarray((rng.random((56, 56, 3)) * 255).astype("uint8")).save(tmp / f"im{i}.png")
        a = np.zeros((56, 56), "uint8")
        a[:28, :28] = 255
        b = np.zeros((56, 56), "uint8")
        b[28:, 28:] = 255
        Image.fromarray(a).save(tmp / f"a{i}.png")
        Image.fromarray(b).save(tmp / f"b{i}.png")
        Image.fromarray(a | b).save(tmp / f"u{i}.png")
        if i < 2:
            rows.append([f"im{i}.png", f"a{i}.png", str(i), "single", "", ""])
        else:
            rows.append([f"im{i}.png", f"u{i}.png", str(i), "pair", f"a{i}.png", f"b{i}.png"])
    with open(tmp / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return tmp


def run(argv):
    parser = argparse.ArgumentParser(prog="caap")
    sub = parser.add_subparsers(dest="command", required=True)
    figure_cli.add_parser(sub)
    return figure_cli.run(parser.parse_args(["figure", *argv]))


def common(setup, out, *extra):
    return ["--weights", str(setup / "tiny.safetensors"), "--dataset", "manifest", "--root", str(setup),
            "--out", str(out), "--no-progress", *extra]


def test_grouping_writes_png_csv_json(setup, tmp_path, capsys):
    fig, *rest = ["grouping", *common(setup, tmp_path)]
    assert run([fig, *rest]) == 0
    data = json.loads((tmp_path / "grouping.json").read_text())
    assert data["summary"]["n_images"] == 4
    assert data["summary"]["inter"]["n"] == [2, 2, 2]  # the two pair rows
    assert data["transition"]["cutoff"] == 2 and "0-based" in data["layer_axis"]
    with open(tmp_path / "grouping.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and float(table[0]["intra_mean"]) > 0
    assert (tmp_path / "grouping.png").stat().st_size > 1000
    assert "peaks at block" in capsys.readouterr().out
    assert run(["grouping", *common(setup, tmp_path / "u", "--unnormalized", "--split", "single")]) == 0
    raw = json.loads((tmp_path / "u" / "grouping.json").read_text())
    assert raw["summary"]["n_images"] == 2 and raw["summary"]["inter"]["n"] == [0, 0, 0]


def test_layer_blank_selection_figures(setup, tmp_path):
    opts = common(setup, tmp_path, "--n-steps", "2", "--split", "single", "--n", "1")
    assert run(["layers", *opts, "--ends", "0", "2"]) == 0
    summary = json.loads((tmp_path / "layers.json").read_text())
    assert list(summary) == ["0..0", "0..2"] and summary["0..0"]["deletion"][2] == 1
    assert run(["blanks", *opts, "--blanks", "white", "black"]) == 0
    assert list(json.loads((tmp_path / "blanks.json").read_text())) == ["white", "black"]
    assert run(["selection", *opts, "--variants", "none", "box-r1"]) == 0
    for name in ("layers", "blanks", "selection"):
        assert (tmp_path / f"{name}.png").is_file() and (tmp_path / f"{name}.csv").is_file()
    # a second run with other settings into the same directory is refused
    with pytest.raises(ValueError, match="other settings"):
        run(["blanks", *common(setup, tmp_path, "--n-steps", "3", "--split", "single", "--n", "1"), "--blanks", "white"])
    with pytest.raises(ValueError, match="out of range"):
        run(["layers", *opts, "--ends", "5"])


def test_curves_reuse_bench_rows_and_gallery(setup, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    stored = {"deletion": [1.0, 0.5, 0.0], "insertion": [0.0, 0.5, 1.0]}
    with open(bench / "results.jsonl", "w") as f:
        for s in ("im0", "im1"):
            f.write(json.dumps({"sample": s, "method": "caap", "curves": stored}) + "\n")
    # what caap bench records beside its rows; caap figure checks it before reusing them
    from analysis.datasets import get_dataset
    from analysis.provenance import file_digest, sample_digests

    samples = get_dataset("manifest", setup / "manifest.csv", "single").samples
    (bench / "run.json").write_text(json.dumps({
        "model": FAMILIES["dinov2"][0], "weights_sha256": file_digest(setup / "tiny.safetensors"),
        "dataset": "manifest", "samples": sample_digests(samples),
        "protocol": {"target": "predicted", "only_correct": False, "pixels_per_step": None, "n_steps": 2}}))
    opts = common(setup, tmp_path / "out", "--n-steps", "2", "--split", "single", "--methods", "caap,grad-cam",
                  "--results", str(bench))
    assert run(["curves", *opts]) == 0
    table = json.loads((tmp_path / "out" / "curves.json").read_text())
    assert table["caap"]["deletion"]["mean"] == stored["deletion"]  # reused, not recomputed
    assert table["grad-cam"]["deletion"]["n"] == 2 and len(table["grad-cam"]["insertion"]["mean"]) == 3
    assert (tmp_path / "out" / "curves.png").is_file()
    assert run(["gallery", *common(setup, tmp_path / "g", "--methods", "caap,grad-cam")]) == 0
    maps = np.load(tmp_path / "g" / "gallery_maps.npz")
    assert maps["caap"].shape == (4, 4, 4) and maps["grad-cam"].shape[0] == 4
    with pytest.raises(ValueError, match="unknown method"):
        run(["gallery", *common(setup, tmp_path / "g", "--methods", "nope")])
