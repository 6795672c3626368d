"""``caap explain IMAGE``: print the top-5 classes and write a CAAP overlay.

Every user error (unreadable image, bad ``--out``, unknown model, missing GPU, offline without
``--weights``, ...) prints one line ``caap: ...`` on stderr and exits with status 2, and everything that
can be checked without the model is checked before it loads. ``analysis.cli`` (the console script) reuses
:func:`build_parser` / :func:`add_explain_arguments` and :func:`explain_main`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from caap.cli_models import (DEFAULT_MODEL, HUB_PROBE_TIMEOUT_S, UsageError, check_device, check_source,  # noqa: F401
                             fail_fast_offline, hub_reachable, load_checked_model, load_model, load_open_clip,
                             weights_in_cache)

BLANKS = ("white", "black", "mean", "noisy", "blur_noisy")


# ------------------------------------------------------------------------------------------ arguments
def add_explain_arguments(ex: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ex.add_argument("image", type=Path)
    ex.add_argument("--model", help=f"timm model name (default {DEFAULT_MODEL}; with --weights, the sidecar's)")
    ex.add_argument("--weights", type=Path, help="local timm checkpoint (.safetensors/.pth), JSON sidecar beside it")
    ex.add_argument("--hf", metavar="NAME_OR_DIR", help="a HuggingFace transformers vision model: hub name, or a "
                                                        "directory written by save_pretrained (offline)")
    ex.add_argument("--open-clip", metavar="NAME", help="an open_clip model name (or local-dir:/hf-hub: schema); its "
                                                        "weights: --weights FILE or --pretrained TAG")
    ex.add_argument("--pretrained", metavar="TAG", help="--open-clip only: the pretrained tag open_clip downloads")
    ex.add_argument("--text", help="explain the cosine similarity of the image embedding to this text's embedding "
                                   "(open_clip models, whose output is an embedding, not classes)")
    ex.add_argument("--target", help="class index or class name to explain (default: the predicted class)")
    ex.add_argument("--out", help="file to write (.png unless another matplotlib suffix is given; no suffix: "
                                  ".png is added); an existing directory or a path ending in '/' gets "
                                  "IMAGE_caap.png inside it (default: IMAGE_caap.png beside the image)")
    ex.add_argument("--engine", default="parallel", choices=["parallel", "efficient", "loop", "atp", "atp-star"])
    ex.add_argument("--blank", default="white", choices=list(BLANKS),
                    help="blank context; transparent pixels are composited onto its colour")
    ex.add_argument("--layers", type=int, nargs=2, metavar=("START", "END"), help="patched blocks (inclusive)")
    ex.add_argument("--device", default="cpu")
    return ex


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caap", description="Causal Attribution via Activation Patching")
    sub = parser.add_subparsers(dest="command", required=True)
    add_explain_arguments(sub.add_parser("explain", help="explain one image"))
    return parser


# ------------------------------------------------------------------------------------------ image
def read_image(path: Path):
    """Decode the whole file now (so truncated files fail before the model loads), apply the EXIF
    orientation, scale 16-bit greyscale to 8 bits (PIL would clip it to white). Returns an RGB image, or
    RGBA when the file has transparency (see :func:`flatten_alpha`). 32-bit integer pixels (a TIFF with
    more than 16 bits per sample, or any value outside 0..65535) are refused like 32-bit float ones: they
    have no defined full scale, and stretching by the image's own range would change what the model sees."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from caap.images import to_8bit

    if not path.exists():
        raise UsageError(f"image not found: {str(path)!r}")
    if not path.is_file():
        raise UsageError(f"image {str(path)!r} is not a file")
    try:
        with Image.open(path) as opened:
            opened.load()
            bits = getattr(opened, "tag_v2", {}).get(258)  # TIFF BitsPerSample; PIL widens 16 and 32 to 'I'
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UsageError(f"cannot read image {str(path)!r}: {err}") from None
    try:
        image = to_8bit(image, path, bits)
    except ValueError as err:
        raise UsageError(str(err)) from None
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def flatten_alpha(image, colour: tuple[float, float, float]):
    """Composite an RGBA image onto a plain ``colour`` (RGB in [0, 1]); RGB images pass unchanged."""
    from PIL import Image

    if image.mode != "RGBA":
        return image
    background = Image.new("RGBA", image.size, tuple(round(255 * c) for c in colour) + (255,))
    return Image.alpha_composite(background, image).convert("RGB")


def blank_colour(blank: str, mean: tuple[float, ...]) -> tuple[float, float, float]:
    """The colour transparent pixels become: the blank's own colour, so they carry no more information than
    the blank context (white, black, or the dataset mean colour that 'mean' and the noisy blanks centre on)."""
    return {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}.get(blank, tuple(mean[:3]))


