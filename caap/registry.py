"""One registry of named attribution methods: ``get_method("rollout", model)``.

Each entry maps a name to ``"module:Class"`` plus default options, imported only when used, so the
registry never pulls in a method's dependencies before it is asked for. Every method object has
``.attribute(images, target=None) -> Float[Tensor, "batch grid_h grid_w"]`` (target None = the
predicted class, an int, or one class per image). Add your own with :func:`register`.
:func:`method_settings` gives the settings a method runs with, as JSON (``caap bench`` records them).
A method *spec* ``NAME[:KEY=VALUE...]`` (``"caap:score=prob:radius=0"``, issue 24) is a registered name with
options, as ``--methods`` takes it; its canonical spelling (options sorted by key) names it in rows and tables.
"""
from __future__ import annotations

import enum
import importlib
import inspect
import math
import numbers
import os
import re
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
    if any(c in name for c in ":,") or name != name.strip():
        raise ValueError(f"name must not contain ':' or ',' (method spec separators) nor surrounding spaces; "
                         f"got {name!r}")
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
    """Build the method ``name`` (a registered name or a spec ``NAME:KEY=VALUE...``) for ``model``; the spec's
    options, then ``options``, override the registered defaults."""
    name, options = _with_spec_options(name, options)
    factory, defaults = _factory(name)
    return factory(model, **{**defaults, **options})


def _with_spec_options(name, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if not isinstance(name, str) or ":" not in name:
        return name, options
    base, spec_options = parse_method_spec(name)
    return base, {**spec_options, **options}


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
SPEC_GRAMMAR = "NAME[:KEY=VALUE[:KEY=VALUE...]] (VALUE: true/false, none, an int, a float or a word; no ',' or ':')"


def parse_option_value(text: str) -> Any:
    """One spec VALUE: ``true``/``false`` -> bool, an int literal -> int, a float literal -> float (finite),
    ``none`` -> None, anything else -> the str (the words case-insensitive)."""
    word = text.lower()
    if word in ("true", "false"):
        return word == "true"
    if word == "none":
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"option value {text!r} is not a finite number")
        return value
    return text


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME[:KEY=VALUE...]"`` -> ``(NAME, {KEY: value})`` (values: :func:`parse_option_value`). Checks the
    grammar only; :func:`check_method_spec` also checks the name and the keys."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"method spec must be a non-empty string {SPEC_GRAMMAR}; got {spec!r}")
    if "," in spec:
        raise ValueError(f"method spec {spec!r} contains ','; specs are separated by commas, so one holds none")
    name, *parts = (part.strip() for part in spec.split(":"))
    if not name:
        raise ValueError(f"method spec {spec!r} has no method name; expected {SPEC_GRAMMAR}")
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, text = (x.strip() for x in part.partition("="))
        if not eq or not _KEY.match(key) or not text:
            raise ValueError(f"method spec {spec!r}: {part!r} is not KEY=VALUE (KEY an identifier, VALUE "
                             f"non-empty); expected {SPEC_GRAMMAR}")
        if key in options:
            raise ValueError(f"method spec {spec!r}: option {key!r} is given twice")
        try:
            options[key] = parse_option_value(text)
        except ValueError as err:
            raise ValueError(f"method spec {spec!r}: option {key}: {err}") from None
    return name, options


def _format_value(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, float) else str(value)


def canonical_spec(spec: str) -> str:
    """The one spelling of ``spec``: options sorted by key, values as parsed (``caap:radius=0:blank=mean`` ->
    ``caap:blank=mean:radius=0``; ``eps=1e-3`` -> ``eps=0.001``); a plain name is itself."""
    name, options = parse_method_spec(spec)
    return ":".join([name, *(f"{key}={_format_value(options[key])}" for key in sorted(options))])


def check_method_spec(spec: str) -> str:
    """``spec``'s canonical spelling, after checking its grammar, its method name and that the method takes each
    option (the factory's signature; no model needed). Values are checked when the method is built
    (:func:`get_method_spec`). One-line ValueError naming the spec otherwise."""
    name, options = parse_method_spec(spec)
    if name not in _USER and name not in _BUILTINS:
        raise ValueError(f"unknown method {name!r}" + (f" in {spec!r}" if options else "")
                         + f"; registered methods: {', '.join(list_methods())}")
    try:
        method_settings(name, **options)
    except ValueError as err:
        raise ValueError(f"method spec {spec!r}: {err}") from None
    return canonical_spec(spec)


def check_method_specs(specs: str | list[str], what: str = "methods") -> list[str]:
    """Comma-separated specs (or a list) -> their canonical spellings, each checked (:func:`check_method_spec`);
    two spellings of one method (``caap:a=1:b=2``, ``caap:b=2:a=1``) or none at all are refused. ``what`` names
    the argument in the one-line ValueError (``"--methods"``)."""
    items = [s.strip() if isinstance(s, str) else s for s in (specs.split(",") if isinstance(specs, str) else specs)]
    items = [s for s in items if s != ""]
    try:
        names = [parse_method_spec(spec)[0] for spec in items]
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    unknown = list(dict.fromkeys(n for n in names if n not in _USER and n not in _BUILTINS))
    if not items or unknown:
        raise ValueError(f"{what}: unknown method(s) {', '.join(unknown) or '(none given)'}; registered: "
                         f"{', '.join(list_methods())}; with options: NAME:KEY=VALUE[:KEY=VALUE...]")
    seen: dict[str, str] = {}
    for spec in items:
        try:
            canonical = check_method_spec(spec)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
        if canonical in seen:
            raise ValueError(f"{what}: {seen[canonical]!r} and {spec!r} are the same method ({canonical!r}); "
                             f"list it once")
        seen[canonical] = spec
    return list(seen)


def get_method_spec(spec: str, model, **options: Any):
    """Build the method spec ``spec`` (``"caap:radius=0"``) for ``model`` as :func:`get_method` does, with
    every error of the spec's name, options or values as one ValueError naming the spec (a constructor's
    TypeError, e.g. an unexpected keyword argument, included). Cost: the method's constructor."""
    check_method_spec(spec)
    try:
        return get_method(spec, model, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"method spec {spec!r}: " + " ".join(str(err).splitlines())) from err


def method_settings(name: str, **options: Any) -> dict[str, Any]:
    """The settings ``get_method(name, model, **options)`` runs with, JSON-serializable: every keyword
    parameter of the factory (all but the model) with its effective value, taken from ``options``, then
    the registered defaults, then the signature's defaults (a ``None`` default stays ``None``: its meaning,
    e.g. "L // 2", depends on the model, which is not needed here). Options a factory with ``**kwargs``
    accepts beyond its signature are included. Values JSON cannot hold are summarized as short strings
    (:func:`summarize_setting`). Raises ValueError for an option the factory does not take or a parameter
    without a value, as ``get_method`` would (before any model is built). ``name`` may be a spec
    (``"caap:radius=0"``): its options count as given."""
    name, options = _with_spec_options(name, options)
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
