"""Image + mask samples through the checkpoint's own eval transform, and the CSV manifests of ../shared/eval.

A :class:`Sample` names an image file, its label and optionally a mask file with the way to decode it
(``mask_format``); :func:`load_sample` returns the model input and the mask on the model's input grid. The
image goes through ``model.transform`` (timm's eval transform for the checkpoint: resize, then centre crop,
or squash, as its ``data_config`` says); the mask goes through the SAME geometric steps with nearest
interpolation, so mask pixels stay aligned with image pixels.

Bad files fail where they are read, naming the file (and the manifest line): unreadable images and masks,
labels that are not non-negative integers, and masks whose decoded values are outside their format's set or
whose object is empty (:func:`decode_mask`). An object that is present in the file but falls outside the
model's crop is legitimate: :func:`load_sample` logs a warning and the localization metrics of that image
are recorded as ``None`` (``analysis.evaluate``).
"""
from __future__ import annotations

import copy
import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor

log = logging.getLogger(__name__)

# decoded mask values: 0 background, 1 foreground, IGNORE left out of the localization metrics
FOREGROUND, IGNORE = 1, 255
MASK_FORMATS = ("binary", "imagenet_s", "trimap")


@dataclass(frozen=True)
class Sample:
    """One evaluation image. ``mask`` None: the dataset has no masks (localization metrics are skipped).
    ``mask_format``: ``"binary"`` (grey, > 127 = object), ``"imagenet_s"`` (RGB, class = R + 256 G; the
    object is ``mask_class``, 1000 = ignore) or ``"trimap"`` (Oxford-IIIT-Pet: 1 pet, 2 background,
    3 border = ignore). ``labels``: every label counted correct (ImageNet-Hard has several); default
    ``(label,)``. ``objects``: the classes of the distinct objects of a several-object image (the composites'
    pairs: ``(label, label2)``), which decide :meth:`correct`; ``masks_by_label``: each object's class and its
    own mask file, ``((label, mask_a), (label2, mask_b))``, ``mask`` being their union. ``analysis.evaluate``
    scores localization against the mask of the object whose class is explained (:meth:`object_mask`), or
    against the union on request."""
    image: Path
    mask: Path | None
    label: int
    name: str
    mask_format: str = "binary"
    mask_class: int | None = None
    labels: tuple[int, ...] | None = None
    objects: tuple[int, ...] | None = None
    masks_by_label: tuple[tuple[int, Path], ...] | None = None
    # dataset-specific fields a metric may read, e.g. the synthetic scenes' instance map and object list
    extra: tuple[tuple[str, str], ...] = ()

    def correct(self, predicted: int, target: str = "predicted") -> bool:
        """Whether ``predicted`` counts as correct. Several objects: the explained object's class must be the
        prediction, so with ``target="label"`` only ``label`` counts and with ``"predicted"`` any object's class
        (an image predicted as none of them is misclassified)."""
        if self.objects is not None:
            return predicted == self.label if target == "label" else predicted in self.objects
        return predicted in (self.labels or (self.label,))

    def object_mask(self, cls: int) -> Path | None:
        """The mask file of the object of class ``cls`` (``mask`` when no per-object masks are given, or when
        several objects share the class: their union); None when no object has that class."""
        if self.masks_by_label is None:
            return self.mask
        paths = [path for label, path in self.masks_by_label if label == cls]
        return None if not paths else paths[0] if len(paths) == 1 else self.mask


REQUIRED_COLUMNS = ("image", "label")
LABEL_RULE = "labels are class indices 0, 1, 2, ... (non-negative integers)"


def parse_label(value: str | None, where: str) -> int:
    """A class index read from a text field; ``where`` names the file and line for the error."""
    text = (value or "").strip()
    try:
        label = int(text)
    except ValueError:
        raise ValueError(f"{where}: label {value!r} is not an integer; {LABEL_RULE}") from None
    if label < 0:
        raise ValueError(f"{where}: label {label} is negative; {LABEL_RULE}")
    return label


