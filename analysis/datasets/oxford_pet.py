"""Oxford-IIIT-Pet in torchvision's on-disk layout (``torchvision.datasets.OxfordIIITPet(root)``)::

    ROOT/oxford-iiit-pet/images/<Breed_name>_<k>.jpg
    ROOT/oxford-iiit-pet/annotations/{test,trainval}.txt    lines "<image id> <class 1..37> <species> <breed id>"
    ROOT/oxford-iiit-pet/annotations/trimaps/<image id>.png   1 pet, 2 background, 3 border

Labels are ``class - 1`` (0..36, torchvision's order); trimaps become masks (pet = foreground, the border
class is ignored by the localization metrics). Default split: ``test``.
"""
from __future__ import annotations

from pathlib import Path

from analysis.data import Sample, parse_label
from analysis.datasets._common import require_file

LAYOUT = ("ROOT/oxford-iiit-pet/{images/*.jpg, annotations/test.txt, annotations/trimaps/*.png} "
          "(torchvision OxfordIIITPet)")


def load(root, split=None, *, name: str):
    from analysis.datasets import Dataset

    split = split or "test"
    if split not in ("test", "trainval"):
        raise ValueError(f"{name}: split must be 'test' or 'trainval'; got {split!r}")
    base = Path(root) / "oxford-iiit-pet"
    if not base.is_dir() and (Path(root) / "annotations").is_dir():
        base = Path(root)
    listing = require_file(base / "annotations" / f"{split}.txt", name, LAYOUT)
    samples, names = [], {}
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{name}: {listing} line {number}"
        fields = line.split()
        if len(fields) < 2:
            raise ValueError(f"{where}: {line.strip()!r} has no class; expected '<image id> <class 1..37> ...'")
        image_id = fields[0]
        cls = parse_label(fields[1], where)
        if not 1 <= cls <= 37:
            raise ValueError(f"{where}: class {cls} is outside 1..37 (the list's classes are 1-based)")
        image = require_file(base / "images" / f"{image_id}.jpg", name, LAYOUT)
        trimap = require_file(base / "annotations" / "trimaps" / f"{image_id}.png", name, LAYOUT)
        names[cls - 1] = " ".join(image_id.split("_")[:-1])
        samples.append(Sample(image, trimap, cls - 1, image_id, mask_format="trimap"))
    return Dataset(name, samples, 37, True, split, [names.get(i, str(i)) for i in range(37)])
