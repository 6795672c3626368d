"""Tiny random timm ViTs of every supported family, shared by all test packages."""
import pytest
import timm
import torch

from vit_lens import HookedViT

# name -> (timm name, create_model kwargs); small enough to run in milliseconds.
TINY = dict(depth=3, embed_dim=48, num_heads=3)
FAMILIES = {
    "vit": ("vit_base_patch16_224", dict(img_size=64, num_classes=7, **TINY)),
    "vit_avg": ("vit_base_patch16_224", dict(img_size=64, num_classes=7, global_pool="avg", **TINY)),
    "deit3": ("deit3_small_patch16_224", dict(img_size=64, num_classes=7, **TINY)),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", dict(img_size=64, num_classes=7, **TINY)),
    "clip_headless": ("vit_base_patch16_clip_224", dict(img_size=64, num_classes=0, **TINY)),
    "dinov2": ("vit_small_patch14_dinov2", dict(img_size=56, num_classes=7, **TINY)),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", dict(img_size=56, num_classes=7, **TINY)),
}


def make_timm(family: str, seed: int = 0) -> torch.nn.Module:
    """A random timm model whose every parameter is perturbed (timm zero-inits heads and biases, which
    would hide porting mistakes)."""
    name, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def make_hooked(family: str, seed: int = 0) -> HookedViT:
    return HookedViT.from_timm(make_timm(family, seed))


def random_images(model: HookedViT, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.cfg.in_chans, *model.cfg.image_size, generator=g)


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


def write_checkpoint(folder, family: str = "vit", seed: int = 0, name: str = "tiny"):
    """``folder/<name>.safetensors`` + its JSON sidecar (squash preprocessing): what ``--weights`` takes."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    timm_name, kwargs = FAMILIES[family]
    save_file(make_timm(family, seed=seed).state_dict(), folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps({"timm_model_name": timm_name, "create_model_kwargs": kwargs,
                                                     "data_config": {"crop_pct": 1.0, "crop_mode": "squash"}}))
    return folder / f"{name}.safetensors"


def write_manifest(folder, n: int, seed: int = 0, size: int = 64, n_classes: int = 7):
    """``n`` random images with a box mask each and ``folder/manifest.csv`` (label ``i % n_classes``, kind single)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["image,mask,label,kind"]
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(folder / f"im{i}.png")
        mask = np.zeros((size, size), "uint8")
        mask[8 * i % (size - 24):8 * i % (size - 24) + 24, 16:40] = 255
        Image.fromarray(mask).save(folder / f"m{i}.png")
        rows.append(f"im{i}.png,m{i}.png,{i % n_classes},single")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def one_line_error(code, capsys, *needles) -> str:
    """A CLI refusal as the project promises it: exit status 2 and one stderr line (no traceback) holding each of
    ``needles``; returns the line."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err
