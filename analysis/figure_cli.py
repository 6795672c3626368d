"""``caap figure {grouping,layers,blanks,selection,curves,gallery,sanity}``: the paper's figures as PNG plus the numbers
behind them (CSV / JSON) in ``--out DIR``, with the model and dataset options of ``caap bench``.

* ``grouping`` (Fig. 6): intra-object, inter-object and object-to-background attention per block (Eq. 5,
  renormalized over patch tokens; ``--unnormalized`` keeps the CLS/register share), the grouping score and where
  it peaks against ``ceil(2L/3)``. Manifest rows with ``mask_a``/``mask_b`` (the composites' pairs) give two
  instances (inter-object attention); other rows one.
* ``layers`` (Fig. 7): CAAP patching blocks ``0..l_e`` for each ``l_e`` (``--ends``), the six metrics.
* ``blanks`` (Fig. 4) / ``selection`` (Fig. 5): CAAP with each target blank / selection operator.
* ``curves`` (Figs. 8-9): mean deletion and insertion curves per method, read from ``caap bench`` rows
  (``DIR/results*.jsonl`` in ``--results``, default ``--out``) where they exist, computed otherwise.
* ``gallery``: image, mask outline and every ``--methods`` map side by side.
* ``sanity``: Adebayo et al.'s model-randomisation check, per block and as a gallery (:mod:`analysis.figure_sanity`).

Files: ``DIR/<figure>.png``, ``DIR/<figure>.csv`` and/or ``.json``, metric rows in ``DIR/<figure>.jsonl``
(resumable; a run with other settings is refused, see ``DIR/<figure>.run.json``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

FIGURES = ("grouping", "layers", "blanks", "selection", "curves", "gallery", "sanity")
DEFAULT_METHODS = "caap,e-caap,grad-cam"


def _common(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="timm model name (pretrained weights via timm)")
    src.add_argument("--weights", type=Path, help="local timm checkpoint (.safetensors/.pth) with its JSON sidecar")
    src.add_argument("--hf", metavar="NAME_OR_DIR", help="HuggingFace transformers classifier: hub name or a "
                                                         "save_pretrained directory")
    p.add_argument("--dataset", default="manifest", help="a dataset name of `caap bench` (default: manifest)")
    p.add_argument("--root", type=Path, required=True, help="dataset root (manifest: the CSV or its folder)")
    p.add_argument("--split", help="dataset split (manifest: the 'kind' filter, e.g. single; grouping default: all)")
    p.add_argument("--n", type=int, help="seeded random subset of N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-steps", type=int, help="curve points - 1 (default: one image width of pixels per step)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"registry names for curves/gallery/sanity, each "
                                                             f"optionally NAME:KEY=VALUE[:...] ({DEFAULT_METHODS})")
    p.add_argument("--target", choices=("predicted", "label"), default="predicted")
    p.add_argument("--only-correct", action="store_true", help="skip images the model misclassifies")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``figure`` and its six subcommands on ``subparsers`` (from ``caap``'s parser)."""
    p = subparsers.add_parser("figure", help="draw the paper's figures (PNG + CSV/JSON)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    g = sub.add_parser("grouping", help="Fig. 6: attention grouping per block")
    _common(g)
    g.add_argument("--unnormalized", action="store_true", help="keep the CLS/register share in the normalizer")
    g.add_argument("--per-head", action="store_true", help="also write per-head values (grouping_heads.csv)")
    g.add_argument("--threshold", type=float, default=0.5, help="patch in an instance if >= this pixel fraction")
    g.add_argument("--batch-size", type=int, default=8)
    lay = sub.add_parser("layers", help="Fig. 7: cumulative layer sweep of CAAP")
    _common(lay)
    lay.add_argument("--ends", type=int, nargs="+", help="last patched blocks l_e (default: every block)")
    b = sub.add_parser("blanks", help="Fig. 4: CAAP with each target blank")
    _common(b)
    b.add_argument("--blanks", nargs="+", help="subset of white black mean noisy blur_noisy")
    s = sub.add_parser("selection", help="Fig. 5: CAAP with each selection operator")
    _common(s)
    s.add_argument("--variants", nargs="+", help="subset of none box-r1 box-r2 manhattan-r1")
    c = sub.add_parser("curves", help="Figs. 8-9: mean deletion / insertion curves per method")
    _common(c)
    c.add_argument("--results", type=Path, help="a `caap bench --out` directory to reuse (default: --out)")
    gal = sub.add_parser("gallery", help="image, mask outline and every method's map")
    _common(gal)
    from analysis.figure_sanity import add_arguments as sanity_arguments

    sanity_arguments(sub.add_parser("sanity", help="Adebayo et al. 2018: map similarity vs randomized block, and a "
                                                   "gallery under cascading randomization"), _common)
    return p


def run(args) -> int:
    """Run the figure ``args.figure``; returns the exit status."""
    import matplotlib

    matplotlib.use("Agg")
    if args.figure not in FIGURES:
        raise ValueError(f"figure must be one of {FIGURES}; got {args.figure!r}")
    from analysis.bench import check_minimums, check_out

    check_minimums(("--n", args.n, 1), ("--seed", args.seed, 0), ("--n-steps", args.n_steps, 1),
                   ("--batch-size", getattr(args, "batch_size", None), 1))
    check_out(args.out)
    if getattr(args, "results", None) is not None and not args.results.is_dir():
        raise ValueError(f"--results {args.results}: not a directory (a `caap bench --out` folder)")
    from analysis import figure_runs as runs

    if args.figure in ("curves", "gallery"):
        runs.check_methods(args.methods)  # fail before loading the model
    if args.figure == "sanity":
        from analysis.figure_sanity import run as sanity

        return sanity(args)
    model = runs.load_model(args)
    if args.figure == "grouping":
        return runs.grouping(args, model)
    if args.figure == "layers":
        return runs.layers(args, model)
    if args.figure == "blanks":
        from analysis.sweeps import blank_methods

        methods = blank_methods(model, args.blanks) if args.blanks else blank_methods(model)
        return runs.ablation(args, model, "blanks", methods, "CAAP target blank (Fig. 4)")
    if args.figure == "selection":
        from analysis.sweeps import selection_methods

        methods = selection_methods(model, args.variants) if args.variants else selection_methods(model)
        return runs.ablation(args, model, "selection", methods, "CAAP selection operator (Fig. 5)")
    if args.figure == "curves":
        return runs.curves(args, model)
    return runs.gallery(args, model)
