"""Pixel depths the model's 8-bit eval transform can take, shared by ``caap explain`` and the dataset loaders.

PIL's ``convert("RGB")`` clips every 16-bit value above 255 to white, so 16-bit greyscale is scaled by its full scale
(65535) first; pixels wider than 16 bits, or floats, have no defined full scale and are refused rather than stretched
by the image's own range (which would change what the model sees)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def to_8bit(image: Image.Image, path: str | Path, bits=None) -> Image.Image:
    """``image`` with 16-bit greyscale (PIL modes ``I;16*``, and ``I`` holding values in 0..65535 with at most 16 bits
    per sample) scaled to 8-bit ``L`` by 65535; other modes are returned unchanged. ``bits``: the file's TIFF
    BitsPerSample (read from ``image`` when None; PIL widens 16- and 32-bit TIFFs alike to ``I``). 32-bit integer or
    float pixels raise ValueError naming ``path``."""
    if image.mode == "F":
        raise ValueError(f"cannot read image {str(path)!r}: 32-bit float pixels have no defined full scale; save it "
                         f"as an 8- or 16-bit PNG")
    if not image.mode.startswith("I"):
        return image
    if bits is None:
        bits = getattr(image, "tag_v2", {}).get(258)
    values = np.asarray(image)
    if image.mode == "I" and (max(np.atleast_1d(bits or 16)) > 16 or values.min() < 0 or values.max() > 65535):
        raise ValueError(f"cannot read image {str(path)!r}: 32-bit integer pixels (values {values.min()}.."
                         f"{values.max()}) have no defined full scale; save it as an 8- or 16-bit PNG")
    scaled = np.round(np.clip(values.astype(np.float64) / 65535.0, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(scaled, "L")
