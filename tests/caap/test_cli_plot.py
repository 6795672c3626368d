import matplotlib
import timm
import torch
from PIL import Image

from caap import cli, cli_models
from caap.cli import main
from caap.plot import compare, overlay, to_display
from tests.conftest import make_hooked

matplotlib.use("Agg")


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
    monkeypatch.setattr(cli_models, "hub_reachable", lambda *a, **k: True)  # the download itself fails

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
