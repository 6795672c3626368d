"""One registry of named attribution methods: ``get_method("rollout", model)``.

Each entry maps a name to ``"module:Class"`` plus default options, imported only when used, so the
registry never pulls in a method's dependencies before it is asked for. Every method object has
``.attribute(images, target=None) -> Float[Tensor, "batch grid_h grid_w"]`` (target None = the
predicted class, an int, or one class per image). Add your own with :func:`register`.
:func:`method_settings` gives the settings a method runs with, as JSON (``caap bench`` records them).
"""
from __future__ import annotations

import enum
import importlib
import inspect
import math
import numbers
import os
from typing import Any, Callable

import torch

# name -> (factory "module:attr", default options). Keep the names lower-case, as the paper prints them.
_BUILTINS: dict[str, tuple[str, dict[str, Any]]] = {
    "caap": ("caap.caap:CAAP", {}),
    "e-caap": ("caap.caap:CAAP", {"engine": "efficient"}),
    "e-caap-eq9": ("caap.caap:CAAP", {"engine": "efficient", "frozen_attention": importlib.import_module("vit_lens.patching.uniform_frozen_attention").UniformFrozenAttention()}),  # noqa: E501  App. B.1 Eqs. 8-9
    # CAAP with a contrastive / log readout (formulas: vit_lens.patching.readouts; issue 24)
    "caap-logit-diff": ("caap.caap:CAAP", {"score": "logit-diff"}),
    "caap-margin": ("caap.caap:CAAP", {"score": "logit-margin"}),
    "caap-logprob": ("caap.caap:CAAP", {"score": "log-prob"}),
    "caap-atp": ("caap.caap:CAAP", {"engine": "atp"}),  # attribution patching (vit_lens.patching.atp; issue 23)
    "caap-atp-star": ("caap.caap:CAAP", {"engine": "atp-star"}),  # AtP*: exact prefix attention hop
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


def method_settings(name: str, **options: Any) -> dict[str, Any]:
    """The settings ``get_method(name, model, **options)`` runs with, JSON-serializable: every keyword
    parameter of the factory (all but the model) with its effective value, taken from ``options``, then
    the registered defaults, then the signature's defaults (a ``None`` default stays ``None``: its meaning,
    e.g. "L // 2", depends on the model, which is not needed here). Options a factory with ``**kwargs``
    accepts beyond its signature are included. Values JSON cannot hold are summarized as short strings
    (:func:`summarize_setting`). Raises ValueError for an option the factory does not take or a parameter
    without a value, as ``get_method`` would (before any model is built)."""
    factory, defaults = _factory(name)
    given = {**defaults, **options}
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: record what is passed
        return {key: summarize_setting(value) for key, value in given.items()}
    params = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if params and params[0].kind in positional:
        params = params[1:]  # the model
    named = [p for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    known = {p.name for p in named if p.kind != inspect.Parameter.POSITIONAL_ONLY}
    unknown = [key for key in given if key not in known]
    if unknown and not takes_any:
        raise ValueError(f"method {name!r} has no option {unknown[0]!r}; its options are: {', '.join(sorted(known))}")
    settings: dict[str, Any] = {}
    for p in named:
        if p.name in given:
            settings[p.name] = summarize_setting(given[p.name])
        elif p.default is not inspect.Parameter.empty:
            settings[p.name] = summarize_setting(p.default)
        else:
            raise ValueError(f"method {name!r} needs a value for its parameter {p.name!r} (no default registered)")
    for key in unknown:  # passed on through **kwargs
        settings[key] = summarize_setting(given[key])
    return settings


def summarize_setting(value: Any) -> Any:
    """``value`` as JSON: None, bool, int, str and finite floats as they are (numpy scalars converted),
    non-finite floats as strings ("nan", "inf"), lists/tuples and str-keyed dicts element-wise; a tensor or
    array as ``"tensor[3,224,224]"``/``"ndarray[3,224,224]"``, a class or function by its qualified name,
    any other object by its class name. Never raises."""
    try:
        return _summarize(value, depth=0)
    except Exception:  # noqa: BLE001 - a record must never fail on an odd value
        return type(value).__name__


def _summarize(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return _summarize(value.value, depth)
    if isinstance(value, (os.PathLike, torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, numbers.Integral) and not hasattr(value, "shape"):
        return int(value)
    if isinstance(value, numbers.Real) and not hasattr(value, "shape"):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    shape = getattr(value, "shape", None)
    if shape is not None and not callable(shape):
        dims = ",".join(str(int(d)) for d in tuple(shape))
        kind = "tensor" if type(value).__module__.startswith("torch") else type(value).__name__
        if dims == "" and hasattr(value, "item"):  # a 0-d tensor or numpy scalar: its value is short
            return _summarize(value.item(), depth)
        return f"{kind}[{dims}]"
    if isinstance(value, (list, tuple)) and depth < 3:
        return [_summarize(v, depth + 1) for v in value]
    if isinstance(value, dict) and depth < 3:
        return {str(k): _summarize(v, depth + 1) for k, v in value.items()}
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return type(value).__name__
