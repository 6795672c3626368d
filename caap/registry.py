"""One registry of named attribution methods: ``get_method("rollout", model)``.

Each entry maps a name to ``"module:Class"`` plus default options, imported only when used, so the
registry never pulls in a method's dependencies before it is asked for. Every method object has
``.attribute(images, target=None) -> Float[Tensor, "batch grid_h grid_w"]`` (target None = the
predicted class, an int, or one class per image). Add your own with :func:`register`.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

# name -> (factory "module:attr", default options). Keep the names lower-case, as the paper prints them.
_BUILTINS: dict[str, tuple[str, dict[str, Any]]] = {
    "caap": ("caap.caap:CAAP", {}),
    "e-caap": ("caap.caap:CAAP", {"engine": "efficient"}),
    "e-caap-eq9": ("caap.caap:CAAP", {"engine": "efficient", "frozen_attention": importlib.import_module("vit_lens.patching.uniform_frozen_attention").UniformFrozenAttention()}),  # noqa: E501  App. B.1 Eqs. 8-9
    "caap-cnn": ("caap.cnn:CNNCAAP", {}),
    "grad-cam": ("caap.baselines.gradcam:GradCAM", {}),
    "simple-insertion": ("caap.baselines.input_perturbation:SimpleInsertion", {}),
    "simple-deletion": ("caap.baselines.input_perturbation:SimpleDeletion", {}),
    "rise": ("caap.baselines.rise:RISE", {}),
    "occlusion": ("caap.baselines.occlusion:Occlusion", {}),
    "vit-cx": ("caap.baselines.vit_cx:ViTCX", {}),
    "mda": ("caap.baselines.mda:MDA", {}),
    "t-attr": ("caap.baselines.lrp:TransformerAttribution", {}),
    "tam": ("caap.baselines.tam:TransitionAttentionMaps", {}),
    "mutex": ("caap.baselines.mutex:MUTEX", {}),
    "rollout": ("caap.baselines.rollout:AttentionRollout", {}),
    "gae": ("caap.baselines.rollout:GAE", {}),
    "ixg": ("caap.baselines.input_x_gradient:InputXGradient", {}),
    "ixg+": ("caap.baselines.input_x_gradient:IxGPlus", {}),
    "libra-ixg+": ("caap.baselines.input_x_gradient:LibraIxGPlus", {}),
}
_USER: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}


def register(name: str, factory: Callable[..., Any], **defaults: Any) -> None:
    """Register ``factory(model, **options)`` under ``name`` (refuses to shadow an existing name)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    if name in _BUILTINS or name in _USER:
        raise ValueError(f"a method named {name!r} is already registered; pick another name")
    if not callable(factory):
        raise TypeError(f"factory must be callable(model, **options); got {type(factory).__name__}")
    _USER[name] = (factory, defaults)


def list_methods() -> list[str]:
    """Every registered method name, built-ins first."""
    return list(_BUILTINS) + list(_USER)


def _factory(name: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    if name in _USER:
        return _USER[name]
    if name not in _BUILTINS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(list_methods())}")
    target, defaults = _BUILTINS[name]
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr), defaults


def get_method(name: str, model, **options: Any):
    """Build the method ``name`` for ``model``; ``options`` override the registered defaults."""
    factory, defaults = _factory(name)
    return factory(model, **{**defaults, **options})
