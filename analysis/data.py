"""Image + mask samples through the checkpoint's own eval transform, and the CSV manifests of ../shared/eval.

A :class:`Sample` names an image file, its label and optionally a mask file with the way to decode it
(``mask_format``); :func:`load_sample` returns the model input and the mask on the model's input grid. The
image goes through ``model.transform`` (timm's eval transform for the checkpoint: resize, then centre crop,
or squash, as its ``data_config`` says); the mask goes through the SAME geometric steps with nearest
interpolation, so mask pixels stay aligned with image pixels.
"""
from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from PIL import Image
from torch import Tensor

# decoded mask values: 0 background, 1 foreground, IGNORE left out of the localization metrics
FOREGROUND, IGNORE = 1, 255
MASK_FORMATS = ("binary", "imagenet_s", "trimap")


@dataclass(frozen=True)
class Sample:
    """One evaluation image. ``mask`` None: the dataset has no masks (localization metrics are skipped).
    ``mask_format``: ``"binary"`` (grey, > 127 = object), ``"imagenet_s"`` (RGB, class = R + 256 G; the
    object is ``mask_class``, 1000 = ignore) or ``"trimap"`` (Oxford-IIIT-Pet: 1 pet, 2 background,
    3 border = ignore). ``labels``: every label counted correct (ImageNet-Hard has several); default
    ``(label,)``."""
    image: Path
    mask: Path | None
    label: int
    name: str
    mask_format: str = "binary"
    mask_class: int | None = None
    labels: tuple[int, ...] | None = None

    def correct(self, predicted: int) -> bool:
        return predicted in (self.labels or (self.label,))


REQUIRED_COLUMNS = ("image", "label")


def load_manifest(csv_path: str | Path, *, kind: str | None = None) -> list[Sample]:
    """Rows of a manifest with ``image``, ``label`` and (optional) ``mask`` columns, paths relative to the
    CSV; ``kind`` filters the composites manifest (``"single"`` or ``"pair"``; ``"pairs"`` is accepted)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest {str(csv_path)!r} not found (expected a CSV with columns "
                                f"{', '.join(REQUIRED_COLUMNS)}[, mask, kind])")
    kind = {"pairs": "pair"}.get(kind, kind)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns] + \
                  (["kind"] if kind is not None and "kind" not in columns else [])
        if missing:
            raise ValueError(f"manifest {str(csv_path)!r} lacks column(s) {', '.join(missing)}; it has "
                             f"{', '.join(columns) or 'none'}")
        samples = []
        for row in reader:
            if kind is not None and row.get("kind") != kind:
                continue
            mask = csv_path.parent / row["mask"] if row.get("mask") else None
            samples.append(Sample(csv_path.parent / row["image"], mask, int(row["label"]), Path(row["image"]).stem))
    if not samples:
        raise ValueError(f"no samples in {csv_path}" + (f" with kind={kind!r}" if kind else ""))
    return samples


def _geometric_steps(model) -> list:
    """The PIL-level steps of ``model.transform`` (resize, crop, pad), set to nearest interpolation."""
    from torchvision import transforms as T

    steps = []
    for t in model.transform.transforms:
        name = type(t).__name__
        if name in ("ToTensor", "MaybeToTensor", "Normalize", "PILToTensor", "ConvertImageDtype"):
            continue
        if name not in ("Resize", "CenterCrop", "ResizeKeepRatio", "CenterCropOrPad"):
            raise ValueError(f"model.transform has a step {name!r} that masks cannot follow; supported: Resize, "
                             f"CenterCrop, ResizeKeepRatio, CenterCropOrPad")
        t = copy.copy(t)
        if hasattr(t, "interpolation"):
            t.interpolation = T.InterpolationMode.NEAREST
        steps.append(t)
    return steps


def decode_mask(sample: Sample) -> np.ndarray:
    """The sample's mask at its file's resolution: uint8 with 0 background, 1 foreground, 255 ignore."""
    if sample.mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}; got {sample.mask_format!r}")
    img = Image.open(sample.mask)
    if sample.mask_format == "binary":
        return (np.asarray(img.convert("L")) > 127).astype(np.uint8)
    if sample.mask_format == "trimap":
        t = np.asarray(img)
        out = np.zeros(t.shape[:2], np.uint8)
        out[t == 1] = FOREGROUND
        out[t == 3] = IGNORE
        return out
    rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1]
    out = (ids == sample.mask_class).astype(np.uint8)
    out[ids == 1000] = IGNORE
    return out


class Loaded(NamedTuple):
    image: Float[Tensor, "1 chan H W"]
    mask: Bool[Tensor, "H W"] | None
    ignore: Bool[Tensor, "H W"] | None


def load_sample(model, sample: Sample) -> Loaded:
    """``model.transform`` applied to the image and (nearest) to the mask; the image on the model's
    device and dtype, the masks on the CPU."""
    param = next(model.parameters())
    image = Image.open(sample.image).convert("RGB")
    x = model.transform(image)[None].to(param.device, param.dtype)
    if sample.mask is None:
        return Loaded(x, None, None)
    decoded = Image.fromarray(decode_mask(sample))
    if decoded.size != image.size:
        raise ValueError(f"mask {sample.mask} is {decoded.size[0]}x{decoded.size[1]} but image {sample.image} is "
                         f"{image.size[0]}x{image.size[1]}")
    for step in _geometric_steps(model):
        decoded = step(decoded)
    m = torch.from_numpy(np.asarray(decoded).copy())
    if tuple(m.shape) != tuple(x.shape[-2:]):
        raise ValueError(f"the mask came out {tuple(m.shape)} but the image {tuple(x.shape[-2:])}")
    ignore = m == IGNORE
    return Loaded(x, m == FOREGROUND, ignore if ignore.any() else None)


def load_image_and_mask(model, sample: Sample) -> tuple[Float[Tensor, "1 chan H W"], Bool[Tensor, "H W"]]:
    """``(image, mask)`` of :func:`load_sample` (the image on the model's device); needs a mask."""
    loaded = load_sample(model, sample)
    if loaded.mask is None:
        raise ValueError(f"sample {sample.name!r} has no mask")
    return loaded.image, loaded.mask


def subset(samples: list[Sample], n: int | None, seed: int = 0) -> list[Sample]:
    """A seeded random subset of ``n`` samples (the paper: 500 random validation images), kept in dataset
    order; all samples when ``n`` is None or >= their number."""
    if n is None or n >= len(samples):
        return list(samples)
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    picked = np.random.default_rng(seed).choice(len(samples), size=n, replace=False)
    return [samples[i] for i in sorted(picked.tolist())]
