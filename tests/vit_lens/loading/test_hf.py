"""HookedViT.from_hf: outputs and per-layer residual streams equal the transformers forward (float32 and
float64), position-embedding interpolation, save_pretrained directories offline, the image processor as
model.transform, and refusals. Tiny randomly initialized configs built here (never the hub)."""
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from vit_lens import HookedViT, UnsupportedModelError  # noqa: E402

REL_TOL = 1e-5
SMALL = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, image_size=32, patch_size=8)
CLIP_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def build(family: str) -> torch.nn.Module:
    """A tiny random model of ``family`` with every parameter perturbed (HF zero-inits biases, LayerScale
    and the DeiT tokens, which would hide porting mistakes)."""
    T = transformers
    torch.manual_seed(0)
    vit = dict(intermediate_size=96, **SMALL)
    dino = dict(mlp_ratio=2, **SMALL)
    clip = dict(intermediate_size=96, **SMALL)
    model = {
        "vit": lambda: T.ViTForImageClassification(T.ViTConfig(num_labels=5, **vit)),
        "vit_model": lambda: T.ViTModel(T.ViTConfig(**vit), add_pooling_layer=False),
        "vit_gelu_new": lambda: T.ViTForImageClassification(T.ViTConfig(num_labels=5, hidden_act="gelu_new",
                                                                         qkv_bias=False, **vit)),
        "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(num_labels=5, **vit)),
        "deit_model": lambda: T.DeiTModel(T.DeiTConfig(**vit), add_pooling_layer=False),
        "dinov2": lambda: T.Dinov2ForImageClassification(T.Dinov2Config(num_labels=5, **dino)),
        "dinov2_model": lambda: T.Dinov2Model(T.Dinov2Config(**dino)),
        "dinov2_swiglu": lambda: T.Dinov2ForImageClassification(T.Dinov2Config(num_labels=5, use_swiglu_ffn=True,
                                                                               **dino)),
        "dinov2_reg": lambda: T.Dinov2WithRegistersForImageClassification(
            T.Dinov2WithRegistersConfig(num_labels=5, num_register_tokens=2, **dino)),
        "dinov2_reg_model": lambda: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(num_register_tokens=2,
                                                                                          **dino)),
        "clip_vision": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**clip)),
        "clip_projection": lambda: T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(projection_dim=16, **clip)),
        "clip_quickgelu": lambda: T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(projection_dim=16,
                                                                                     hidden_act="quick_gelu", **clip)),
        "clip_model": lambda: T.CLIPModel(T.CLIPConfig(vision_config=clip, text_config=CLIP_TEXT, projection_dim=16)),
        "clip_classifier": lambda: T.CLIPForImageClassification(T.CLIPConfig(vision_config=clip, text_config=CLIP_TEXT,
                                                                             num_labels=5)),
    }[family]()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


FAMILIES = ["vit", "vit_model", "vit_gelu_new", "deit", "deit_model", "dinov2", "dinov2_model", "dinov2_swiglu",
            "dinov2_reg", "dinov2_reg_model", "clip_vision", "clip_projection", "clip_quickgelu", "clip_model",
            "clip_classifier"]


