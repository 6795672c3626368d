"""A ``caap bench --out DIR`` folder for the viewer: per image, every method's metric row and its Deletion /
Insertion curves, and the image itself when the run's dataset root is still readable.

Read-only: the results files are parsed without repairing them (a torn last line of a running job is left out,
as ``caap bench --table-only`` does). Rows are one per (sample, method); the image is the dataset's file
through the run's eval transform (``run.json``'s ``model_info.data_config``), as the model saw it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from analysis.viewer.data import ImageData, finite_or_none

log = logging.getLogger(__name__)

METRIC_KEYS = ("deletion", "insertion", "ins_del", "aupr1", "aupr0", "pointing_game")
ROW_KEYS = ("target", "predicted", "label", "correct", "skipped", "seconds", "mask_note")


def read_results(folder: Path) -> tuple[dict, dict[str, dict[str, dict]]]:
    """``run.json`` and ``{sample: {method: row}}`` in the dataset order of the files. One error naming the
    folder when it is no ``caap bench`` output."""
    from analysis.evaluate import check_row
    from analysis.provenance import read_run_json

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--results {str(folder)!r}: no such directory (a `caap bench --out` folder)")
    run_file = folder / "run.json"
    if not run_file.is_file():
        raise ValueError(f"--results {str(folder)!r} holds no run.json: not a `caap bench --out` folder")
    run = read_run_json(run_file)
    files = sorted(folder.glob("results*.jsonl"))
    if not files:
        raise ValueError(f"--results {str(folder)!r} holds no results*.jsonl rows yet")
    samples: dict[str, dict[str, dict]] = {}
    for path in files:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # a job still writing: its torn last line is left out
                    log.warning("%s: skipping a torn last line", path)
                    continue
                raise ValueError(f"{path}: line {i + 1} is not JSON; the results file is corrupt") from None
            row = check_row(row, path, i + 1)
            samples.setdefault(row["sample"], {}).setdefault(row["method"], _clean(row))
    methods = list(dict.fromkeys(run.get("methods") or []))
    order = {m: i for i, m in enumerate(methods)}
    for sample, rows in samples.items():
        samples[sample] = dict(sorted(rows.items(), key=lambda kv: order.get(kv[0], len(order))))
    return run, samples


def _clean(row: dict) -> dict:
    out = {k: finite_or_none(row.get(k)) for k in METRIC_KEYS if k in row}
    out.update({k: row[k] for k in ROW_KEYS if k in row})
    curves = row.get("curves") or {}
    out["curves"] = {k: [finite_or_none(float(v)) for v in curves[k]] for k in ("deletion", "insertion")
                     if isinstance(curves.get(k), list)}
    return out


def _images(run: dict) -> dict[str, Path]:
    """sample name -> image file, from the run's dataset and root (empty when they cannot be read now)."""
    from analysis.datasets import get_dataset

    try:
        dataset = get_dataset(run["dataset"], Path(run["root"]), run.get("split"))
    except (KeyError, OSError, ValueError) as err:
        log.warning("images of the run not found (%s): the page shows curves and metrics only", err)
        return {}
    return {s.name: s.image for s in dataset.samples}


def _display(path: Path, data_config: dict | None) -> np.ndarray:
    """The image as the run's model saw it (its eval transform), ``[H, W, 3]`` floats in [0, 1]."""
    import torch
    from timm.data import create_transform

    from analysis.data import open_image

    image = open_image(path).convert("RGB")
    if not data_config:
        return np.asarray(image.resize((224, 224)), dtype=np.float32) / 255
    config = {k: data_config[k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
              if k in data_config}
    config["input_size"] = tuple(config.get("input_size", (3, 224, 224)))
    x = create_transform(**config, is_training=False)(image)
    mean = torch.tensor(config.get("mean", (0.485, 0.456, 0.406))).view(-1, 1, 1)
    std = torch.tensor(config.get("std", (0.229, 0.224, 0.225))).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def results_images(folder: Path, limit: int | None = None) -> tuple[dict, list[ImageData]]:
    """One :class:`ImageData` per sample of the run (first ``limit``), with ``results`` and the image when found."""
    run, samples = read_results(folder)
    files = _images(run)
    data_config = (run.get("model_info") or {}).get("data_config")
    out = []
    for name, rows in list(samples.items())[:limit]:
        first = next(iter(rows.values()))
        display, error = None, None
        if name in files:
            try:
                display = _display(files[name], data_config)
            except (OSError, ValueError) as err:
                error = f"image not readable: {err}"
        else:
            error = "image not found under the run's root " + repr(run.get("root"))
        cls = first.get("target")
        out.append(ImageData(name=name, display=display, classes=[cls] if isinstance(cls, int) else [],
                             probs=[], results=rows, error=error))
    return run, out
