"""Experiments over many samples: attention grouping (Fig. 6), cumulative layer sweeps (Fig. 7) and the blank
(Fig. 4) and selection-operator (Fig. 5) ablations as named CAAP variants for ``analysis.evaluate``."""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from analysis.data import REQUIRED_COLUMNS, parse_label
from analysis.grouping import Grouping, attention_grouping, patch_labels

log = logging.getLogger(__name__)

# Fig. 4: the paper's Black, Blur, Noisy Mean, Noisy, White -> caap.blanks names
BLANK_VARIANTS = {"white": "white", "black": "black", "mean": "mean", "noisy": "noisy", "blur_noisy": "blur_noisy"}
# Fig. 5: No Padding, Radius-1 Box, Radius-2 Box, Radius-1 Manhattan
SELECTION_VARIANTS = {"none": ("none", 0), "box-r1": ("box", 1), "box-r2": ("box", 2), "manhattan-r1": ("manhattan", 1)}


@dataclass(frozen=True)
class InstanceSample:
    """An image with one pixel mask per object instance (paths), its label and a name."""

    image: Path
    masks: tuple[Path, ...]
    label: int
    name: str


def load_instance_manifest(csv_path: str | Path, *, kind: str | None = None) -> list[InstanceSample]:
    """Rows of a manifest as instance samples: ``mask_a``/``mask_b`` (the composites' pairs: the visible part of
    each object) when both are given, else the single ``mask``. ``kind`` filters on the ``kind`` column."""
    csv_path = Path(csv_path)
    out = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        has_masks = "mask" in columns or {"mask_a", "mask_b"} <= set(columns)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns] + ([] if has_masks else ["mask"])
        if missing:
            raise ValueError(f"manifest {str(csv_path)!r} lacks column(s) {', '.join(missing)}; it has "
                             f"{', '.join(columns) or 'none'} (attention grouping needs object masks: a 'mask' "
                             f"column, or 'mask_a' and 'mask_b' for pairs)")
        for row in reader:
            if kind is not None and row.get("kind") != kind:
                continue
            where = f"manifest {str(csv_path)!r} line {reader.line_num}"
            parts = [row.get("mask_a"), row.get("mask_b")]
            masks = parts if all(parts) else [row.get("mask")]
            if not all(masks) or not row["image"]:
                raise ValueError(f"{where}: empty image or mask cell; attention grouping needs an object mask "
                                 f"per row ('mask', or 'mask_a' and 'mask_b')")
            out.append(InstanceSample(csv_path.parent / row["image"], tuple(csv_path.parent / m for m in masks),
                                      parse_label(row["label"], where), Path(row["image"]).stem))
    if not out:
        raise ValueError(f"no samples in {csv_path}" + (f" with kind={kind!r}" if kind else ""))
    return out


def load_pair(model, sample) -> tuple[Float[Tensor, "1 chan H W"], Bool[Tensor, "H W"]]:
    """One image and its mask through ``analysis.data`` (``load_sample``: the checkpoint's eval transform, masks
    by nearest; older trees: ``load_image_and_mask``)."""
    from analysis import data

    if hasattr(data, "load_sample"):
        loaded = data.load_sample(model, sample)
        return loaded.image, loaded.mask
    return data.load_image_and_mask(model, sample)


def load_instances(model, sample: InstanceSample) -> tuple[Float[Tensor, "1 chan H W"], Bool[Tensor, "k H W"]]:
    """The image and one mask per instance, each mask through the same geometric steps as the image
    (:func:`load_pair`)."""
    from analysis.data import Sample

    loaded = [load_pair(model, Sample(sample.image, m, sample.label, sample.name)) for m in sample.masks]
    return loaded[0][0], torch.stack([mask.bool().cpu() for _, mask in loaded])


def grouping_over_samples(model, samples: Iterable[tuple[str, Tensor, Tensor]], *, batch_size: int = 8,
                          renormalize: bool = True, per_head: bool = False, threshold: float = 0.5,
                          progress: bool = True, total: int | None = None) -> Grouping:
    """:func:`analysis.grouping.attention_grouping` over ``(name, image [1, C, H, W], masks [k, H, W])`` items,
    ``batch_size`` images per forward. Items whose masks cover no patch are skipped (logged)."""
    parts, batch, skipped = [], [], []

    def flush():
        if batch:
            names, images, masks = zip(*batch)
            parts.append(attention_grouping(model, torch.cat(images), list(masks), renormalize=renormalize,
                                            per_head=per_head, threshold=threshold, names=names))
            batch.clear()

    for name, image, masks in tqdm(samples, disable=not progress, desc="attention grouping", total=total):
        masks = masks if masks.ndim == 3 else masks[None]
        if (patch_labels(masks, model.cfg.patch_size, threshold) < 0).all():
            skipped.append(name)
            continue
        batch.append((name, image, masks))
        if len(batch) == batch_size:
            flush()
    flush()
    if skipped:
        log.warning("attention grouping: skipped %d samples whose masks cover no patch: %s", len(skipped),
                    ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if not parts:
        raise ValueError("no sample has a mask covering at least one patch")
    return Grouping.concat(parts)


def iter_instances(model, samples: Sequence[InstanceSample]) -> Iterator[tuple[str, Tensor, Tensor]]:
    for s in samples:
        image, masks = load_instances(model, s)
        yield s.name, image, masks


def layer_sweep_methods(model, ends: Iterable[int], **caap_kwargs) -> dict:
    """CAAP patching blocks ``0..end`` for each ``end`` (the cumulative sweep of Fig. 7), keyed ``"0..end"``."""
    from caap import CAAP

    return {f"0..{end}": CAAP(model, layers=(0, end), progress=False, **caap_kwargs).attribute for end in ends}


def blank_methods(model, blanks: Sequence[str] = tuple(BLANK_VARIANTS), **caap_kwargs) -> dict:
    """CAAP with each target blank (Fig. 4), keyed by the blank's name."""
    from caap import CAAP

    unknown = [b for b in blanks if b not in BLANK_VARIANTS]
    if unknown:
        raise ValueError(f"unknown blanks {unknown}; allowed: {list(BLANK_VARIANTS)}")
    return {b: CAAP(model, blank=BLANK_VARIANTS[b], progress=False, **caap_kwargs).attribute for b in blanks}


def selection_methods(model, variants: Sequence[str] = tuple(SELECTION_VARIANTS), **caap_kwargs) -> dict:
    """CAAP with each selection operator (Fig. 5), keyed ``none``, ``box-r1``, ``box-r2``, ``manhattan-r1``."""
    from caap import CAAP

    unknown = [v for v in variants if v not in SELECTION_VARIANTS]
    if unknown:
        raise ValueError(f"unknown selection variants {unknown}; allowed: {list(SELECTION_VARIANTS)}")
    return {v: CAAP(model, selection=SELECTION_VARIANTS[v][0], radius=SELECTION_VARIANTS[v][1], progress=False,
                    **caap_kwargs).attribute for v in variants}