def hf_output(model: torch.nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """The output HookedViT reproduces (see vit_lens.loading.hf)."""
    name = type(model).__name__
    if name == "CLIPModel":
        out = model.get_image_features(pixel_values=x, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4.x: a tensor
    out = model(x, **kwargs)
    if name in ("ViTModel", "DeiTModel"):
        return out.last_hidden_state[:, 0]
    for field in ("logits", "image_embeds", "pooler_output"):
        if getattr(out, field, None) is not None:
            return getattr(out, field)
    raise AssertionError(f"no output for {name}")


def images(model: HookedViT, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.cfg.in_chans, *model.cfg.image_size, generator=g, dtype=model.cfg.dtype)


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1  # a non-degenerate output
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= REL_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_output_matches_transformers(family, dtype):
    hf = build(family).to(dtype)
    model = HookedViT.from_hf(hf)
    assert model.cfg.dtype == dtype
    x = images(model)
    with torch.no_grad():
        assert_close(model(x), hf_output(hf, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", ["vit", "deit", "dinov2_swiglu", "dinov2_reg", "clip_projection"])
def test_hidden_states_match_per_layer(family, dtype):
    """HF's hidden_states[0] is the residual stream entering block 0 (after CLIP's pre_layrnorm) and
    hidden_states[l + 1] the one leaving block l, with the same token order (CLS, distillation/registers,
    patches)."""
    hf = build(family).to(dtype)
    model = HookedViT.from_hf(hf)
    x = images(model)
    with torch.no_grad():
        states = hf(x, output_hidden_states=True).hidden_states
        _, cache = model.run_with_cache(x)
    assert len(states) == model.cfg.n_layers + 1
    ours = [cache["blocks.0.hook_resid_pre"]]
    ours += [cache[f"blocks.{layer}.hook_resid_post"] for layer in range(model.cfg.n_layers)]
    for layer, (got, expected) in enumerate(zip(ours, states)):
        scale = expected.abs().max()
        assert ((got - expected).abs().max() / scale).item() <= REL_TOL, f"hidden_states[{layer}]"


def test_config_reads_architecture():
    deit = HookedViT.from_hf(build("deit")).cfg
    assert deit.n_register_tokens == 1 and deit.n_prefix_tokens == 2 and deit.pos_embed_on_prefix  # distillation token
    assert (deit.n_layers, deit.d_model, deit.n_heads, deit.d_head, deit.d_mlp) == (3, 48, 3, 16, 96)
    assert deit.eps == 1e-12 and deit.grid_size == (4, 4) and deit.num_classes == 5
    dino = HookedViT.from_hf(build("dinov2_reg"))
    assert dino.cfg.layer_scale and dino.cfg.pooling == "cls_mean" and dino.cfg.head_n_last_blocks == 1
    assert dino.cfg.n_register_tokens == 2 and dino.pos_embed.W_pos.shape == (1 + 2 + 16, 48)
    assert torch.equal(dino.pos_embed.W_pos[1:3], torch.zeros(2, 48))  # HF adds no position to registers
    swiglu = HookedViT.from_hf(build("dinov2_swiglu")).cfg
    assert swiglu.mlp_type == "swiglu" and swiglu.act_fn == "silu"
    clip = HookedViT.from_hf(build("clip_quickgelu")).cfg
    assert clip.pre_norm and clip.fc_norm and not clip.final_norm and clip.act_fn == "quick_gelu"
    assert clip.num_classes == 16 and clip.class_names is None and clip.head_output == "embedding"
    classifier = HookedViT.from_hf(build("clip_classifier")).cfg
    assert classifier.pooling == "avg" and classifier.head_output == "logits"  # a classifier, not an embedding
    assert HookedViT.from_hf(build("clip_model")).cfg.head_output == "embedding"
    assert HookedViT.from_hf(build("vit")).cfg.head_output == "logits"


def test_class_names_and_model_name():
    hf = build("vit")
    hf.config.id2label = {i: f"class {i}" for i in range(5)}
    hf.config._name_or_path = "me/my-finetune"
    cfg = HookedViT.from_hf(hf).cfg
    assert cfg.class_names == [f"class {i}" for i in range(5)] and cfg.model_name == "hf:me/my-finetune"


@pytest.mark.parametrize("family", ["dinov2", "dinov2_reg"])
def test_dinov2_position_embedding_interpolated_as_hf(family):
    """HF DINOv2 interpolates its position embedding to the input size at every forward: a model configured
    for 56 px (7x7 grid) run at 32 px (4x4)."""
    T = transformers
    torch.manual_seed(0)
    config_cls, model_cls = ((T.Dinov2Config, T.Dinov2ForImageClassification) if family == "dinov2" else
                             (T.Dinov2WithRegistersConfig, T.Dinov2WithRegistersForImageClassification))
    hf = model_cls(config_cls(num_labels=5, mlp_ratio=2, **{**SMALL, "image_size": 56})).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = HookedViT.from_hf(hf, image_size=32)
    assert model.cfg.grid_size == (4, 4)
    x = images(model)
    with torch.no_grad():
        assert_close(model(x), hf(x).logits)
        assert (model(x) - HookedViT.from_hf(hf)(torch.nn.functional.interpolate(x, 56))).abs().max() > 1e-3


def test_vit_at_another_size_equals_interpolate_pos_encoding():
    hf = build("vit")
    model = HookedViT.from_hf(hf, image_size=(48, 40))
    x = images(model)
    with torch.no_grad():
        assert_close(model(x), hf(x, interpolate_pos_encoding=True).logits)


def test_dtype_and_device_options():
    hf = build("deit")
    model = HookedViT.from_hf(hf, dtype=torch.float64)
    assert model.cfg.dtype == torch.float64 and next(hf.parameters()).dtype == torch.float32
    x = images(model)
    with torch.no_grad():
        assert ((model(x).float() - hf(x.float()).logits).abs().max()).item() <= 1e-4


# ---------------------------------------------------------------------------------------- saved directories
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)


def random_pil(seed: int = 0, size=(300, 260)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def test_save_pretrained_directory_loads_offline(tmp_path, monkeypatch):
    hf = build("vit")
    hf.config.id2label = {i: f"label-{i}" for i in range(5)}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    hf.save_pretrained(tmp_path)
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6])
    processor.save_pretrained(tmp_path)
    offline(monkeypatch)
    model = HookedViT.from_hf(str(tmp_path))
    assert model.cfg.model_name == f"hf:{tmp_path}" and model.cfg.class_names == [f"label-{i}" for i in range(5)]
    assert model.cfg.mean == (0.4, 0.5, 0.6) and model.cfg.crop_mode == "squash"
    x = images(model)
    with torch.no_grad():
        assert_close(model(x), hf(x).logits)
    pil = random_pil()
    expected = processor(pil, return_tensors="pt")["pixel_values"][0]
    assert model.transform(pil).shape == expected.shape == (3, 32, 32)
    assert (model.transform(pil) - expected).abs().max() <= 2 / 255 / 0.5  # torchvision vs PIL resampling


def test_clip_model_directory_loads_vision_tower(tmp_path, monkeypatch):
    hf = build("clip_model")
    hf.save_pretrained(tmp_path)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    offline(monkeypatch)
    model = HookedViT.from_hf(tmp_path)
    assert model.cfg.interpolation == "bicubic" and model.cfg.crop_mode == "center" and model.cfg.crop_pct == 1.0
    x = images(model)
    with torch.no_grad():
        assert_close(model(x), hf_output(hf, x))


def test_missing_directory_is_one_clear_error(tmp_path, monkeypatch):
    offline(monkeypatch)
    with pytest.raises(RuntimeError, match="could not load a transformers config from .*save_pretrained"):
        HookedViT.from_hf(str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------- image processors
def processors():
    T = transformers
    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return {
        "ViT": (T.ViTImageProcessor, dict(size={"height": 64, "width": 48})),
        "DeiT": (T.DeiTImageProcessor, dict(size={"height": 73, "width": 73}, crop_size={"height": 64, "width": 64})),
        "Bit": (T.BitImageProcessor, dict(size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64},
                                          **imagenet)),
        "CLIP": (T.CLIPImageProcessor, dict(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})),
    }


@pytest.mark.parametrize("kind", ["ViT", "DeiT", "Bit", "CLIP"])
def test_transform_equals_image_processor(kind):
    """transformers 5 processors resize uint8 tensors with torchvision (antialiased), timm's transform resizes
    the PIL image: pixels may differ by one or two uint8 levels after rounding (a few in 10^4). With the
    PIL backend (``*ImageProcessorPil``, transformers 4.x's only one) the two are identical."""
    cls, kwargs = processors()[kind]
    hf = build("vit")
    pil = random_pil()
    for processor_cls in (cls, getattr(transformers, cls.__name__ + "Pil", None)):
        if processor_cls is None:
            continue
        processor = processor_cls(**kwargs)
        model = HookedViT.from_hf(hf, image_processor=processor)
        expected = processor(pil, return_tensors="pt")["pixel_values"][0]
        got = model.transform(pil)
        assert got.shape == expected.shape and tuple(model.cfg.image_size) == tuple(expected.shape[1:])
        diff = (got - expected).abs()
        if processor_cls.__name__.endswith("Pil"):
            assert diff.max().item() <= 1e-6
        else:
            assert diff.max().item() <= 2 / 255 / min(model.cfg.std) + 1e-6 and diff.mean().item() <= 1e-3


def test_unsupported_processor_settings_are_named():
    hf = build("vit")
    with pytest.raises(ValueError, match="do_rescale|rescale_factor"):
        HookedViT.from_hf(hf, image_processor=transformers.ViTImageProcessor(do_rescale=False))
    with pytest.raises(ValueError, match="size/crop_size"):
        HookedViT.from_hf(hf, image_processor=transformers.CLIPImageProcessor(do_center_crop=False))


# ---------------------------------------------------------------------------------------- refusals
def test_refusals_name_the_feature():
    T = transformers
    teacher = T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(num_labels=3, intermediate_size=96, **SMALL))
    with pytest.raises(UnsupportedModelError, match="DeiTForImageClassificationWithTeacher.*distillation heads"):
        HookedViT.from_hf(teacher)
    siglip = T.SiglipVisionModel(T.SiglipVisionConfig(intermediate_size=96, **SMALL))
    with pytest.raises(UnsupportedModelError, match="SiglipVisionModel.*attention-pool"):
        HookedViT.from_hf(siglip)
    beit = T.BeitModel(T.BeitConfig(intermediate_size=96, use_relative_position_bias=True, **SMALL))
    with pytest.raises(UnsupportedModelError, match="relative position bias"):
        HookedViT.from_hf(beit)
    with pytest.raises(UnsupportedModelError, match="hidden_act='relu'"):
        HookedViT.from_hf(T.ViTModel(T.ViTConfig(intermediate_size=96, hidden_act="relu", **SMALL)))
    with pytest.raises(UnsupportedModelError, match="unsupported transformers model class Linear"):
        HookedViT.from_hf(torch.nn.Linear(2, 2))


