import pytest
import torch

import caap
from caap import CAAP, GradCAM, get_method, list_methods, register
from tests.conftest import make_hooked, random_images


def test_builtin_names_build_the_right_objects():
    model = make_hooked("vit")
    assert {"caap", "e-caap", "grad-cam", "simple-insertion", "simple-deletion"} <= set(list_methods())
    assert isinstance(get_method("caap", model), CAAP) and get_method("caap", model).engine == "parallel"
    assert get_method("e-caap", model).engine == "efficient"
    assert get_method("e-caap", model, engine="loop").engine == "loop"  # options override defaults
    assert isinstance(get_method("grad-cam", model), GradCAM)


def test_registered_method_maps_equal_direct_construction():
    model = make_hooked("vit")
    x = random_images(model)
    torch.testing.assert_close(get_method("caap", model).attribute(x), CAAP(model).attribute(x))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown method 'nope'.*grad-cam"):
        get_method("nope", make_hooked("vit"))


def test_register_user_method_and_refuse_shadowing(monkeypatch):
    monkeypatch.setattr(caap.registry, "_USER", {})
    register("my-gradcam", GradCAM, layer=0)
    assert "my-gradcam" in list_methods()
    assert get_method("my-gradcam", make_hooked("vit")).hook_name == "blocks.0.ln1.hook_normalized"
    with pytest.raises(ValueError, match="already registered"):
        register("caap", GradCAM)


def test_method_settings_are_the_effective_options_as_json():
    import json
    import math

    from caap.registry import method_settings

    assert method_settings("rollout") == {"head_fusion": "mean", "discard_ratio": 0.0, "start_layer": 1}
    assert method_settings("rollout", start_layer=2)["start_layer"] == 2  # options override the defaults
    assert method_settings("t-attr")["start_layer"] == 1 and method_settings("tam")["start_layer"] == 0
    assert method_settings("e-caap")["engine"] == "efficient"  # registered default over the signature's
    assert method_settings("e-caap", engine="loop")["engine"] == "loop"  # options over registered defaults
    assert method_settings("caap")["engine"] == "parallel"  # the signature's default
    assert method_settings("e-caap-eq9")["frozen_attention"] == "UniformFrozenAttention"
    model = make_hooked("vit")
    for name in list_methods():
        settings = method_settings(name)
        assert json.loads(json.dumps(settings, allow_nan=False)) == settings, name
        built = get_method(name, model) if name != "caap-cnn" else None
        for key, value in settings.items():  # every recorded value is the one the built method holds
            held = getattr(built, key, None)
            if isinstance(held, (bool, int, float, str)) and not isinstance(value, (list, dict)):
                assert held == value or (isinstance(held, float) and math.isclose(held, value)), (name, key)
    score = lambda out: out[:, 0]  # noqa: E731
    odd = method_settings("grad-cam", score=score)
    assert odd["score"].endswith("<lambda>")
    blank = method_settings("rise", blank=torch.zeros(3, 64, 64), p_keep=torch.tensor(0.25))
    assert blank["blank"] == "tensor[3,64,64]" and blank["p_keep"] == 0.25
    assert method_settings("occlusion", baseline=float("nan"))["baseline"] == "nan"  # strict JSON
    with pytest.raises(ValueError, match="method 'rollout' has no option 'start'.*start_layer"):
        method_settings("rollout", start=1)
    with pytest.raises(ValueError, match="unknown method"):
        method_settings("nope")


def test_method_settings_of_user_methods(monkeypatch):
    from caap.registry import method_settings

    monkeypatch.setattr(caap.registry, "_USER", {})

    class Mine:
        def __init__(self, model, radius, *, scale=2.0, **extra):
            pass

    register("mine", Mine, radius=3)
    assert method_settings("mine") == {"radius": 3, "scale": 2.0}
    assert method_settings("mine", extra_flag=True, scale=1) == {"radius": 3, "scale": 1, "extra_flag": True}
    register("mine-bare", Mine)
    with pytest.raises(ValueError, match="'radius'"):
        method_settings("mine-bare")
