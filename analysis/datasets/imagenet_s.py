"""ImageNet-S (Gao et al., LUSSeg) validation / test, as written by the dataset's ``data_preparation.sh``::

    ROOT/ImageNetS{50,300,919}/validation/<wnid>/<name>.JPEG
    ROOT/ImageNetS{50,300,919}/validation-segmentation/<wnid>/<name>.png   (test: no masks, online server)

``ROOT`` may also be the ``ImageNetS50`` directory itself. Masks are RGB PNGs whose class id is
``R + 256 G``: 0 = other / background, 1000 = ignored, otherwise 1 + the index of the class's wnid in the
sorted category list (``ImageNetS_categories_im{N}.txt`` if present in ROOT, else the sorted class
folders). The object mask of an image is its own class; the label is the wnid's ImageNet-1k index. The
919 split merges five wnid pairs (e.g. ``n04356056`` into ``n04355933``): their images carry the kept wnid.
"""
from __future__ import annotations

from pathlib import Path

from analysis.data import Sample
from analysis.datasets._common import images_in, imagenet_wnids, require_dir

SPLITS = ("validation", "test")


def _layout(n: int) -> str:
    return (f"ROOT/ImageNetS{n}/validation/<wnid>/*.JPEG and ROOT/ImageNetS{n}/validation-segmentation/<wnid>/*.png "
            f"(LUSSeg ImageNet-S data_preparation.sh)")


def load(root, split=None, *, name: str, n_classes: int):
    from analysis.datasets import Dataset

    split = split or "validation"
    if split not in SPLITS:
        raise ValueError(f"{name}: split must be one of {SPLITS}; got {split!r}")
    root = Path(root)
    base = root / f"ImageNetS{n_classes}" if (root / f"ImageNetS{n_classes}").is_dir() else root
    images_dir = require_dir(base / split, name, _layout(n_classes))
    class_dirs = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    categories_file = base / f"ImageNetS_categories_im{n_classes}.txt"
    categories = sorted(categories_file.read_text().split()) if categories_file.is_file() else class_dirs
    if len(categories) != n_classes:
        raise ValueError(f"{name}: expected {n_classes} classes under {images_dir} (or in {categories_file.name}); "
                         f"found {len(categories)}")
    index_1k = {w: i for i, w in enumerate(imagenet_wnids())}
    seg_dir = base / f"{split}-segmentation"
    if split == "validation":
        require_dir(seg_dir, name, _layout(n_classes))
    samples = []
    for wnid in class_dirs:
        if wnid not in index_1k:
            raise ValueError(f"{name}: class folder {wnid!r} is not an ImageNet-1k wnid")
        for image in images_in(images_dir / wnid):
            mask = seg_dir / wnid / (image.stem + ".png")
            if split == "validation" and not mask.is_file():
                raise FileNotFoundError(f"{name}: no mask {mask} for {image}; expected layout: {_layout(n_classes)}")
            samples.append(Sample(image, mask if split == "validation" else None, index_1k[wnid], image.stem,
                                  mask_format="imagenet_s", mask_class=categories.index(wnid) + 1))
    if not samples:
        raise FileNotFoundError(f"{name}: no images under {images_dir}; expected layout: {_layout(n_classes)}")
    return Dataset(name, samples, 1000, split == "validation", split)
