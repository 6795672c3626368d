"""The metric registry of ``caap bench --metrics``: ``get_metric("road")``.

Each name maps to ``"module:factory"``, imported only when used (so a metric's dependency, e.g. Captum, is
loaded only when asked for); ``factory(**options) -> Metric``. A new metric is one module with a factory
plus one line in :data:`_BUILTINS` (or :func:`register` from outside). The paper's four
(:data:`PAPER`) share one row per (image, method) scored by :func:`analysis.evaluate.score_attributions`
(their curves are one batched stream); every other metric writes its own rows, so adding one to a finished
run computes only it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from jaxtyping import Bool, Float
from torch import Tensor

PAPER = ("deletion", "insertion", "aupr", "pointing-game")

_BUILTINS: dict[str, str] = {
    "deletion": "analysis.metrics.paper:deletion",
    "insertion": "analysis.metrics.paper:insertion",
    "aupr": "analysis.metrics.paper:aupr_metric",
    "pointing-game": "analysis.metrics.paper:pointing_game_metric",
    "avg-drop": "analysis.metrics.avg_drop:metric",
    "perturbation": "analysis.metrics.perturbation:metric",
    "segmentation": "analysis.metrics.segmentation:metric",
    "random-logit": "analysis.metrics.random_logit:metric",
    "infidelity": "analysis.metrics.captum_metrics:infidelity_metric",
    "max-sensitivity": "analysis.metrics.captum_metrics:sensitivity_metric",
    "mprt": "analysis.metrics.mprt:metric",
    "road": "analysis.metrics.road:metric",
    "gt-mass": "analysis.datasets.synthetic_metrics:mass_metric",  # relevance mass on the object mask (Arras 2022)
    "gt-rank": "analysis.datasets.synthetic_metrics:rank_metric",  # relevance rank accuracy on the object mask
    "gt-lookalike": "analysis.datasets.synthetic_metrics:lookalike_metric",  # mass on look-alike distractors
}
_USER: dict[str, Callable[..., "Metric"]] = {}


@dataclass
class Context:
    """What a metric may use for one image: the model, the image ``[1, chan, H, W]`` on the model's device,
    the explained class, the (transformed) object mask or None, each method's callable
    ``explain[name](images, targets) -> [batch, h, w]``, ``rebuild(name, model)`` building a method on
    another model (MPRT), and the engine's batching settings."""
    model: Any
    image: Float[Tensor, "1 chan H W"]
    target: int
    mask: Bool[Tensor, "H W"] | None
    ignore: Bool[Tensor, "H W"] | None
    explain: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = field(default_factory=dict)
    rebuild: Callable[[str, Any], Callable[[Tensor, Tensor], Tensor]] | None = None
    sample: str = ""
    seed: int = 0
    memory_budget_gb: float = 1.0
    batch_size: int | None = None
    label: int | None = None  # the dataset's label (Chefer's perturbation accuracy)
    source: Any = None  # the analysis.data.Sample (its ``extra`` fields: e.g. the synthetic scenes' instances)


Score = Callable[[Context, Sequence[str], Sequence[Float[Tensor, "1 h w"]]], list[dict]]


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``columns`` (row field -> table header), the fields where lower is better,
    whether it needs an object mask (rows get ``None`` where the dataset has none), ``score(ctx, names,
    maps) -> one dict of fields per map`` (None for the paper's four, scored together by
    ``analysis.evaluate``) and its ``settings`` (JSON, recorded in ``run.json`` and part of the resume key)."""
    name: str
    columns: Mapping[str, str]
    lower_is_better: frozenset[str] = frozenset()
    needs_mask: bool = False
    score: Score | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


def register(name: str, factory: Callable[..., Metric]) -> None:
    """Register ``factory(**options) -> Metric`` under ``name`` (refuses to shadow an existing name)."""
    if not isinstance(name, str) or not name or "." in name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '.' or '/' (it names a file); got {name!r}")
    if name in _BUILTINS or name in _USER:
        raise ValueError(f"a metric named {name!r} is already registered; pick another name")
    if not callable(factory):
        raise TypeError(f"factory must be callable(**options) -> Metric; got {type(factory).__name__}")
    _USER[name] = factory


def list_metrics() -> list[str]:
    """Every registered metric name, built-ins first (the paper's four first)."""
    return list(_BUILTINS) + list(_USER)


def check_metric_names(names: Sequence[str]) -> list[str]:
    """The names, deduplicated in order; ValueError naming the unknown ones and listing the valid ones."""
    valid = list_metrics()
    unknown = [n for n in names if n not in valid]
    if not names or unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; registered: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def get_metric(name: str, **options: Any) -> Metric:
    """Build the metric ``name`` (``options`` go to its factory, e.g. ``get_metric("mprt", mode="independent")``)."""
    check_metric_names([name])
    if name in _USER:
        factory = _USER[name]
    else:
        module, attr = _BUILTINS[name].split(":")
        factory = getattr(importlib.import_module(module), attr)
    metric = factory(**options)
    if not isinstance(metric, Metric) or metric.name != name:
        raise TypeError(f"the factory of metric {name!r} must return a Metric named {name!r}; got {metric!r}")
    return metric
