"""Compact text encodings of the arrays the viewer page decodes in JavaScript (``viewer.js``: ``decodeF32``,
``decodeU16``, ``inflateU8``).

float32 and uint16 arrays are stored little-endian in base64 (exact: the page reads back the very float32
values Python holds, 4/3 bytes of text per byte). Attention patterns are quantized to uint8 per row (a row's
entries relative to its maximum, the maximum kept as float32) and zlib-compressed before base64; the page
inflates them with the browser's built-in ``DecompressionStream("deflate")``, so nothing is fetched.
"""
from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


def f32(values) -> str:
    """base64 of the values as little-endian float32, flattened in C order."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def u16(values) -> str:
    """base64 of non-negative integers < 65536 as little-endian uint16 (class indices)."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ValueError(f"u16 holds integers in [0, 65535]; got values {array.min()}..{array.max()}")
    return base64.b64encode(np.ascontiguousarray(array, dtype="<u2").tobytes()).decode("ascii")


def decode_f32(text: str) -> np.ndarray:
    """Inverse of :func:`f32` (flat)."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def quantize_rows(pattern: Float[Tensor, "... key"]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 codes ``round(255 · a / max(row))`` and the float32 row maxima: the page shows
    ``code / 255 · max``, within ``max / 510`` of the true value (the row's largest entry is exact)."""
    scale = pattern.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(pattern.dtype).tiny)
    codes = torch.round(pattern / scale * 255).clamp(0, 255).to(torch.uint8)
    return codes.cpu().numpy(), scale[..., 0].float().cpu().numpy()


def dequantize_rows(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What the page computes from :func:`quantize_rows`'s output."""
    return codes.astype(np.float32) / np.float32(255) * scale[..., None].astype(np.float32)


def deflate_u8(codes: np.ndarray) -> str:
    """base64 of the zlib stream (level 9) of uint8 ``codes`` in C order."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(codes, dtype=np.uint8).tobytes(), 9)).decode("ascii")


def png_data_uri(pixels: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of ``pixels`` (``[height, width, 3]`` uint8, or floats in [0, 1])."""
    from PIL import Image

    if pixels.dtype != np.uint8:
        pixels = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