def test_bad_arguments():
    with pytest.raises(TypeError, match="model_or_name_or_path must be"):
        HookedViT.from_hf(3)
    with pytest.raises(ValueError, match="apply to a name or directory"):
        HookedViT.from_hf(build("vit"), revision="main")
    with pytest.raises(ValueError, match="image_size must be .* multiples of the patch size"):
        HookedViT.from_hf(build("vit"), image_size=30)


def test_vit_model_pooler_is_not_ported_and_says_so(caplog):
    hf = transformers.ViTModel(transformers.ViTConfig(intermediate_size=96, **SMALL)).eval()  # with pooler
    with caplog.at_level("WARNING"):
        model = HookedViT.from_hf(hf)
    assert "pooler (dense + tanh) is not ported" in caplog.text
    x = images(model)
    with torch.no_grad():
        out = hf(x)
        assert_close(model(x), out.last_hidden_state[:, 0])
        assert (model(x) - out.pooler_output).abs().max() > 1e-2


def test_image_processor_from_a_directory(tmp_path, monkeypatch):
    transformers.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                   image_mean=[0.485, 0.456, 0.406]).save_pretrained(tmp_path)
    offline(monkeypatch)
    hf = build("dinov2")
    model = HookedViT.from_hf(hf, image_processor=tmp_path)
    assert model.cfg.crop_mode == "center" and model.cfg.mean[0] == 0.485 and model.cfg.image_size == (32, 32)
    assert model.transform(random_pil()).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="image_processor: no image processor could be loaded"):
        HookedViT.from_hf(hf, image_processor=str(tmp_path / "missing"))


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2_reg", "clip_projection"])
def test_weight_processing_options_keep_the_output(family):
    """TransformerLens's processing options pass through from_hf (vit_lens.processing.process_weights)."""
    hf = build(family)
    options = dict(fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    model = HookedViT.from_hf(hf, **options)
    assert model.cfg.normalization_type == "LNPre"
    x = images(model)
    with torch.no_grad():
        assert_close(model(x), hf_output(hf, x))
