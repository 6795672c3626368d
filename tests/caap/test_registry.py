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
