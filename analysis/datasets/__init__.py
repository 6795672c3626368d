"""The paper's evaluation datasets (Sec. 4.2), each yielding :class:`analysis.data.Sample` rows (image, label,
optional mask) for :func:`analysis.data.load_sample`, which applies the model's eval transform.

``get_dataset(name, root, split=None)`` -> :class:`Dataset`; ``DATASETS`` lists the names. No loader
downloads anything: point ``root`` at the layout each module's docstring describes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from analysis.data import Sample

# name -> (module, extra keyword arguments of its ``load(root, split, **kw)``)
_REGISTRY: dict[str, tuple[str, dict]] = {
    "imagenet-s50": ("analysis.datasets.imagenet_s", {"n_classes": 50}),
    "imagenet-s300": ("analysis.datasets.imagenet_s", {"n_classes": 300}),
    "imagenet-s919": ("analysis.datasets.imagenet_s", {"n_classes": 919}),
    "imagenet-val": ("analysis.datasets.imagenet_val", {}),
    "oxford-pet": ("analysis.datasets.oxford_pet", {}),
    "food101": ("analysis.datasets.food101", {}),
    "imagenet-hard": ("analysis.datasets.imagenet_hard", {}),
    "manifest": ("analysis.datasets.manifest", {}),
    "synthetic": ("analysis.datasets.synthetic", {}),
}
DATASETS = tuple(_REGISTRY)


@dataclass
class Dataset:
    """``samples`` in a fixed order; ``num_classes`` the classifier's output size the labels index
    (None: not fixed, e.g. a manifest); ``has_masks`` whether localization metrics apply."""
    name: str
    samples: list[Sample]
    num_classes: int | None
    has_masks: bool
    split: str
    class_names: list[str] | None = field(default=None, repr=False)


def get_dataset(name: str, root, split: str | None = None, **options) -> Dataset:
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    module, kwargs = _REGISTRY[name]
    return importlib.import_module(module).load(root, split=split, name=name, **kwargs, **options)