def open_image(path: Path, what: str = "image") -> Image.Image:
    """The decoded file (all pixels read now), or one error naming it: FileNotFoundError when absent,
    ValueError when it is no image PIL can decode (corrupt, truncated, another format)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read {what} {str(path)!r}: {err}") from None
    return img


PAIR_COLUMNS = ("mask", "mask_a", "mask_b")


def load_manifest(csv_path: str | Path, *, kind: str | None = None) -> list[Sample]:
    """Rows of a manifest with ``image``, ``label`` and (optional) ``mask`` columns, paths relative to the
    CSV; ``kind`` filters the composites manifest (``"single"`` or ``"pair"``; ``"pairs"`` is accepted).
    A row with a ``label2`` (a second object, the composites' pairs) gets ``objects = (label, label2)`` and,
    when it has masks, ``masks_by_label = ((label, mask_a), (label2, mask_b))`` beside the union ``mask``:
    all three mask cells must then be filled (one error naming the line otherwise)."""
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
            where = f"manifest {str(csv_path)!r} line {reader.line_num}"
            if not (row["image"] or "").strip():
                raise ValueError(f"{where}: the image cell is empty; give a path relative to the CSV")
            label = parse_label(row["label"], where)
            mask = csv_path.parent / row["mask"] if row.get("mask") else None
            sample = Sample(csv_path.parent / row["image"], mask, label, Path(row["image"]).stem)
            if (row.get("label2") or "").strip():
                sample = _pair(sample, row, where, csv_path.parent)
            samples.append(sample)
    if not samples:
        raise ValueError(f"no samples in {csv_path}" + (f" with kind={kind!r}" if kind else ""))
    return samples


def _pair(sample: Sample, row: dict, where: str, folder: Path) -> Sample:
    """A two-object row: both labels, and each object's mask beside the union (all or none of the three)."""
    label2 = parse_label(row["label2"], where)
    cells = {c: (row.get(c) or "").strip() for c in PAIR_COLUMNS}
    if not any(cells.values()):
        return replace(sample, objects=(sample.label, label2))
    empty = [c for c, v in cells.items() if not v]
    if empty:
        raise ValueError(f"{where}: a two-object row (label2 {label2}) needs every mask cell {', '.join(PAIR_COLUMNS)} "
                         f"(union, object 'label', object 'label2'), or none; {', '.join(empty)} empty")
    by_label = ((sample.label, folder / cells["mask_a"]), (label2, folder / cells["mask_b"]))
    return replace(sample, objects=(sample.label, label2), masks_by_label=by_label)


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


def _values(a: np.ndarray, limit: int = 8) -> str:
    found = np.unique(a).tolist()
    return str(found) if len(found) <= limit else f"{found[:limit - 1]} ... {found[-1]} ({len(found)} values)"


def decode_mask(sample: Sample) -> np.ndarray:
    """The sample's mask at its file's resolution: uint8 with 0 background, 1 foreground, 255 ignore.

    Checked against its format, so a mask in another encoding fails here instead of silently dropping the
    localization metrics: ``binary`` needs an object pixel (grey > 127; a 0/1 mask has none); ``trimap``
    needs one channel (an RGB file with equal channels is read as grey) holding only 1, 2, 3 and a pet
    pixel; ``imagenet_s`` needs a colour file (greyscale would turn value v into id 257 v), ids <= 1000 and a
    pixel of the image's own class ``mask_class``. ValueError names the file, the values found and the
    expected encoding."""
    if sample.mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}; got {sample.mask_format!r}")
    path = str(sample.mask)
    img = open_image(sample.mask, "mask")
    if sample.mask_format == "binary":
        grey = np.asarray(img.convert("L"))
        out = (grey > 127).astype(np.uint8)
        if not out.any():
            raise ValueError(f"mask {path!r} has no object pixel: values found {_values(grey)} ({img.mode}); "
                             f"expected a binary mask with the object > 127 (e.g. 0 background, 255 object)")
        return out
    if sample.mask_format == "trimap":
        expected = "a single-channel PNG holding 1 pet, 2 background, 3 border (Oxford-IIIT-Pet trimap)"
        t = np.asarray(img)
        if t.ndim == 3:
            if img.mode in ("RGB", "RGBA") and (t[..., :3] == t[..., :1]).all():
                t = t[..., 0]  # grey values saved as RGB
            else:
                raise ValueError(f"trimap {path!r} is a {img.mode} image with differing channels; expected {expected}")
        if not np.isin(t, (1, 2, 3)).all():
            raise ValueError(f"trimap {path!r} holds values {_values(t)}; expected {expected}")
        if not (t == 1).any():
            raise ValueError(f"trimap {path!r} has no pet pixel (value 1): values found {_values(t)}; "
                             f"expected {expected}")
        out = np.zeros(t.shape, np.uint8)
        out[t == 1] = FOREGROUND
        out[t == 3] = IGNORE
        return out
    expected = (f"an RGB PNG with class id R + 256 G (0 other, 1000 ignored, this image's class "
                f"{sample.mask_class}; ImageNet-S data_preparation.sh)")
    if sample.mask_class is None:
        raise ValueError(f"mask {path!r}: mask_format 'imagenet_s' needs the sample's mask_class")
    if img.mode not in ("RGB", "RGBA", "P"):
        raise ValueError(f"ImageNet-S mask {path!r} is a {img.mode} (single-channel) image; expected {expected}")
    rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1]  # blue is unused (the reference evaluator reads R + 256 G)
    if (ids > 1000).any():
        raise ValueError(f"ImageNet-S mask {path!r} holds class ids {_values(ids)} (above 1000); expected {expected}")
    if not (ids == sample.mask_class).any():
        raise ValueError(f"ImageNet-S mask {path!r} has no pixel of this image's class id {sample.mask_class}: ids "
                         f"found {_values(ids)}; expected {expected}")
    out = (ids == sample.mask_class).astype(np.uint8)
    out[ids == 1000] = IGNORE
    return out


class Loaded(NamedTuple):
    image: Float[Tensor, "1 chan H W"]
    mask: Bool[Tensor, "H W"] | None
    ignore: Bool[Tensor, "H W"] | None


def to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB as ``model.transform`` expects, read as ``caap explain`` reads it (:func:`caap.images.to_8bit`:
    16-bit greyscale scaled by 65535, wider integer or float pixels refused naming ``path``)."""
    from caap.images import to_8bit

    return to_8bit(image, path).convert("RGB")


def load_sample(model, sample: Sample) -> Loaded:
    """``model.transform`` applied to the image and (nearest) to the mask; the image on the model's
    device and dtype, the masks on the CPU."""
    param = next(model.parameters())
    image = to_rgb(open_image(sample.image), sample.image)
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
    if not (m == FOREGROUND).any():
        log.warning("mask %s: the object lies outside the model's crop of %s; its localization metrics are "
                    "recorded as None", sample.mask, sample.image)
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
