"""Every entry point takes a HuggingFace transformers directory (`--hf`) and `caap explain` an open_clip model
(`--open-clip`, with `--text` as the explained score), offline, on tiny random models; bad combinations are one
line with exit status 2 (issue 19)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.cli import main
from caap import cli, cli_models

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(cli_models, "hub_reachable", lambda *a, **k: False)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A user's fine-tune as save_pretrained writes it: config, weights and image processor."""
    tmp = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=5,
                                    id2label={i: f"class{i}" for i in range(5)})
    transformers.ViTForImageClassification(config).eval().save_pretrained(tmp / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp / "vit")
    rng = np.random.default_rng(0)
    rows = ["image,mask,label"]
    for i in range(3):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(tmp / f"im{i}.png")
        mask = np.zeros((40, 40), "uint8")
        mask[5:25, 10:30] = 255
        Image.fromarray(mask).save(tmp / f"m{i}.png")
        rows.append(f"im{i}.png,m{i}.png,{i}")
    (tmp / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny open_clip model in open_clip's own local-dir layout (config + weights)."""
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("clip") / "tiny_clip"
    tmp.mkdir()
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}
    (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "open_clip_model.safetensors"))
    return tmp


def one_line(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_explain_bench_and_figure_take_an_hf_directory(hf_dir, tmp_path, capsys):
    from vit_lens import HookedViT

    model = HookedViT.from_hf(str(hf_dir / "vit"))
    assert main(["explain", str(hf_dir / "im0.png"), "--hf", str(hf_dir / "vit"), "--out", str(tmp_path / "o.png")]) == 0
    out = capsys.readouterr().out
    x = model.transform(Image.open(hf_dir / "im0.png").convert("RGB"))[None]
    top = model.cfg.class_names[int(model(x).argmax())]
    assert f"1. {top}" in out and (tmp_path / "o.png").is_file()

    bench = ["bench", "--hf", str(hf_dir / "vit"), "--dataset", "manifest", "--root", str(hf_dir / "manifest.csv"),
             "--methods", "caap,grad-cam", "--n-steps", "2", "--no-progress", "--out", str(tmp_path / "b")]
    assert main(bench) == 0
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["model"].startswith("hf:") and len(run["weights_sha256"]) == 64
    rows = [json.loads(r) for r in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= r["deletion"] <= 1 for r in rows)
    capsys.readouterr()
    figure = ["figure", "gallery", "--hf", str(hf_dir / "vit"), "--root", str(hf_dir / "manifest.csv"),
              "--methods", "caap", "--no-progress", "--out", str(tmp_path / "g")]
    assert main(figure) == 0 and (tmp_path / "g" / "gallery.png").is_file()


def test_hf_source_errors_are_one_line(hf_dir, tmp_path, capsys):
    image = str(hf_dir / "im0.png")
    one_line(capsys, main(["explain", image, "--hf", "someone/not-cached-vit"]), "Hub is unreachable",
             "save_pretrained")
    one_line(capsys, main(["explain", image, "--hf", str(tmp_path)]), "must hold config.json")
    one_line(capsys, main(["explain", image, "--hf", str(hf_dir / "vit"), "--weights", str(image)]), "drop --weights")
    one_line(capsys, main(["explain", image, "--hf", str(hf_dir / "vit"), "--model", "vit_tiny_patch16_224"]),
             "--model and --hf both name a model")
    one_line(capsys, main(["explain", image, "--hf", str(hf_dir / "vit"), "--text", "a dog"]),
             "--text needs an --open-clip model")


def test_explain_open_clip_with_text_equals_the_python_api(clip_dir, hf_dir, tmp_path, capsys):
    import torch.nn.functional as F

    from caap import CAAP
    from vit_lens import HookedViT

    name = f"local-dir:{clip_dir}"
    out = tmp_path / "clip.png"
    assert main(["explain", str(hf_dir / "im0.png"), "--open-clip", name, "--text", "a photo of a dog",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    clip, _, preprocess = open_clip.create_model_and_transforms(name)
    text = clip.eval().encode_text(open_clip.get_tokenizer(name)(["a photo of a dog"]))[0]
    model = HookedViT.from_open_clip(clip)
    x = preprocess(Image.open(hf_dir / "im0.png").convert("RGB"))[None]
    with torch.no_grad():
        expected = F.cosine_similarity(clip.encode_image(x), text[None])[0]
    assert f"= {float(expected):.4f}" in printed and out.is_file()
    caap_map = CAAP(model, score=lambda e: F.cosine_similarity(e, text.expand_as(e), dim=-1)).attribute(x)
    assert caap_map.shape == (1, 4, 4) and caap_map.std() > 0
    one_line(capsys, main(["explain", str(hf_dir / "im0.png"), "--open-clip", name]), "pass --text PROMPT")
    one_line(capsys, main(["explain", str(hf_dir / "im0.png"), "--open-clip", "ViT-B-32", "--text", "x"]),
             "--weights FILE", "--pretrained TAG")
    one_line(capsys, main(["explain", str(hf_dir / "im0.png"), "--open-clip", "ViT-B-99", "--weights",
                           str(clip_dir / "open_clip_model.safetensors"), "--text", "x"]), "unknown open_clip model")
