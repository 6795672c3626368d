"""Food-101 in torchvision's on-disk layout (``torchvision.datasets.Food101(root)``), faithfulness only::

    ROOT/food-101/images/<class>/<id>.jpg
    ROOT/food-101/meta/{test,train}.json     {"<class>": ["<class>/<id>", ...], ...}

Labels index the sorted class names (torchvision's order). Default split: ``test``.
"""
from __future__ import annotations

import json
from pathlib import Path

from analysis.data import Sample
from analysis.datasets._common import require_file

LAYOUT = "ROOT/food-101/{images/<class>/<id>.jpg, meta/test.json} (torchvision Food101)"


def load(root, split=None, *, name: str):
    from analysis.datasets import Dataset

    split = split or "test"
    if split not in ("test", "train"):
        raise ValueError(f"{name}: split must be 'test' or 'train'; got {split!r}")
    base = Path(root) / "food-101"
    if not base.is_dir() and (Path(root) / "meta").is_dir():
        base = Path(root)
    meta_path = require_file(base / "meta" / f"{split}.json", name, LAYOUT)
    expected = 'a JSON object {"<class>": ["<class>/<id>", ...], ...}'
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{name}: {meta_path} is not JSON ({err}); expected {expected}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: {meta_path} holds a JSON {type(meta).__name__}; expected {expected}")
    for cls, entries in meta.items():
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"{name}: {meta_path}: class {cls!r} maps to {type(entries).__name__} "
                             f"{str(entries)[:60]}; expected {expected}")
    classes = sorted(meta)
    samples = []
    for label, cls in enumerate(classes):
        for rel in meta[cls]:
            image = require_file(base / "images" / f"{rel}.jpg", name, LAYOUT)
            samples.append(Sample(image, None, label, rel.replace("/", "_")))
    return Dataset(name, samples, len(classes), False, split, classes)
