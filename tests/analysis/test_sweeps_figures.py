import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from analysis.data import Sample
from analysis.evaluate import evaluate, summarize
from analysis.figures import plot_grouping, plot_layer_sweep
from analysis.grouping import attention_grouping
from analysis.sweeps import grouping_over_samples, layer_sweep_methods
from tests.conftest import make_hooked

matplotlib.use("Agg")


def write_sample(tmp_path, i, box):
    rng = np.random.default_rng(i)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(tmp_path / f"im{i}.png")
    mask = np.zeros((64, 64), dtype="uint8")
    mask[box] = 255
    Image.fromarray(mask).save(tmp_path / f"m{i}.png")
    return Sample(tmp_path / f"im{i}.png", tmp_path / f"m{i}.png", 1, f"s{i}")


def test_grouping_over_samples_and_figure(tmp_path):
    model = make_hooked("vit")
    samples = [write_sample(tmp_path, 0, np.s_[0:32, 0:32]), write_sample(tmp_path, 1, np.s_[:, :]),
               write_sample(tmp_path, 2, np.s_[16:48, 16:64])]
    grouping = grouping_over_samples(model, samples, progress=False)
    assert grouping["diff"].shape == (2, 3)  # the all-foreground sample is skipped
    from analysis.data import load_image_and_mask
    x, mask = load_image_and_mask(model, samples[2])
    assert torch.allclose(grouping["diff"][1], attention_grouping(model, x, mask)["diff"])
    fig = plot_grouping(grouping, title="tiny")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2


def test_layer_sweep_runs_one_caap_per_end(tmp_path):
    model = make_hooked("vit")
    methods = layer_sweep_methods(model, ends=[0, 2])
    assert list(methods) == ["0..0", "0..2"]
    samples = [write_sample(tmp_path, 0, np.s_[0:32, 0:32])]
    records = evaluate(model, methods, samples, tmp_path / "sweep.jsonl", n_steps=2, progress=False)
    assert {r["method"] for r in records} == {"0..0", "0..2"}
    assert records[0]["aupr1"] != pytest.approx(records[1]["aupr1"], abs=1e-9)
    fig = plot_layer_sweep(summarize(records))
    assert len(fig.axes) == 6
