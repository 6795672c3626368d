import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from analysis.data import Sample
from analysis.evaluate import evaluate, summarize
from analysis.figures import plot_ablation, plot_curves, plot_gallery, plot_grouping, plot_layer_sweep
from analysis.grouping import attention_grouping
from analysis.sweeps import (InstanceSample, blank_methods, grouping_over_samples, iter_instances, layer_sweep_methods,
                             load_instance_manifest, load_instances, selection_methods)
from tests.conftest import make_hooked

matplotlib.use("Agg")


def write_sample(tmp_path, i, *boxes):
    rng = np.random.default_rng(i)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(tmp_path / f"im{i}.png")
    paths = []
    for k, box in enumerate(boxes):
        mask = np.zeros((64, 64), dtype="uint8")
        mask[box] = 255
        Image.fromarray(mask).save(tmp_path / f"m{i}_{k}.png")
        paths.append(tmp_path / f"m{i}_{k}.png")
    return InstanceSample(tmp_path / f"im{i}.png", tuple(paths), 1, f"s{i}")


def test_instance_manifest_reads_pairs(tmp_path):
    a = write_sample(tmp_path, 0, np.s_[0:32, 0:32], np.s_[32:, 32:])
    rows = ["image,mask,label,kind,mask_a,mask_b",
            f"im0.png,m0_0.png,3,single,,", f"im0.png,m0_0.png,4,pair,{a.masks[0].name},{a.masks[1].name}"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    single, pair = load_instance_manifest(tmp_path / "manifest.csv")
    assert len(single.masks) == 1 and len(pair.masks) == 2 and pair.label == 4
    model = make_hooked("vit")
    x, masks = load_instances(model, pair)
    assert x.shape == (1, 3, 64, 64) and masks.shape == (2, 64, 64) and masks[1, 40, 40] and not masks[0, 40, 40]
    with pytest.raises(ValueError, match="no samples"):
        load_instance_manifest(tmp_path / "manifest.csv", kind="triple")


def test_grouping_over_samples_batches_and_skips(tmp_path):
    model = make_hooked("vit")
    samples = [write_sample(tmp_path, 0, np.s_[0:32, 0:32], np.s_[32:64, 32:64]),
               write_sample(tmp_path, 1, np.s_[0:4, 0:4]),  # covers no patch: skipped
               write_sample(tmp_path, 2, np.s_[16:48, 16:64])]
    grouping = grouping_over_samples(model, iter_instances(model, samples), batch_size=1, progress=False)
    assert grouping.per_image["score"].shape == (2, 3) and grouping.names == ["s0", "s2"]
    x, masks = load_instances(model, samples[2])
    one = attention_grouping(model, x, [masks])
    assert torch.allclose(grouping.per_image["score"][1], one.per_image["score"][0])
    both = grouping_over_samples(model, iter_instances(model, samples), batch_size=8, progress=False)
    assert torch.allclose(both.per_image["intra"], grouping.per_image["intra"], atol=1e-6, equal_nan=True)
    assert grouping.n("inter").tolist() == [1, 1, 1]  # only the two-instance image
    fig = plot_grouping(grouping, cutoff=2, title="tiny")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4  # intra, inter, background + the cutoff line
    assert "0-based" in fig.axes[0].get_xlabel()


def test_sweep_blank_selection_methods_and_figures(tmp_path):
    model = make_hooked("vit")
    methods = layer_sweep_methods(model, ends=[0, 2])
    assert list(methods) == ["0..0", "0..2"]
    assert list(blank_methods(model)) == ["white", "black", "mean", "noisy", "blur_noisy"]
    sel = selection_methods(model, ["none", "box-r2"])
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(sel["none"](x, 1), sel["box-r2"](x, 1))
    with pytest.raises(ValueError, match="unknown selection"):
        selection_methods(model, ["disk"])
    with pytest.raises(ValueError, match="unknown blanks"):
        blank_methods(model, ["grey"])
    s = write_sample(tmp_path, 0, np.s_[0:32, 0:32])
    samples = [Sample(s.image, s.masks[0], 1, s.name)]
    records = evaluate(model, methods, samples, tmp_path / "sweep.jsonl", n_steps=2, progress=False)
    assert {r["method"] for r in records} == {"0..0", "0..2"}
    summary = summarize(records)
    fig = plot_layer_sweep(summary, cutoff=2)
    assert len(fig.axes) == 6 and "0-based" in fig.axes[0].get_xlabel()
    assert len(plot_ablation(summary).axes) == 6
    curves = {"a": {"insertion": np.random.rand(3, 5), "deletion": np.random.rand(3, 5)}}
    assert len(plot_curves(curves).axes) == 2
    many = {f"m{i}": curves["a"] for i in range(14)}  # more methods than tab10 has colours: none shared
    styles = {(line.get_color(), line.get_linestyle()) for line in plot_curves(many).axes[0].get_lines()}
    assert len(styles) == 14
    images = np.random.rand(2, 64, 64, 3)
    masks = [np.zeros((64, 64), bool), None]
    masks[0][10:30, 10:30] = True
    fig = plot_gallery(images, masks, {"m1": torch.rand(2, 4, 4), "m2": torch.rand(2, 4, 4)})
    assert len(fig.axes) == 6
