import json

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from caap.cli import main
from caap.plot import compare, overlay, to_display
from tests.conftest import FAMILIES, make_hooked, make_timm

matplotlib.use("Agg")


@pytest.fixture
def checkpoint(tmp_path):
    name, kwargs = FAMILIES["dinov2"]
    save_file(make_timm("dinov2").state_dict(), str(tmp_path / "tiny.safetensors"))
    (tmp_path / "tiny.json").write_text(json.dumps({
        "timm_model_name": name, "create_model_kwargs": kwargs, "class_names": [f"class_{i}" for i in range(7)],
        "data_config": {"crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bicubic",
                        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    image = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((80, 90, 3)) * 255).astype("uint8")).save(image)
    return tmp_path / "tiny.safetensors", image


def test_explain_offline_with_local_weights(checkpoint, tmp_path, capsys):
    weights, image = checkpoint
    out = tmp_path / "out" / "overlay.png"
    assert main(["explain", str(image), "--weights", str(weights), "--out", str(out), "--target", "class_3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("class_") >= 6 and "  5. class_" in printed
    assert "explained class 3 (class_3" in printed
    assert out.is_file() and Image.open(out).size[0] > 200


def test_explain_reports_missing_download_in_one_line(checkpoint, monkeypatch, capsys):
    _, image = checkpoint

    def offline(*args, **kwargs):
        raise OSError("hub unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    assert main(["explain", str(image), "--model", "vit_base_patch16_224"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--weights" in err and "vit_base_patch16_224" in err


def test_explain_rejects_bad_target(checkpoint, capsys):
    weights, image = checkpoint
    assert main(["explain", str(image), "--weights", str(weights), "--target", "99"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_overlay_and_compare_draw_every_map():
    model = make_hooked("vit")
    images = to_display(model, torch.randn(2, 3, 64, 64))
    assert images.shape == (2, 64, 64, 3) and images.min() >= 0 and images.max() <= 1
    maps = {"a": torch.rand(2, 4, 4), "b": torch.rand(2, 64, 64)}
    fig = compare(images, maps)
    assert len(fig.axes) == 6 and fig.axes[1].get_title() == "a"
    ax = overlay(images[0], torch.zeros(4, 4), title="flat")
    assert len(ax.images) == 2 and ax.images[1].get_array().max() == 0
