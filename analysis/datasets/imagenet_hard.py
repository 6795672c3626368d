"""ImageNet-Hard (Taesiri et al.), faithfulness only. Either:

* an image folder ``ROOT/<wnid or class index>/*.jpg`` (one label per image), or
* the dataset's own format: ``ROOT/**/*.parquet`` shards (columns ``image`` {bytes, path} and ``label``, a
  list of ImageNet-1k indices; every listed label counts as correct, the first is the explained ``label``).
  The images are written once to ``ROOT/_images/`` so samples are plain files.
"""
from __future__ import annotations

import io
from pathlib import Path

from analysis.data import Sample
from analysis.datasets._common import images_in, imagenet_wnids, require_dir

LAYOUT = "ROOT/<wnid or class index>/*.jpg, or ROOT/**/*.parquet with columns image, label (HF taesiri/imagenet-hard)"


def _from_parquet(root: Path, shards: list[Path]) -> list[Sample]:
    import pyarrow.parquet as pq
    from PIL import Image

    out_dir = root / "_images"
    samples = []
    for shard in shards:
        table = pq.read_table(shard, columns=["image", "label"]).to_pylist()
        for k, row in enumerate(table):
            labels = row["label"] if isinstance(row["label"], list) else [row["label"]]
            if not labels or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1000 for v in labels):
                raise ValueError(f"{shard} row {k}: label {row['label']!r} is not a list of ImageNet-1k class "
                                 f"indices 0..999")
            target = out_dir / f"{shard.stem}_{k:06d}.png"
            if not target.is_file():
                out_dir.mkdir(exist_ok=True)
                Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB").save(target)
            samples.append(Sample(target, None, int(labels[0]), target.stem, labels=tuple(int(v) for v in labels)))
    return samples


def load(root, split=None, *, name: str):
    from analysis.datasets import Dataset

    root = require_dir(Path(root), name, LAYOUT)
    shards = sorted(p for p in root.rglob("*.parquet") if split is None or split in p.name)
    if shards:
        samples = _from_parquet(root, shards)
    else:
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        samples = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "_images"):
            if folder.name in index:
                label = index[folder.name]
            elif folder.name.isdigit() and int(folder.name) < 1000:
                label = int(folder.name)
            else:
                raise ValueError(f"{name}: folder {folder.name!r} is neither a wnid nor a class index; "
                                 f"expected layout: {LAYOUT}")
            samples += [Sample(p, None, label, f"{folder.name}_{p.stem}") for p in images_in(folder)]
    if not samples:
        raise FileNotFoundError(f"{name}: no images under {root}; expected layout: {LAYOUT}")
    return Dataset(name, samples, 1000, False, split or "validation")