# ------------------------------------------------------------------------------------------ output path
def supported_suffixes() -> list[str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted("." + ext for ext in FigureCanvasBase.get_supported_filetypes())


def output_path(out: str | None, image: Path) -> Path:
    """Where the overlay goes. None -> ``IMAGE_caap.png`` beside the image; an existing directory or a path
    ending in a separator -> ``<dir>/IMAGE_caap.png``; no suffix -> ``.png`` added. Refuses suffixes
    matplotlib cannot write and parents that are files or not writable (before the model loads)."""
    name = f"{image.stem}_caap.png"
    if out is None:
        path = image.with_name(name)
    elif out.endswith(("/", os.sep)) or Path(out).is_dir():
        path = Path(out) / name
    else:
        path = Path(out)
        if not path.suffix:
            path = path.with_name(path.name + ".png")
    if path.suffix.lower() not in supported_suffixes():
        raise UsageError(f"--out {out!r}: cannot write {path.suffix!r} files; use one of "
                         f"{', '.join(supported_suffixes())}")
    check_parent_writable(out, path)
    return path


def check_parent_writable(out: str, path: Path) -> None:
    """The nearest existing parent of ``path`` (given as ``--out out``) must be a writable directory."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out!r}: {str(parent)!r} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"--out {out!r}: directory {str(parent)!r} is not writable")
            return


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
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < len(names):
            raise UsageError(f"--target {index} is out of range: the model has {len(names)} classes "
                             f"(0..{len(names) - 1})")
        return index
    matches = [i for i, n in enumerate(names) if n.lower() == spec.lower()] or \
              [i for i, n in enumerate(names) if spec.lower() in n.lower()]
    if len(matches) != 1:
        raise UsageError(f"--target {spec!r} matches {len(matches)} class names; give an index or an exact name")
    return matches[0]


# ------------------------------------------------------------------------------------------ explain
def _explain(args) -> int:
    image = read_image(args.image)
    out = output_path(args.out, args.image)
    model = load_checked_model(args)

    import matplotlib

    matplotlib.use("Agg")
    import torch

    from caap import CAAP

    if args.text is not None:
        return _explain_text(args, image, out, model)
    if model.cfg.num_classes == 0 or getattr(model.cfg, "head_output", "logits") == "embedding":
        raise UsageError(f"model {model.cfg.model_name or str(args.weights)!r} has no classifier head "
                         f"(num_classes=0): caap explain needs class scores; with an open_clip model pass "
                         f"--text PROMPT, or use the Python API, CAAP(model, score=<callable on the embedding>)")
    names = class_names(model)
    target = resolve_target(args.target, names)
    x = model.transform(flatten_alpha(image, blank_colour(args.blank, model.cfg.mean)))[None].to(args.device)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    print(f"{args.image.name}: top-5 of {model.cfg.model_name or 'model'}")
    for rank, (p, i) in enumerate(zip(*probs.topk(min(5, len(names)))), start=1):
        print(f"  {rank}. {names[i]:<40s} {p.item():.3f}")
    target = int(probs.argmax()) if target is None else target
    attribution = CAAP(model, engine=args.engine, blank=args.blank, layers=args.layers).attribute(x, target)
    save_overlay(model, x, f"CAAP: {names[target]}", attribution, out)
    print(f"explained class {target} ({names[target]}, p={probs[target].item():.3f}); overlay written to {out}")
    return 0


def save_overlay(model, x, title: str, attribution, out: Path) -> None:
    """The image beside the CAAP overlay, written to ``out`` (an unwritable path is one UsageError line)."""
    from caap.plot import compare, to_display

    fig = compare(to_display(model, x), {title: attribution}, size=4)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
    except OSError as err:
        raise UsageError(f"cannot write --out {str(out)!r}: {err.strerror or err}") from None


def _explain_text(args, image, out: Path, model) -> int:
    """CAAP of the cosine similarity between the image embedding and ``--text``'s (open_clip's text tower and
    tokenizer): the score is computed for every intervention, so the map says which patches carry the match."""
    import matplotlib

    matplotlib.use("Agg")
    import torch
    import torch.nn.functional as F

    import open_clip

    from caap import CAAP

    clip = load_open_clip(args)
    with torch.no_grad():
        text = clip.encode_text(open_clip.get_tokenizer(args.open_clip)([args.text]))[0].to(args.device)

    def cosine(embedding):  # [batch, (K,) embed_dim] -> [batch, (K)]
        return F.cosine_similarity(embedding, text.expand_as(embedding), dim=-1)

    x = model.transform(flatten_alpha(image, blank_colour(args.blank, model.cfg.mean)))[None].to(args.device)
    with torch.no_grad():
        similarity = float(cosine(model(x))[0])
    attribution = CAAP(model, engine=args.engine, blank=args.blank, layers=args.layers, score=cosine).attribute(x)
    save_overlay(model, x, f"CAAP: {args.text!r}", attribution, out)
    print(f"{args.image.name}: cosine similarity to {args.text!r} = {similarity:.4f}; overlay written to {out}")
    return 0


def explain_main(args: argparse.Namespace) -> int:
    """Run ``explain`` on parsed arguments; user errors print one line on stderr and return 2."""
    try:
        return _explain(args)
    except (UsageError, ValueError, FileNotFoundError) as err:
        print("caap: " + " ".join(str(err).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("caap: interrupted", file=sys.stderr)
        return 130


explain = explain_main  # the name analysis.cli calls


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    return explain_main(args)


if __name__ == "__main__":
    sys.exit(main())
