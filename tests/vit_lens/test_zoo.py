"""The paper's model table: every backbone named, real timm names with ImageNet-1k heads, offline loading."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

from vit_lens import HookedViT
from vit_lens.zoo import PAPER_MODELS, dinov2_head_url, get_paper_model, list_paper_models, load_paper_model

PAPER = ["ViT-S/16", "ViT-B/16", "ViT-L/16", "DeiT3-S/16", "DeiT3-B/16", "DeiT3-L/16", "DeiT3-H/14", "CLIP-B/16",
         "CLIP-L/14", "CLIP-H/14", "DINOv2-S/14", "DINOv2-B/14", "DINOv2-L/14", "DINOv2-G/14", "ResNet-18",
         "ResNet-50", "DenseNet-161", "VGG-16"]
TINY = dict(depth=1, embed_dim=48, num_heads=3)


def test_table_names_every_paper_backbone_with_real_timm_checkpoints():
    assert sorted(m.paper_name for m in PAPER_MODELS.values()) == sorted(PAPER)
    available = set(timm.list_models(pretrained=True))
    for entry in PAPER_MODELS.values():
        assert entry.timm_name in available, entry.timm_name
        cfg = get_pretrained_cfg(entry.timm_name).to_dict()
        if entry.dinov2_arch is None:  # the checkpoint carries the ImageNet-1k classifier
            assert cfg["num_classes"] == 1000, entry.timm_name
        else:  # headless backbone + official linear head
            assert cfg["num_classes"] == 0 and "dinov2" in entry.timm_name
        assert "px" in entry.preprocessing
    assert list_paper_models()[0] == "paper:vit-s16" and get_paper_model("paper:clip-l14").paper_name == "CLIP-L/14"
    assert get_paper_model("dinov2-g14").timm_name == "vit_giant_patch14_dinov2.lvd142m"
    with pytest.raises(ValueError, match="unknown paper model 'paper:vit-x'"):
        get_paper_model("paper:vit-x")


def test_dinov2_head_urls_follow_the_official_hub():
    # dinov2/hub/classifiers.py: BASE/{dinov2_vitl14}/{dinov2_vitl14[_reg4]}_linear{4|}_head.pth
    assert dinov2_head_url("vitl14", 4) == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_linear4_head.pth"
    assert dinov2_head_url("vits14", 1) == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_linear_head.pth"
    assert dinov2_head_url("vitg14", 1, 4).endswith("dinov2_vitg14/dinov2_vitg14_reg4_linear_head.pth")
    with pytest.raises(ValueError, match="head_layers must be 1 or 4"):
        dinov2_head_url("vitl14", 2)


@pytest.mark.parametrize("key", ["vit-b16", "deit3-h14", "clip-l14"])
def test_transformers_build_offline_with_their_preprocessing(key):
    model = load_paper_model(f"paper:{key}", pretrained=False, **TINY)
    entry = get_paper_model(key)
    cfg = get_pretrained_cfg(entry.timm_name).to_dict()
    assert isinstance(model, HookedViT) and model.cfg.num_classes == 1000
    assert model.cfg.mean == tuple(cfg["mean"]) and model.cfg.crop_pct == cfg["crop_pct"]
    assert model.cfg.patch_size == ((14, 14) if key.endswith("14") else (16, 16))
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_cnn_builds_offline_and_from_a_local_checkpoint(tmp_path):
    model = load_paper_model("paper:resnet18", pretrained=False)
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 1000 and not model.training
    other = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    loaded = load_paper_model("paper:resnet18", checkpoint_path=path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("key,layers", [("dinov2-s14", 1), ("dinov2-g14", 4)])
def test_dinov2_builds_offline_with_a_random_official_style_head(key, layers):
    model = load_paper_model(f"paper:{key}", pretrained=False, head_layers=layers, img_size=56, depth=4,
                             embed_dim=48, num_heads=3)
    cfg = model.cfg
    assert cfg.pooling == "cls_mean" and cfg.head_n_last_blocks == layers and cfg.num_classes == 1000
    assert cfg.mlp_type == ("swiglu" if key == "dinov2-g14" else "mlp")
    assert (cfg.crop_pct, cfg.interpolation, cfg.mean) == (0.875, "bicubic", (0.485, 0.456, 0.406))
    assert model(torch.zeros(1, 3, 56, 56)).shape == (1, 1000)


def test_dinov2_from_meta_transformers_checkpoint(tmp_path):
    """source="hf": Meta's transformers DINOv2 classifier (CLS ⊕ mean patch, one-layer head) at 224 px equals the
    transformers forward, which interpolates the position embedding at run time like the official hub."""
    transformers = pytest.importorskip("transformers")
    assert get_paper_model("paper:dinov2-b14").hf_name == "facebook/dinov2-base-imagenet1k-1-layer"
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                       image_size=56, patch_size=14, num_labels=10)
    hf = transformers.Dinov2ForImageClassification(config).eval()
    hf.save_pretrained(tmp_path / "dinov2")
    model = load_paper_model("paper:dinov2-s14", source="hf", hf_name=tmp_path / "dinov2", head_layers=1)
    assert model.cfg.image_size == (224, 224) and model.cfg.pooling == "cls_mean" and model.cfg.crop_pct == 0.875
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="head_layers=1"):
        load_paper_model("paper:dinov2-s14", source="hf", hf_name=tmp_path / "dinov2")
    with pytest.raises(ValueError, match="DINOv2 paper models only"):
        load_paper_model("paper:vit-s16", source="hf")
    with pytest.raises(ValueError, match="source must be 'timm' or 'hf'"):
        load_paper_model("paper:dinov2-s14", source="torch.hub")
