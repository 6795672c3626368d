"""What a stored result was computed from: content digests of the weights and of every image and mask, so that a
resumed ``caap bench`` or a ``caap figure`` reusing its rows can refuse rows made from other files.

Paths are not identity: the same command on another dataset folder whose files share names (or a checkpoint
retrained in place) must not reuse old rows, while a folder moved elsewhere with the same content may. Digests
are SHA-256 of the file bytes (≈ 1 GB/s; a 500-image subset of ImageNet reads ≈ 65 MB once per run).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sample_digest(sample) -> str:
    """One digest per :class:`analysis.data.Sample`: its label(s), mask decoding and the bytes of its image and
    mask files (16 hex digits: collisions would need ~4e9 samples)."""
    h = hashlib.sha256()
    fields = {"label": sample.label, "labels": list(sample.labels) if sample.labels else None,
              "mask_format": sample.mask_format, "mask_class": sample.mask_class,
              "image": file_digest(sample.image), "mask": file_digest(sample.mask) if sample.mask else None}
    if getattr(sample, "extra", ()):  # dataset-specific inputs of metrics (files by content)
        fields["extra"] = {k: file_digest(v) if Path(v).is_file() else v for k, v in sample.extra}
    h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()[:16]


def sample_digests(samples) -> dict[str, str]:
    """``{sample.name: digest}`` for the samples of a run."""
    return {s.name: sample_digest(s) for s in samples}


def combined_digest(digests: dict[str, str]) -> str:
    """One digest of the whole ``{name: digest}`` mapping (order-independent)."""
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def weights_record(path: Path | None) -> dict[str, Any] | None:
    """``{"path", "bytes", "sha256"}`` of a local checkpoint (None for a timm name)."""
    if path is None:
        return None
    path = path.resolve()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_digest(path)}


def hf_weights_digest(name_or_dir: str | None) -> str | None:
    """SHA-256 over the weight files of a ``save_pretrained`` directory (None for a hub name or no ``--hf``)."""
    if not name_or_dir or not Path(name_or_dir).is_dir():
        return None
    files = sorted(p for p in Path(name_or_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return hashlib.sha256(json.dumps({p.name: file_digest(p) for p in files}).encode()).hexdigest()


def read_run_json(path: Path) -> dict:
    """A ``run.json`` written by ``caap bench`` / ``caap figure``; errors name the file."""
    try:
        run = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it should hold the run's settings (delete it only "
                         f"together with the results beside it)") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path} must hold a JSON object of settings; got a {type(run).__name__}")
    return run
