"""A CSV manifest (``../shared/eval``: ``davis/manifest.csv``, ``composites/manifest.csv``): columns ``image``,
``label`` and optionally ``mask`` and ``kind``, paths relative to the CSV. ``ROOT`` is the CSV file (or a
directory holding ``manifest.csv``); ``split`` filters ``kind`` (composites: ``single`` or ``pairs``).
Two-object rows (``label2``, ``mask_a`` = object ``label``, ``mask_b`` = object ``label2``, ``mask`` = their
union) keep each object's mask, so localization is scored against the explained object (``caap bench
--pair-mask``; :func:`analysis.data.load_manifest`)."""
from __future__ import annotations

from pathlib import Path

from analysis.data import load_manifest


def load(root, split=None, *, name: str):
    from analysis.datasets import Dataset

    path = Path(root)
    if path.is_dir():
        path = path / "manifest.csv"
    samples = load_manifest(path, kind=split)
    with_masks = [s.mask is not None for s in samples]
    if any(with_masks) and not all(with_masks):
        raise ValueError(f"{name}: {path} gives masks for some rows only")
    return Dataset(name, samples, None, all(with_masks), split or "all")
