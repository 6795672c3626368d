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
    meta = json.loads(require_file(base / "meta" / f"{split}.json", name, LAYOUT).read_text())
    classes = sorted(meta)
    samples = []
    for label, cls in enumerate(classes):
        for rel in meta[cls]:
            image = require_file(base / "images" / f"{rel}.jpg", name, LAYOUT)
            samples.append(Sample(image, None, label, rel.replace("/", "_")))
    return Dataset(name, samples, len(classes), False, split, classes)
