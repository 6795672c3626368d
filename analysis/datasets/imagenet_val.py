"""ImageNet-1k (ILSVRC2012) validation, faithfulness only (no masks). Either layout:

* ``ROOT/val/<wnid>/*.JPEG`` or ``ROOT/<wnid>/*.JPEG`` (torchvision ``ImageNet`` / ImageFolder);
* ``ROOT/*.JPEG`` (or ``ROOT/val/*.JPEG``) flat, with ``LOC_val_solution.csv`` (Kaggle: ``ImageId,
  PredictionString`` whose first token is the wnid) in ROOT.

Labels are ImageNet-1k indices (sorted wnids, timm's order).
"""
from __future__ import annotations

import csv
from pathlib import Path

from analysis.data import Sample
from analysis.datasets._common import images_in, imagenet_wnids, require_dir

LAYOUT = "ROOT/[val/]<wnid>/*.JPEG, or ROOT/[val/]*.JPEG with ROOT/LOC_val_solution.csv"


def _solution_labels(path: Path, index: dict[str, int], name: str) -> dict[str, int]:
    """``ImageId`` -> ImageNet-1k index of the first wnid of ``PredictionString`` (Kaggle's LOC_val_solution)."""
    labels = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("ImageId", "PredictionString") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{name}: {path} lacks column(s) {', '.join(missing)}; it has "
                             f"{', '.join(reader.fieldnames or []) or 'none'}")
        for row in reader:
            where = f"{name}: {path} line {reader.line_num}"
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise ValueError(f"{where}: empty PredictionString; expected '<wnid> x0 y0 x1 y1 ...'")
            if tokens[0] not in index:
                raise ValueError(f"{where}: {tokens[0]!r} is not an ImageNet-1k wnid (expected e.g. 'n01440764', "
                                 f"one of the 1000 ILSVRC2012 classes)")
            labels[row["ImageId"]] = index[tokens[0]]
    return labels


def load(root, split=None, *, name: str):
    from analysis.datasets import Dataset

    if split not in (None, "val", "validation"):
        raise ValueError(f"{name}: only the validation split is supported; got split={split!r}")
    root = require_dir(Path(root), name, LAYOUT)
    base = root / "val" if (root / "val").is_dir() else root
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    folders = sorted(p for p in base.iterdir() if p.is_dir() and p.name in index)
    samples = []
    if folders:
        for folder in folders:
            samples += [Sample(p, None, index[folder.name], p.stem) for p in images_in(folder)]
    elif (root / "LOC_val_solution.csv").is_file():
        labels = _solution_labels(root / "LOC_val_solution.csv", index, name)
        for p in images_in(base):
            if p.stem not in labels:
                raise ValueError(f"{name}: {p.name} has no row in LOC_val_solution.csv")
            samples.append(Sample(p, None, labels[p.stem], p.stem))
    if not samples:
        raise FileNotFoundError(f"{name}: no labelled images under {root}; expected layout: {LAYOUT}")
    return Dataset(name, samples, 1000, False, "validation")
