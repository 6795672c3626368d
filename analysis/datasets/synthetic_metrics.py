"""Ground-truth metrics of the synthetic benchmark (issue 22): how much of a map lies on the object that truly
decides the class, and how much on the look-alikes that do not.

* relevance mass accuracy (Arras, Osman & Samek 2022, CLEVR-XAI): positive attribution inside the region /
  all positive attribution (the map bilinearly upsampled to pixels, as the paper's localization metrics);
* relevance rank accuracy (same paper; top-k precision with k = the region's pixel count): the share of the k
  highest pixels inside the region, ties at the k-th value counted by their share inside the region (the
  expected value under random tie-breaking, so a constant map scores the region's area fraction);
* mass on look-alikes: the relevance mass on the distractors that share two of three features with the
  explained class's causal object (:func:`lookalike_region`), and on all distractors.

Registry: :func:`mass_metric` and :func:`rank_metric` are ``analysis.metrics`` factories scoring against the
context's object mask, so one line each in ``analysis.metrics.registry._BUILTINS``
(``"gt-mass": "analysis.datasets.synthetic_metrics:mass_metric"``, same for ``gt-rank``) makes them
``caap bench --metrics`` names. The look-alike mass needs the scene's instance map, which the registry's
``Context`` does not carry (only the sample's name): :func:`score_folder` computes all of them, and
``python -m analysis.datasets.synthetic_metrics`` writes their table. Cost: no forward pass.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from PIL import Image
from torch import Tensor

from analysis.datasets.synthetic_scenes import COLOUR_NAMES, LOOKALIKE, SHAPES, TEXTURES, combo_id
from analysis.metrics.curves import check_finite, to_pixels
from analysis.metrics.registry import Context, Metric


def _pixels(attribution: Tensor, region: Tensor, ignore: Tensor | None = None) -> tuple[Tensor, Tensor]:
    if attribution.ndim != 2 or region.ndim != 2:
        raise ValueError(f"attribution [h, w] and region [H, W] must be 2-D; got {tuple(attribution.shape)} and "
                         f"{tuple(region.shape)}")
    check_finite(attribution)
    a = to_pixels(attribution[None].detach().cpu(), tuple(region.shape))[0].flatten()
    r = region.detach().cpu().flatten().bool()
    if ignore is not None:
        keep = ~ignore.cpu().flatten().bool()
        a, r = a[keep], r[keep]
    return a.double(), r


def relevance_mass(attribution: Float[Tensor, "h w"], region: Bool[Tensor, "H W"],
                   ignore: Bool[Tensor, "H W"] | None = None) -> float | None:
    """Positive attribution inside ``region`` / all positive attribution; None when the map has none."""
    a, r = _pixels(attribution, region, ignore)
    pos = a.clamp_min(0)
    total = float(pos.sum())
    return float(pos[r].sum()) / total if total > 0 else None


def rank_accuracy(attribution: Float[Tensor, "h w"], region: Bool[Tensor, "H W"],
                  ignore: Bool[Tensor, "H W"] | None = None) -> float:
    """Share of the k = |region| highest pixels inside the region (ties at the k-th value counted fractionally)."""
    a, r = _pixels(attribution, region, ignore)
    k = int(r.sum())
    if k == 0 or k == r.numel():
        raise ValueError(f"region must hold some but not all pixels; it holds {k} of {r.numel()}")
    kth = torch.sort(a, descending=True).values[k - 1]
    above, tied = a > kth, a == kth
    slots = k - int(above.sum())
    return (float((above & r).sum()) + slots * float((tied & r).sum()) / float(tied.sum())) / k


def parse_objects(objects: str) -> list[tuple[str, int]]:
    """``role:shape-texture-colour;...`` (the manifest's ``objects`` cell) -> [(role, combo id)] per slot."""
    out = []
    for part in objects.split(";"):
        role, combo = part.split(":")
        shape, texture, colour = combo.split("-")
        out.append((role, combo_id(SHAPES.index(shape), TEXTURES.index(texture), COLOUR_NAMES.index(colour))))
    return out


def lookalike_region(instances: np.ndarray, objects: str, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(look-alikes of ``target``, all distractors) as boolean pixel masks of the instance map. A ``target`` that
    is no causal class (the ``none`` output) has no look-alikes: an empty first mask."""
    look, dis = np.zeros(instances.shape, bool), np.zeros(instances.shape, bool)
    causal_class = 0 <= target < LOOKALIKE.shape[1]
    for k, (role, combo) in enumerate(parse_objects(objects)):
        if role == "distractor":
            dis |= instances == k + 1
            if causal_class and LOOKALIKE[combo, target]:
                look |= instances == k + 1
    return look, dis


def _score_mass(ctx: Context, names, maps) -> list[dict]:
    return [{"gt_mass": relevance_mass(m[0], ctx.mask, ctx.ignore)} for m in maps]


def _score_rank(ctx: Context, names, maps) -> list[dict]:
    return [{"gt_rank": rank_accuracy(m[0], ctx.mask, ctx.ignore)} for m in maps]


def _score_lookalike(ctx: Context, names, maps) -> list[dict]:
    """Mass on the look-alikes of the explained class and on all distractors (None outside the synthetic scenes)."""
    extra = dict(getattr(ctx.source, "extra", ()) or ())
    if "instances" not in extra:
        return [{"gt_lookalike": None, "gt_distractor": None} for _ in maps]
    inst = np.asarray(Image.open(extra["instances"]))
    if inst.shape != tuple(ctx.image.shape[-2:]):
        raise ValueError(f"{extra['instances']}: instance map {inst.shape} but model input "
                         f"{tuple(ctx.image.shape[-2:])}; score at the generator's size")
    look, dis = (torch.from_numpy(r) for r in lookalike_region(inst, extra["objects"], ctx.target))
    return [{"gt_lookalike": relevance_mass(m[0], look) if look.any() else None,
             "gt_distractor": relevance_mass(m[0], dis) if dis.any() else None} for m in maps]


def lookalike_metric() -> Metric:
    return Metric("gt-lookalike", {"gt_lookalike": "Look-alike mass ↓", "gt_distractor": "Distractor mass ↓"},
                  lower_is_better=frozenset({"gt_lookalike", "gt_distractor"}), score=_score_lookalike,
                  settings={"map": "bilinear to pixels, positive part", "region": "distractors sharing two of the "
                            "explained class's three features; all distractors"})


def mass_metric() -> Metric:
    return Metric("gt-mass", {"gt_mass": "Mass ↑"}, needs_mask=True, score=_score_mass,
                  settings={"map": "bilinear to pixels, positive part", "paper": "Arras et al. 2022"})


def rank_metric() -> Metric:
    return Metric("gt-rank", {"gt_rank": "Rank acc ↑"}, needs_mask=True, score=_score_rank,
                  settings={"map": "bilinear to pixels", "k": "mask size", "ties": "fractional"})


ORACLE = "oracle-patch"


def _patch_share(region: Bool[Tensor, "H W"], patch: tuple[int, int]) -> Float[Tensor, "h w"]:
    """The fraction of each patch covered by ``region``: the reference row ``oracle-patch`` of the tables."""
    return torch.nn.functional.avg_pool2d(region[None, None].float(), patch)[0, 0]


def _se(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], float)
    return (float(v.mean()), float(v.std() / np.sqrt(len(v)))) if len(v) else (float("nan"), float("nan"))


def score_folder(model, root, methods: list[str], n: int | None = None, seed: int = 0,
                 split: str = "single", progress: bool = True) -> tuple[dict, dict]:
    """Ground-truth metrics of each method on a folder of :mod:`analysis.datasets.synthetic`, over the images
    the model classifies correctly. Singles explain the predicted (= true) class: ``mass`` / ``rank`` on its
    causal object, ``lookalike`` / ``distractor`` mass. Pairs explain each causal object's class in turn:
    ``mass`` on that object, ``other`` on the other causal object (correct = predicts one of the two).
    ``oracle-patch`` among ``methods`` scores each patch's share of the object (the patch-level ceiling).
    Returns ({method: {metric: (mean, SE, n)}}, counts)."""
    from tqdm import tqdm

    from analysis.data import load_sample, subset
    from analysis.datasets import get_dataset
    from caap import get_method

    data = get_dataset("synthetic", root, split)
    samples = subset(data.samples, n, seed)
    rows = {Path(r["image"]).stem: r for r in csv.DictReader(open(Path(root) / "manifest.csv", newline=""))}
    built = {name: get_method(name, model).attribute for name in methods if name != ORACLE}
    if ORACLE in methods:
        built[ORACLE] = None
    scores = {m: {} for m in methods}
    counts = {"images": len(samples), "correct": 0}
    for sample in tqdm(samples, disable=not progress, desc="gt metrics", mininterval=10):
        loaded = load_sample(model, sample)
        with torch.no_grad():
            pred = int(model(loaded.image).argmax(-1))
        if not sample.correct(pred):
            continue
        counts["correct"] += 1
        row = rows[sample.name]
        inst = np.asarray(Image.open(Path(root) / row["instances"]))
        if inst.shape != tuple(loaded.image.shape[-2:]):
            raise ValueError(f"{row['instances']}: instance map {inst.shape} but model input "
                             f"{tuple(loaded.image.shape[-2:])}; score at the generator's size")
        targets = [pred] if sample.objects is None else list(sample.objects)
        for target in targets:
            own = torch.from_numpy(inst == (1 + targets.index(target) if sample.objects else 1))
            look, dis = lookalike_region(inst, row["objects"], target)
            for name, attribute in built.items():
                if attribute is None:  # the best a patch-level map can do: each patch's share of the object
                    amap = _patch_share(own, tuple(model.cfg.patch_size))
                else:
                    amap = attribute(loaded.image, torch.tensor([target], device=loaded.image.device))[0].detach()
                got = scores[name]
                got.setdefault("mass", []).append(relevance_mass(amap, own))
                got.setdefault("rank", []).append(rank_accuracy(amap, own))
                if sample.objects is not None:
                    other = torch.from_numpy(inst == 2 - targets.index(target))
                    got.setdefault("other", []).append(relevance_mass(amap, other))
                if look.any():
                    got.setdefault("lookalike", []).append(relevance_mass(amap, torch.from_numpy(look)))
                if dis.any():
                    got.setdefault("distractor", []).append(relevance_mass(amap, torch.from_numpy(dis)))
    return {m: {k: (*_se(v), len(v)) for k, v in got.items()} for m, got in scores.items()}, counts


HEADERS = {"mass": "mass on causal ↑", "rank": "rank acc ↑", "lookalike": "mass on look-alikes ↓",
           "distractor": "mass on distractors ↓", "other": "mass on other causal ↓"}


def format_table(result: dict) -> str:
    keys = [k for k in HEADERS if any(k in r for r in result.values())]
    lines = ["| method | " + " | ".join(HEADERS[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for method, r in result.items():
        cells = [f"{100 * r[k][0]:.1f} ± {100 * r[k][1]:.1f}" if k in r else "—" for k in keys]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from vit_lens import HookedViT

    p = argparse.ArgumentParser(prog="python -m analysis.datasets.synthetic_metrics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True, help="folder of python -m analysis.datasets.synthetic")
    p.add_argument("--methods", default="caap,gae,ixg+,grad-cam,rollout")
    p.add_argument("--split", default="single", choices=("single", "pairs"))
    p.add_argument("--n", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the table (markdown) and the numbers (JSON) here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = HookedViT.from_checkpoint(args.weights)
    result, counts = score_folder(model, args.root, [m.strip() for m in args.methods.split(",")], args.n,
                                  args.seed, args.split)
    table = format_table(result) + f"\n\n{counts['correct']} of {counts['images']} images correctly classified " \
                                   f"(scored); metrics x 100, mean ± SE\n"
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"gt_{args.split}.md").write_text(table)
        (args.out / f"gt_{args.split}.json").write_text(json.dumps({"result": result, "counts": counts}, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
