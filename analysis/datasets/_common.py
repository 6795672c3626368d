"""Shared helpers of the dataset loaders."""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def require_dir(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: {str(path)!r} is not a directory; expected layout: {layout}")
    return path


def require_file(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: missing {str(path)!r}; expected layout: {layout}")
    return path


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (timm's ``ImageNetInfo``: sorted wnids)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_label_name(i) for i in range(1000)]
