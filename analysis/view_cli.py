"""``caap view``: write the interactive viewer (:mod:`analysis.viewer`) as one offline HTML file.

    caap view IMAGE... (--model NAME | --weights FILE | --hf NAME_OR_DIR) --methods caap,gae [--classes K] \
        --out view.html
    caap view --results DIR --out view.html          # a `caap bench --out` folder: curves and metric rows per image

Every user error (missing image, unknown method, bad --classes, --out a directory, ...) is one line on stderr with
exit status 2, checked before the model loads.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_METHODS = "caap,gae,grad-cam,rollout,ixg+,t-attr"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("view", help="write an interactive viewer page (one offline HTML file)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", type=Path, metavar="IMAGE")
    p.add_argument("--model", help="timm model name (pretrained weights via timm), or paper:<key>")
    p.add_argument("--weights", type=Path, help="local timm checkpoint (.safetensors/.pth) with its JSON sidecar")
    p.add_argument("--hf", metavar="NAME_OR_DIR", help="HuggingFace transformers classifier: hub name or a "
                                                       "save_pretrained directory")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"registry names, each optionally NAME:KEY=VALUE[:...] "
                                                             f"(default {DEFAULT_METHODS})")
    p.add_argument("--classes", type=int, default=5, help="maps for the top-K predicted classes (default 5)")
    p.add_argument("--results", type=Path, help="a `caap bench --out` folder: per image every method's curves and "
                                                "metrics, images ordered/filtered by a metric")
    p.add_argument("--limit", type=int, help="--results: only the first N images")
    p.add_argument("--sweep-blanks", default="white,black,mean,noisy,blur_noisy",
                   help="blanks of CAAP's precomputed sweep (comma-separated)")
    p.add_argument("--sweep-ends", type=int, nargs="+", metavar="L_E", help="last patched blocks of the sweep "
                                                                             "(default: every block)")
    p.add_argument("--no-sweep", action="store_true", help="no CAAP layer/blank sweep")
    p.add_argument("--no-attention", action="store_true", help="leave the attention patterns out (smaller file)")
    p.add_argument("--no-lens", action="store_true", help="leave the logit lens out")
    p.add_argument("--title")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    return p


def _check(args) -> None:
    from caap.cli import check_parent_writable
    from caap.cli_models import UsageError

    given = [f for f, v in (("--model", args.model), ("--weights", args.weights), ("--hf", args.hf)) if v]
    if args.images and not given:
        raise UsageError("caap view IMAGE...: give the model with --model NAME, --weights FILE or --hf NAME_OR_DIR")
    if not args.images and args.results is None:
        raise UsageError("caap view: give IMAGE... with a model, or --results DIR (a `caap bench --out` folder)")
    if given and not args.images:
        raise UsageError(f"{given[0]} explains IMAGE...; none given (with --results alone no model is needed)")
    if args.classes < 1:
        raise UsageError(f"--classes must be an integer >= 1; got {args.classes}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be an integer >= 1; got {args.limit}")
    if args.results is not None and not args.results.is_dir():
        raise UsageError(f"--results {str(args.results)!r}: no such directory (a `caap bench --out` folder)")
    for image in args.images:
        if not image.is_file():
            raise UsageError(f"image not found: {str(image)!r}")
    out = args.out
    if str(out).endswith(("/", os.sep)) or out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a directory; give the HTML file to write, e.g. view.html")
    check_parent_writable(str(out), out)


def run(args) -> int:
    from analysis.viewer import View
    from analysis.viewer.data import BLANKS
    from caap.cli import read_image
    from caap.cli_models import UsageError, load_checked_model

    _check(args)
    blanks = [b.strip() for b in args.sweep_blanks.split(",") if b.strip()]
    unknown = [b for b in blanks if b not in BLANKS]
    if not blanks or unknown:
        raise UsageError(f"--sweep-blanks: unknown blank(s) {', '.join(unknown) or '(none given)'}; "
                         f"allowed: {', '.join(BLANKS)}")
    methods = []
    if args.images:
        from caap.registry import check_method_specs

        try:
            methods = check_method_specs(args.methods, "--methods")  # canonical specs, before the model loads
        except ValueError as err:
            raise UsageError(str(err)) from None
    pictures = [read_image(p) for p in args.images]  # unreadable files fail before the model loads
    model = None
    if args.images:
        model = load_checked_model(argparse.Namespace(model=args.model, weights=args.weights, hf=args.hf,
                                                      device=args.device))
        if args.sweep_ends and any(not 0 <= e < model.cfg.n_layers for e in args.sweep_ends):
            raise UsageError(f"--sweep-ends must be blocks in 0..{model.cfg.n_layers - 1}; got {args.sweep_ends}")
        from caap.registry import get_method_spec

        for m in methods:  # option values checked once before any map is computed
            try:
                get_method_spec(m, model)
            except ValueError as err:
                raise UsageError(f"--methods: {err}") from None
    page = View(model, pictures or None, methods=methods, classes=args.classes,
                names=[p.name for p in args.images] or None, results=args.results, sweep=not args.no_sweep,
                sweep_ends=args.sweep_ends, sweep_blanks=blanks, attention=not args.no_attention,
                lens=not args.no_lens, limit=args.limit, title=args.title)
    try:
        path = page.save(args.out)
    except OSError as err:
        raise UsageError(f"cannot write --out {str(args.out)!r}: {err.strerror or err}") from None
    print(f"wrote {path} ({len(page) / 1e6:.2f} MB, {len(page.images)} image(s))")
    return 0
