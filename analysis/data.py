"""Image + mask samples from the evaluation manifests (DAVIS frames, DAVIS-composites)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from PIL import Image
from torch import Tensor

from caap.blanks import normalize


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path
    label: int
    name: str


def load_manifest(csv_path: str | Path, *, kind: str | None = None) -> list[Sample]:
    """Rows of a manifest with ``image``, ``mask`` and ``label`` columns (paths relative to the CSV);
    ``kind`` filters the composites manifest (``"single"`` or ``"pair"``)."""
    csv_path = Path(csv_path)
    samples = []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if kind is not None and row.get("kind") != kind:
                continue
            samples.append(Sample(csv_path.parent / row["image"], csv_path.parent / row["mask"], int(row["label"]),
                                  Path(row["image"]).stem))
    if not samples:
        raise ValueError(f"no samples in {csv_path}" + (f" with kind={kind!r}" if kind else ""))
    return samples


def load_image_and_mask(model, sample: Sample) -> tuple[Float[Tensor, "1 chan H W"], Bool[Tensor, "H W"]]:
    """Resize the whole image (bicubic) and its mask (nearest) to the model's input size, so mask
    pixels stay aligned with image pixels; normalize with the model's mean/std."""
    h, w = model.cfg.image_size
    image = Image.open(sample.image).convert("RGB").resize((w, h), Image.BICUBIC)
    mask = Image.open(sample.mask).convert("L").resize((w, h), Image.NEAREST)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return normalize(model, pixels)[None], torch.from_numpy(np.asarray(mask) > 127)
