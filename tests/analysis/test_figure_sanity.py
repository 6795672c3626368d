"""``caap figure sanity`` (analysis.figure_sanity) typed as a user types it, on a tiny random DINOv2 checkpoint: with
``--results`` it draws exactly the rows of a ``caap bench --metrics mprt`` run, without it computes the same numbers
(equal to ``block_similarities`` called directly), the gallery's columns are the models the metric explains (same
seed, same cascade), the PNGs have the expected layout, and another run, a run without mprt rows and bad options
are refused in one line with exit status 2."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from analysis.cli import main
from tests.conftest import one_line_error, write_checkpoint, write_manifest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
METHODS = "caap,ixg"  # both non-constant on the tiny model (its grad-cam map is constant)
CELL = 180  # gallery cell: 2.0 in at 90 dpi (analysis.figure_sanity.plot_sanity_gallery, figure_runs._save)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sanity")
    write_checkpoint(tmp, "dinov2")  # 56 px, 14 px patches, 3 blocks
    write_checkpoint(tmp, "dinov2", seed=1, name="other")
    write_manifest(tmp / "data", 3, size=56)
    assert main(["bench", *source(tmp), "--methods", METHODS, "--metrics", "mprt", "--out", str(tmp / "bench"),
                 "--no-progress"]) == 0
    return tmp


def source(tmp, weights="tiny"):
    return ["--weights", str(tmp / f"{weights}.safetensors"), "--dataset", "manifest", "--root",
            str(tmp / "data" / "manifest.csv"), "--n", "2"]


def caap(*argv) -> subprocess.Popen:
    """The ``caap`` console script (``python -m analysis.cli``, its entry point, where it is not installed)."""
    exe = [str(BIN / "caap")] if (BIN / "caap").is_file() else [sys.executable, "-m", "analysis.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([*exe, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def figures(setup):
    """Both commands at once (each spends most of its time importing torch): with and without ``--results``."""
    with_results, without = setup / "fig-results", setup / "fig-computed"
    procs = [caap("figure", "sanity", *source(setup), "--methods", METHODS, "--results", str(setup / "bench"),
                  "--gallery-blocks", "0", "2", "--out", str(with_results), "--no-progress"),
             caap("figure", "sanity", *source(setup), "--methods", METHODS, "--out", str(without))]
    done = [(p, *p.communicate(timeout=300)) for p in procs]
    for p, _, err in done:
        assert p.returncode == 0, err[-2000:]
    return (with_results, done[0][1]), (without, done[1][2])


def bench_rows(tmp) -> list[dict]:
    rows = [json.loads(line) for line in (tmp / "bench" / "metrics-mprt.jsonl").read_text().splitlines()]
    samples = json.loads((tmp / "bench" / "run.json").read_text())["samples"]
    return [r for r in rows if r["sample"] in samples]


def expected_table(rows: list[dict]) -> dict:
    """``(method, block) -> {sim: (mean, population SD / sqrt(n))}`` over images, computed here with numpy."""
    table = {}
    for m in METHODS.split(","):
        mine = [r["mprt_blocks"] for r in rows if r["method"] == m]
        assert len(mine) == 2
        for i, b in enumerate(mine[0]["block"]):
            table[m, str(b)] = {s: (np.mean([x[s][i] for x in mine]), np.std([x[s][i] for x in mine]) / np.sqrt(2))
                                for s in ("spearman", "ssim")}
    return table


def check_csv(path: Path, table: dict) -> None:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["block"]) for r in rows] == [(m, b) for m in METHODS.split(",")
                                                         for b in ("original", "2", "1", "0")]
    for r in rows:
        assert r["n"] == "2"
        if r["block"] == "original":
            assert float(r["spearman_mean"]) == float(r["ssim_mean"]) == 1.0
            continue
        want = table[r["method"], r["block"]]
        for s in ("spearman", "ssim"):
            assert float(r[f"{s}_mean"]) == pytest.approx(want[s][0], rel=1e-9, abs=1e-12)
            assert float(r[f"{s}_se"]) == pytest.approx(want[s][1], rel=1e-9, abs=1e-12)


def check_pngs(out: Path, n_columns: int) -> None:
    for name, size in (("sanity", (1170, 360)), ("sanity_gallery", (CELL * n_columns, CELL * 2))):
        image = np.asarray(Image.open(out / f"{name}.png").convert("RGB"))
        assert (image.shape[1], image.shape[0]) == size and image.std() > 10, name  # the layout, not a blank


def test_with_results_draws_the_bench_rows(setup, figures):
    out, stdout = figures[0]
    table = expected_table(bench_rows(setup))
    assert len({v["spearman"][0] for v in table.values()}) > 4  # the numbers vary: the comparison means something
    check_csv(out / "sanity.csv", table)
    assert not (out / "sanity.jsonl").exists()  # read, not recomputed
    check_pngs(out, 3)
    gallery = json.loads((out / "sanity_gallery.json").read_text())
    assert gallery["blocks"] == [2, 0] and gallery["columns"] == ["original", "block 2", "blocks 2..0"]
    maps = np.load(out / "sanity_gallery_maps.npz")
    assert sorted(maps.files) == ["caap", "ixg"] and maps["caap"].shape[0] == 3
    assert "caap: n=2, MPRT" in stdout


def test_without_results_computes_the_metric(setup, figures):
    import torch

    from analysis.data import load_sample, subset
    from analysis.datasets import get_dataset
    from analysis.figure_runs import load_model
    from analysis.metrics import Context
    from analysis.metrics.mprt import block_similarities
    from caap import get_method

    out, stderr = figures[1]
    assert "mprt (cascading): 100%" in stderr and "4/4" in stderr  # tqdm progress over the (image, method) maps
    rows = [json.loads(line) for line in (out / "sanity.jsonl").read_text().splitlines()]
    assert sorted((r["sample"], r["method"]) for r in rows) == sorted((r["sample"], r["method"])
                                                                      for r in bench_rows(setup))
    check_csv(out / "sanity.csv", expected_table(bench_rows(setup)))  # = caap bench --metrics mprt
    # = block_similarities called directly, as caap bench's score_sample calls it
    import argparse

    model = load_model(argparse.Namespace(model=None, weights=setup / "tiny.safetensors", hf=None, device="cpu"))
    samples = subset(get_dataset("manifest", setup / "data" / "manifest.csv", None).samples, 2, 0)
    direct = []
    for s in samples:
        image = load_sample(model, s).image
        with torch.no_grad():
            target = int(model(image).argmax(-1))
        ctx = Context(model, image, target, None, None, rebuild=lambda n, m: get_method(n, m).attribute, seed=0)
        for m in METHODS.split(","):
            original = get_method(m, model).attribute(image, torch.tensor([target])).float()
            direct.append({"sample": s.name, "method": m, "mprt_blocks": block_similarities(ctx, m, original)})
            if s is samples[0]:
                first = (s.name, m, original[0].numpy())
    check_csv(out / "sanity.csv", expected_table(direct))
    check_pngs(out, 4)
    # the gallery's columns are the models the metric explains: same seed, same cascade, same image
    gallery = json.loads((out / "sanity_gallery.json").read_text())
    assert gallery["sample"] == samples[0].name and gallery["blocks"] == [2, 1, 0]
    maps = np.load(out / "sanity_gallery_maps.npz")
    assert np.allclose(maps[first[1]][0], first[2], atol=1e-6)
    for r in rows:
        if r["sample"] == gallery["sample"]:
            got = [spearmanr(maps[r["method"]][0].ravel(), maps[r["method"]][k].ravel()).statistic
                   for k in (1, 2, 3)]
            assert got == pytest.approx(r["mprt_blocks"]["spearman"], abs=1e-9), r["method"]


def test_refuses_other_runs_and_bad_input(setup, tmp_path, capsys):
    plain = tmp_path / "plain"  # a finished caap bench run of the paper's metrics: no mprt rows
    assert main(["bench", *source(setup), "--methods", METHODS, "--metrics", "deletion", "--n-steps", "2",
                 "--out", str(plain), "--no-progress"]) == 0
    capsys.readouterr()

    def sanity(*extra, weights="tiny"):
        return main(["figure", "sanity", *source(setup, weights), "--methods", METHODS, "--out",
                     str(tmp_path / "fig"), "--no-progress", *extra])

    one_line_error(sanity("--results", str(plain)), capsys, "no mprt rows", "--metrics mprt")
    one_line_error(sanity("--results", str(setup / "bench"), weights="other"), capsys, "weights_sha256")
    one_line_error(sanity("--results", str(setup / "bench"), "--mprt", "independent"), capsys, "--mprt independent")
    one_line_error(sanity("--results", str(setup / "bench"), "--target", "label"), capsys, "target")
    one_line_error(sanity("--gallery-blocks", "3"), capsys, "--gallery-blocks [3] out of range", "0..2")
    one_line_error(sanity("--image", "nope"), capsys, "--image 'nope'")
    one_line_error(sanity("--methods", "nope"), capsys, "unknown method")
    assert not (tmp_path / "fig").exists()  # nothing written by a refused command
