"""The ground-truth benchmark's images on disk (issue 22): dataset ``synthetic`` of ``caap bench``.

Write a folder once (seeded, ~1 s per 1000 images plus PNG encoding):

    python -m analysis.datasets.synthetic --out DIR --n 1000 --n-pairs 200 --seed 0 [--size 64]

then ``caap bench --weights assets/synthetic_vit/model.safetensors --dataset synthetic --root DIR [--split pairs]``.
Layout of ``DIR``: ``manifest.csv`` (read by :func:`analysis.data.load_manifest`: ``image``, ``label``, ``mask``
= the labelled causal object, ``kind`` = ``single`` | ``pair``; pair rows add ``label2``, ``mask_a`` / ``mask_b``
(each causal object) with ``mask`` their union), plus ``instances`` (a PNG whose value k + 1 marks the object of
slot k, 0 the background: slot 0 the labelled causal object, slot 1 the second causal object of a pair, then
distractors) and ``objects`` (``role:shape-texture-colour`` per slot, ``;``-separated); ``info.json`` (class
names, size, seeds). Singles are drawn from ``[seed, 4]`` and pairs from ``[seed, 5]``: streams the training
script (``[seed, 0..3]``) never sees.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from analysis.data import load_manifest
from analysis.datasets._common import require_file
from analysis.datasets.synthetic_scenes import (CLASS_NAMES, COLOUR_NAMES, SHAPES, TEXTURES, generate)

LAYOUT = "DIR/manifest.csv and DIR/info.json written by `python -m analysis.datasets.synthetic --out DIR`"
SPLITS = ("single", "pairs")
COLUMNS = ("image", "label", "mask", "kind", "label2", "mask_a", "mask_b", "instances", "objects")


def describe(scenes, i: int) -> str:
    """``role:shape-texture-colour`` of each present slot of scene ``i``."""
    parts = []
    for k in np.flatnonzero(scenes.present[i]):
        role = "causal" if k < scenes.n_causal else "distractor"
        parts.append(f"{role}:{SHAPES[scenes.shape[i, k]]}-{TEXTURES[scenes.texture[i, k]]}-"
                     f"{COLOUR_NAMES[scenes.colour[i, k]]}")
    return ";".join(parts)


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def write(out: Path, n: int = 1000, n_pairs: int = 200, seed: int = 0, size: int = 64) -> dict:
    """Write the folder; returns ``info`` (also ``out/info.json``) with the generation and writing seconds."""
    if n < 0 or n_pairs < 0 or n + n_pairs == 0:
        raise ValueError(f"n and n_pairs must be >= 0 and not both 0; got n={n}, n_pairs={n_pairs}")
    out = Path(out)
    for sub in ("images", "masks", "instances"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows, seconds = [], {}
    for kind, count, stream in (("single", n, 4), ("pair", n_pairs, 5)):
        if not count:
            continue
        start = time.perf_counter()
        scenes, images, inst = generate(count, [seed, stream], size, kind)
        seconds[f"generate_{kind}"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        for i in range(count):
            stem = f"{kind}_{i:05d}"
            row = {"image": f"images/{stem}.png", "label": int(scenes.label[i]), "kind": kind,
                   "instances": f"instances/{stem}.png", "objects": describe(scenes, i),
                   "label2": "", "mask_a": "", "mask_b": ""}
            _save(images[i], out / row["image"])
            _save(inst[i], out / row["instances"])
            a = (inst[i] == 1).astype(np.uint8) * 255
            if kind == "single":
                row["mask"] = f"masks/{stem}.png"
                _save(a, out / row["mask"])
            else:
                b = (inst[i] == 2).astype(np.uint8) * 255
                row.update(label2=int(scenes.label2[i]), mask=f"masks/{stem}.png", mask_a=f"masks/{stem}_a.png",
                           mask_b=f"masks/{stem}_b.png")
                _save(a | b, out / row["mask"])
                _save(a, out / row["mask_a"])
                _save(b, out / row["mask_b"])
            rows.append(row)
        seconds[f"write_{kind}"] = round(time.perf_counter() - start, 3)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    info = {"generator": "analysis.datasets.synthetic_scenes", "class_names": list(CLASS_NAMES), "size": size,
            "seed": seed, "n": n, "n_pairs": n_pairs, "streams": {"single": [seed, 4], "pair": [seed, 5]},
            "seconds": seconds}
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _with_instances(samples: list, manifest: Path) -> list:
    """Each sample with its instance map and object list (``Sample.extra``), for the look-alike metric."""
    import csv
    import dataclasses

    with open(manifest, newline="") as f:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(f)}
    return [dataclasses.replace(s, extra=(("instances", str(manifest.parent / rows[s.name]["instances"])),
                                          ("objects", rows[s.name]["objects"]))) for s in samples]


def load(root, split=None, *, name: str):
    """The ``single`` (default) or ``pairs`` rows of a folder written by :func:`write`."""
    from analysis.datasets import Dataset

    split = split or "single"
    if split not in SPLITS + ("pair",):
        raise ValueError(f"{name}: split must be one of {', '.join(SPLITS)}; got {split!r}")
    folder = Path(root)
    manifest = require_file(folder / "manifest.csv", name, LAYOUT)
    info_path = require_file(folder / "info.json", name, LAYOUT)
    try:
        info = json.loads(info_path.read_text())
        class_names = list(info["class_names"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{name}: {str(info_path)!r} is not the info.json of the generator (a JSON object with "
                         f"'class_names'): {err!r}") from None
    samples = _with_instances(load_manifest(manifest, kind=split), manifest)
    return Dataset(name, samples, len(class_names), True, "pairs" if split == "pair" else split,
                   class_names=class_names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.datasets.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=1000, help="single scenes (one causal object)")
    p.add_argument("--n-pairs", type=int, default=200, help="pair scenes (two causal objects)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="pixels (a multiple of 32; the model's input size)")
    args = p.parse_args(argv)
    info = write(args.out, args.n, args.n_pairs, args.seed, args.size)
    print(f"wrote {args.n} single and {args.n_pairs} pair scenes to {args.out} ({info['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
