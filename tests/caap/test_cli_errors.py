"""`caap explain` on bad input: one line on stderr, exit status 2, no traceback, and the model is not loaded
when the input can be checked without it (issue 13, item 3). Also the documented behaviours: 16-bit PNGs,
alpha, EXIF orientation, --out directories and suffixes. Never touches the network."""
import json
import re
import socket
import time

import huggingface_hub.constants as hub_constants
import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from caap import cli, cli_models
from caap.cli import main
from tests.conftest import FAMILIES, make_timm

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def isolated_hub(monkeypatch):
    """Restore HF_HUB_OFFLINE (env and constant) after each test; the probe never reaches the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "unset")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", hub_constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(cli_models, "hub_reachable", lambda *a, **k: False)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail loudly if anything tries to build a model."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the model must not be loaded for this error")

    monkeypatch.setattr(cli_models, "load_model", forbidden)
    monkeypatch.setattr(timm, "create_model", forbidden)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def text_file(path):
    path.write_text("hello")
    return path


def truncated_png(path):
    Image.fromarray((np.random.default_rng(1).random((60, 60, 3)) * 255).astype("uint8")).save(path)
    path.write_bytes(path.read_bytes()[:400])
    return path


# (id, builds argv from (weights, image, tmp_path), stderr regex)
CASES = [
    ("missing image", lambda w, i, t: [t / "nope.jpg", "--weights", w], r"image not found: .*nope\.jpg"),
    ("image is a directory", lambda w, i, t: [t, "--weights", w], r"is not a file"),
    ("not an image", lambda w, i, t: [text_file(t / "x.png"), "--weights", w],
     r"cannot read image .*x\.png.*cannot identify"),
    ("truncated image", lambda w, i, t: [truncated_png(t / "cut.png"), "--weights", w],
     r"cannot read image .*cut\.png.*truncated"),
    ("out parent is a file", lambda w, i, t: [i, "--weights", w, "--out", i / "o.png"],
     r"--out .*photo\.png.* is a file, not a directory"),
    ("out unknown suffix", lambda w, i, t: [i, "--weights", w, "--out", t / "o.xyz"], r"cannot write '\.xyz' files"),
    ("device cuda without gpu", lambda w, i, t: [i, "--weights", w, "--device", "cuda"], r"--device cuda: no CUDA GPU"),
    ("device nonsense", lambda w, i, t: [i, "--weights", w, "--device", "gpu0"], r"--device 'gpu0' is not a device"),
    ("missing weights", lambda w, i, t: [i, "--weights", t / "none.safetensors"], r"--weights: file not found"),
    ("unknown model", lambda w, i, t: [i, "--model", "vit_bogus_patch16_224"],
     r"unknown timm model 'vit_bogus_patch16_224' \(--model\); close matches: vit_"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_user_errors_before_the_model_loads(case, checkpoint, tmp_path, monkeypatch, no_model_load, capsys):
    _, build, pattern = case
    weights, image = checkpoint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run(["explain", *build(weights, image, tmp_path)], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("caap: "), err
    assert "Traceback" not in err
    assert re.search(pattern, err), err


@pytest.mark.parametrize("argv,pattern", [
    (["--layers", "0", "9"], r"n_layers=3"),
    (["--target", "-1"], r"--target -1 is out of range: the model has 7 classes"),
    (["--target", "class_"], r"matches 7 class names"),
], ids=["layers", "negative target", "ambiguous target"])
def test_user_errors_after_the_model_loads(argv, pattern, checkpoint, capsys):
    weights, image = checkpoint
    code, _, err = run(["explain", image, "--weights", weights, *argv], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(pattern, err), err


def test_headless_model_is_refused(tmp_path, capsys):
    name, kwargs = FAMILIES["clip_headless"]
    save_file(make_timm("clip_headless").state_dict(), str(tmp_path / "clip.safetensors"))
    (tmp_path / "clip.json").write_text(json.dumps({"timm_model_name": name, "create_model_kwargs": kwargs}))
    image = tmp_path / "p.png"
    Image.fromarray(np.zeros((70, 70, 3), np.uint8)).save(image)
    code, _, err = run(["explain", image, "--weights", tmp_path / "clip.safetensors"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no classifier head" in err, err


@pytest.mark.parametrize("cache_check", [True, False], ids=["cache checked first", "timm's own download path"])
def test_offline_known_model_fails_fast_without_network(cache_check, checkpoint, tmp_path, monkeypatch, capsys):
    """The hub probe fails -> huggingface_hub offline mode -> the weights are not in the (empty) cache: one
    line at once, without building the model; and if the cache check cannot tell, timm's real download path
    fails at once too (instead of ~50 s of retries). No socket is opened."""
    _, image = checkpoint

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    built = []
    real_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(a) or real_create(*a, **k))
    if not cache_check:
        monkeypatch.setattr(cli_models, "weights_in_cache", lambda name: None)
    start = time.perf_counter()
    code, _, err = run(["explain", image, "--model", "vit_tiny_patch16_224"], capsys)
    elapsed = time.perf_counter() - start
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'vit_tiny_patch16_224'" in err and "unreachable" in err and "--weights" in err
    assert hub_constants.HF_HUB_OFFLINE is True
    assert bool(built) is not cache_check
    assert elapsed < 20  # building ViT-Ti takes ~1 s; the retries it replaces took ~50 s


def test_weights_in_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    assert cli.weights_in_cache("vit_tiny_patch16_224") is False
    snapshot = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    assert cli.weights_in_cache("vit_tiny_patch16_224") is True


def test_hub_probe(monkeypatch):
    """The real probe: a closed local port is unreachable, a listening one reachable; user choice respected."""
    monkeypatch.undo()  # drop the autouse stub of hub_reachable (restores env and constant too)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert cli.hub_reachable(timeout=2)
    listener.close()
    assert not cli.hub_reachable(timeout=2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user decided: no probe, no switch
    assert cli.fail_fast_offline() is False


# ------------------------------------------------------------------------------------- documented behaviours
def test_sixteen_bit_png_is_scaled_not_white(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((20, 30), round(0.3 * 65535), np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # what PIL hands over: would clip to 255 in convert("RGB")
    pixels = np.asarray(cli.read_image(path))
    assert pixels.shape == (20, 30, 3) and np.all(pixels == round(0.3 * 255))


def test_alpha_is_composited_onto_the_blank_colour(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    rgba[2, 0, 3] = 128  # one half-transparent pixel
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = cli.read_image(path)
    assert image.mode == "RGBA"
    for blank, mean, expected in (("white", (0.5,) * 3, 255), ("black", (0.5,) * 3, 0),
                                  ("mean", (0.2, 0.4, 0.6), None)):
        colour = cli.blank_colour(blank, mean)
        flat = np.asarray(cli.flatten_alpha(image, colour)).astype(int)
        background = [round(255 * c) for c in colour]
        assert flat[0, 0].tolist() == [200, 0, 0]
        assert flat[3, 3].tolist() == background
        if expected is not None:
            assert background == [expected] * 3
        half = 128 / 255
        assert np.allclose(flat[2, 0], [200 * half + background[0] * (1 - half),
                                        background[1] * (1 - half), background[2] * (1 - half)], atol=1)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[0, 0] = 255  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "e.png"
    Image.fromarray(pixels).save(path, exif=exif)
    shown = np.asarray(cli.read_image(path))
    assert shown.shape == (20, 10, 3)
    assert shown[0, -1].tolist() == [255, 255, 255]  # the stored top-left ends at the top-right


@pytest.mark.parametrize("out,expected", [
    ("{t}/results", "{t}/results.png"),  # no suffix: .png added
    ("{t}/existing_dir", "{t}/existing_dir/photo_caap.png"),  # an existing directory
    ("{t}/new_dir/", "{t}/new_dir/photo_caap.png"),  # a trailing separator: a directory, created
    ("{t}/fig.pdf", "{t}/fig.pdf"),  # another matplotlib format
], ids=["no suffix", "directory", "trailing slash", "pdf"])
def test_out_path_written_is_the_path_printed(out, expected, checkpoint, tmp_path, capsys):
    weights, image = checkpoint
    (tmp_path / "existing_dir").mkdir()
    code, printed, _ = run(["explain", image, "--weights", weights, "--out", out.format(t=tmp_path)], capsys)
    written = expected.format(t=tmp_path)
    assert code == 0 and printed.rstrip().endswith(f"overlay written to {written}")
    assert (tmp_path / written).is_file()


def test_sixteen_bit_png_end_to_end(checkpoint, tmp_path, capsys):
    weights, _ = checkpoint
    path = tmp_path / "g16.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50)) * 65535).astype(np.uint16)).save(path)
    code, printed, _ = run(["explain", path, "--weights", weights], capsys)
    assert code == 0 and (tmp_path / "g16_caap.png").is_file()
