"""``caap explain IMAGE``: print the top-5 classes and write a CAAP overlay."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_MODEL = "vit_base_patch16_224.augreg2_in21k_ft_in1k"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caap", description="Causal Attribution via Activation Patching")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="explain one image")
    ex.add_argument("image", type=Path)
    ex.add_argument("--model", help=f"timm model name (default {DEFAULT_MODEL}; with --weights, the sidecar's)")
    ex.add_argument("--weights", type=Path, help="local timm checkpoint (.safetensors/.pth), JSON sidecar beside it")
    ex.add_argument("--target", help="class index or class name to explain (default: the predicted class)")
    ex.add_argument("--out", type=Path, help="overlay PNG to write (default: IMAGE_caap.png)")
    ex.add_argument("--engine", default="parallel", choices=["parallel", "efficient", "loop"])
    ex.add_argument("--blank", default="white", choices=["white", "black", "mean", "noisy", "blur_noisy"])
    ex.add_argument("--layers", type=int, nargs=2, metavar=("START", "END"), help="patched blocks (inclusive)")
    ex.add_argument("--device", default="cpu")
    return parser


def class_names(model) -> list[str]:
    if model.cfg.class_names:
        return list(model.cfg.class_names)
    if model.cfg.num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(model.cfg.num_classes)]


def resolve_target(spec: str | None, names: list[str]) -> int | None:
    if spec is None:
        return None
    if spec.isdigit():
        index = int(spec)
        if index >= len(names):
            raise ValueError(f"--target {index} is out of range: the model has {len(names)} classes")
        return index
    matches = [i for i, n in enumerate(names) if n.lower() == spec.lower()] or \
              [i for i, n in enumerate(names) if spec.lower() in n.lower()]
    if len(matches) != 1:
        raise ValueError(f"--target {spec!r} matches {len(matches)} class names; give an index or an exact name")
    return matches[0]


def load_model(args):
    from vit_lens import HookedViT

    if args.weights is not None:
        return HookedViT.from_checkpoint(args.weights, model_name=args.model, device=args.device)
    return HookedViT.from_timm(args.model or DEFAULT_MODEL, pretrained=True, device=args.device)


def explain(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import torch
    from PIL import Image

    from caap import CAAP
    from caap.plot import compare, to_display

    try:
        model = load_model(args)
    except RuntimeError as err:
        if "could not download" in str(err):
            name = args.model or DEFAULT_MODEL
            print(f"caap: cannot download weights for {name!r} (offline?); pass --weights FILE with a local "
                  f"timm checkpoint", file=sys.stderr)
            return 2
        raise
    names = class_names(model)
    target = resolve_target(args.target, names)
    image = Image.open(args.image).convert("RGB")
    x = model.transform(image)[None].to(args.device)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    print(f"{args.image.name}: top-5 of {model.cfg.model_name or 'model'}")
    for rank, (p, i) in enumerate(zip(*probs.topk(min(5, len(names)))), start=1):
        print(f"  {rank}. {names[i]:<40s} {p.item():.3f}")
    target = int(probs.argmax()) if target is None else target
    attribution = CAAP(model, engine=args.engine, blank=args.blank, layers=args.layers).attribute(x, target)
    out = args.out or args.image.with_name(args.image.stem + "_caap.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = compare(to_display(model, x), {f"CAAP: {names[target]}": attribution}, size=4)
    fig.savefig(out, dpi=100)
    print(f"explained class {target} ({names[target]}, p={probs[target].item():.3f}); overlay written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return explain(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"caap: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
