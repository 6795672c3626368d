"""``caap bench``: reproduce the paper's tables for registered methods on a dataset, resumably, on one
process or sharded over ``torchrun`` ranks.

Writes into ``--out DIR``: ``run.json`` (every setting, versions, model), ``results.jsonl`` (or
``results.rank{r}.jsonl`` per rank: one row per image × method, with curves), and, from rank 0 once all
ranks are done, ``table.md`` / ``table.csv`` (mean ± SE, best in bold, n per method). ``--metrics`` beyond the
paper's four (``analysis.metrics``) write ``metrics-<name>[.rank<r>].jsonl`` and a second table below.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
from dataclasses import asdict
from pathlib import Path

from analysis import distributed
from analysis.results import RESULT_GLOB, SUITE_GLOB, done_pairs, merge, write_tables

log = logging.getLogger(__name__)

# settings whose change alters the numbers: checked against run.json before resuming. Files are identified by
# content (analysis.provenance), so another --root with the same file names, or a checkpoint rewritten in place,
# is another run; each method's own settings (method_settings) are checked per method.
CHECKED = ("model", "weights_sha256", "dataset", "split", "n", "seed", "protocol", "pair_mask", "amp", "device_type",
           "dataset_fingerprint")


class UserError(Exception):
    """A bad command line or input: one line on stderr, exit status 2."""


def add_parser(sub) -> argparse.ArgumentParser:
    from analysis.datasets import DATASETS

    p = sub.add_parser("bench", help="evaluate methods on a dataset and write the paper's tables",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="timm model name (pretrained weights via timm)")
    src.add_argument("--weights", type=Path, help="local timm checkpoint (.safetensors/.pth) with its JSON sidecar")
    src.add_argument("--hf", metavar="NAME_OR_DIR", help="HuggingFace transformers classifier: hub name or a "
                                                         "save_pretrained directory")
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--root", type=Path, required=True, help="dataset root (manifest: the CSV or its folder)")
    p.add_argument("--split", help="dataset split (default per dataset; manifest: the 'kind' filter, e.g. single)")
    p.add_argument("--methods", required=True, help="comma-separated registry names (caap.list_methods()), each "
                                                    "optionally with options NAME:KEY=VALUE[:KEY=VALUE...], e.g. "
                                                    "caap:score=prob:radius=0")
    p.add_argument("--n", type=int, help="seeded random subset of N images (the paper: 500)")
    p.add_argument("--seed", type=int, default=0)
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--n-steps", type=int, help="curve points - 1 (quick runs; default RISE: one image width of "
                                                   "pixels per step)")
    steps.add_argument("--pixels-per-step", type=int)
    p.add_argument("--target", choices=("predicted", "label"), default="predicted",
                   help="class to explain (default: predicted, as RISE and the paper's CAAP)")
    p.add_argument("--only-correct", action="store_true", help="skip images the model misclassifies")
    p.add_argument("--pair-mask", choices=("explained", "union"), default="explained",
                   help="two-object images (manifest pairs): localize against the explained object's mask "
                        "(default) or the union of both objects ('any object')")
    p.add_argument("--metrics", default="deletion,insertion,aupr,pointing-game",
                   help="comma-separated metric names (analysis.metrics.list_metrics(); default: the paper's four); "
                        "metrics added to a finished run are computed alone")
    p.add_argument("--mprt", choices=("cascading", "independent"), default="cascading",
                   help="the mprt metric's randomization: cascading from the last block (default) or one block at "
                        "a time")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="perturbed copies per metric forward (default: memory budget)")
    p.add_argument("--memory-budget-gb", type=float, default=1.0)
    p.add_argument("--amp", choices=("bf16",), help="bfloat16 autocast (faster on GPU; NOT exact)")
    p.add_argument("--no-curves", action="store_true", help="do not store the Deletion/Insertion curves")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--table-only", action="store_true",
                   help="score nothing: write table.md/table.csv from the rows already in --out (e.g. after "
                        "stopping a long run; rerun without it to complete)")
    p.add_argument("--common-images", action="store_true",
                   help="tabulate only the images every listed method has scored (a like-for-like comparison "
                        "when a run is incomplete)")
    p.add_argument("--paired", metavar="METHOD",
                   help="also write table_paired.md/csv: every other method's paper metrics minus METHOD's on the "
                        "same images (mean ± SE of the per-image difference); METHOD must be one of --methods")
    return p


def _methods(spec: str) -> list[str]:
    """The canonical method specs of ``--methods`` (names and option keys checked; ``caap.registry``)."""
    from caap.registry import check_method_specs

    try:
        return check_method_specs(spec, "--methods")
    except ValueError as err:
        raise UserError(str(err)) from None


def _build(methods: list[str], model) -> dict:
    """Each method built once on ``model`` (its option values checked by its constructor), before anything is
    written; a bad value is one UserError naming the spec and the option."""
    from caap.registry import get_method_spec

    try:
        return {name: get_method_spec(name, model).attribute for name in methods}
    except ValueError as err:
        raise UserError(f"--methods: {err}") from None


def _metrics(args) -> dict:
    """The requested metrics, built (one line listing the valid names for an unknown one)."""
    from analysis.metrics import check_metric_names, get_metric

    try:
        names = check_metric_names([m.strip() for m in args.metrics.split(",") if m.strip()])
    except ValueError as err:
        raise UserError(f"--metrics: {err}") from None
    return {n: get_metric(n, **({"mode": args.mprt} if n == "mprt" else {})) for n in names}


def _suite_glob(name: str) -> str:
    return f"metrics-{name}.*jsonl"  # metrics-<name>.jsonl and metrics-<name>.rank<r>.jsonl (names hold no '.')


def _load_model(args, device: str):
    from caap.cli import load_checked_model

    ns = argparse.Namespace(model=args.model, weights=args.weights, hf=args.hf, device=device)
    if args.weights is not None and not args.weights.is_file():
        raise UserError(f"--weights {args.weights}: no such file")
    try:
        return load_checked_model(ns)
    except RuntimeError as err:
        if "download" in str(err):
            raise UserError(f"cannot download weights for {args.model!r} (offline?); pass --weights FILE") from None
        raise


def _settings(args, model, methods, protocol, device, digests: dict[str, str], metrics=None) -> dict:
    import timm
    import torch

    from analysis.provenance import combined_digest, hf_weights_digest, weights_record
    from caap.registry import method_settings

    weights = weights_record(args.weights)
    return {
        "model": model.cfg.model_name or args.model, "weights": weights,
        "weights_sha256": weights["sha256"] if weights else hf_weights_digest(args.hf), "dataset": args.dataset,
        "split": args.split, "n": args.n, "seed": args.seed, "protocol": asdict(protocol),
        "pair_mask": args.pair_mask, "amp": args.amp,
        "device_type": torch.device(device).type, "methods": methods,
        "method_settings": {m: method_settings(m) for m in methods},
        "metrics": list(metrics or ()), "metric_settings": {n: dict(m.settings) for n, m in (metrics or {}).items()},
        "dataset_fingerprint": combined_digest(digests), "samples": digests,
        "root": str(args.root.resolve()), "curves": not args.no_curves, "memory_budget_gb": args.memory_budget_gb,
        "batch_size": args.batch_size,
        "model_info": {"num_classes": model.cfg.num_classes, "image_size": list(model.cfg.image_size),
                       "n_layers": model.cfg.n_layers, "data_config": model.cfg.data_config},
        "protocol_notes": {"deletion_reference": "0 after normalization", "insertion_start": "RISE blur 11x11 sigma 5",
                           "pixels_per_step_default": "image width", "score": "softmax probability",
                           "se": "population SD / sqrt(n)"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
    }


def _check_out_dir(out: Path, settings: dict) -> dict:
    """The run.json to keep: refuses a directory holding another run's results; methods may be added."""
    from analysis.provenance import read_run_json

    run_file = out / "run.json"
    if run_file.is_file():
        old = read_run_json(run_file)
        diff = [k for k in CHECKED if old.get(k) != settings[k]]
        if diff:
            detail = "; ".join(f"{k}: run.json {_short(old.get(k))}, now {_short(settings[k])}" for k in diff)
            raise UserError(f"--out {out} holds another run ({detail}); use another --out or the same settings")
        old_methods = old.get("method_settings") or {}
        changed = [m for m in settings["methods"] if m in old.get("methods", [])
                   and old_methods.get(m) != settings["method_settings"][m]]
        if changed:
            m = changed[0]
            raise UserError(f"--out {out}: method {m!r} was scored with other settings (run.json "
                            f"{_short(old_methods.get(m))}, now {_short(settings['method_settings'][m])}); "
                            f"use another --out")
        old_metrics = old.get("metric_settings") or {}  # runs before --metrics: the paper's four, no settings
        changed = [m for m in settings["metrics"]
                   if m in old_metrics and old_metrics[m] != settings["metric_settings"][m]]
        if changed:
            m = changed[0]
            raise UserError(f"--out {out}: metric {m!r} was scored with other settings (run.json "
                            f"{_short(old_metrics[m])}, now {_short(settings['metric_settings'][m])}); "
                            f"use another --out")
        from analysis.metrics import PAPER

        settings = {**settings, "methods": list(dict.fromkeys(old.get("methods", []) + settings["methods"])),
                    "method_settings": {**old_methods, **settings["method_settings"]},
                    "metrics": list(dict.fromkeys(old.get("metrics", list(PAPER)) + settings["metrics"])),
                    "metric_settings": {**old_metrics, **settings["metric_settings"]}}
    elif any(out.glob(RESULT_GLOB)) or any(out.glob(SUITE_GLOB)):
        raise UserError(f"--out {out} holds results but no run.json (another tool's run?); use another --out")
    return settings


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ...}"


def _score(args, model, methods, samples, protocol, out, rank, world_size, device, suite=None,
           paper: bool = True, built: dict | None = None) -> None:
    """This rank's share of the images, appended row by row to its own results file (resumable); each
    ``suite`` metric's rows to its own ``metrics-<name>`` file, so only missing (image, method, metric)
    rows are computed. ``built``: the methods' attribute functions (:func:`_build`; built here when None)."""
    import torch
    from tqdm.auto import tqdm

    from analysis.evaluate import score_sample
    from caap.registry import get_method_spec

    suite = suite or {}
    built = built if built is not None else _build(methods, model)
    tag = "" if world_size == 1 else f".rank{rank}"
    own = out / f"results{tag}.jsonl"
    done = done_pairs(out, own) if paper else {(s.name, m) for s in samples for m in methods}
    owns = {n: out / f"metrics-{n}{tag}.jsonl" for n in suite}
    dones = {n: done_pairs(out, owns[n], _suite_glob(n)) for n in suite}
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) if args.amp \
        else contextlib.nullcontext
    bar = tqdm(samples[rank::world_size], desc=f"bench rank {rank}" if world_size > 1 else "bench", unit="img",
               position=rank, disable=args.no_progress)
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(own, "a")) if paper else None
        files = {n: stack.enter_context(open(path, "a")) for n, path in owns.items()}
        for sample in bar:
            todo = [m for m in methods if (sample.name, m) not in done]
            extras = [(suite[n], [m for m in methods if (sample.name, m) not in dones[n]]) for n in suite]
            if not todo and not any(names for _, names in extras):
                continue
            for row in score_sample(model, built, todo, sample, protocol, curves=not args.no_curves,
                                    memory_budget_gb=args.memory_budget_gb, autocast=autocast,
                                    batch_size=args.batch_size, pair_mask=args.pair_mask, extras=extras,
                                    rebuild=lambda name, m: get_method_spec(name, m).attribute, seed=args.seed):
                target = files[row["metric"]] if "metric" in row else f
                target.write(json.dumps(row) + "\n")
                target.flush()
    bar.close()


def check_out(out: Path) -> None:
    """``--out`` must be a directory or a path where one can be made (not a file, nor under one)."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file; --out must be a directory (it is created if "
                                f"missing)")
            return


def check_minimums(*checks: tuple[str, int | None, int]) -> None:
    """Each ``(flag, value, lowest allowed)``: an integer option below its bound is one UserError (None = unset)."""
    for flag, value, low in checks:
        if value is not None and value < low:
            raise UserError(f"{flag} must be an integer >= {low}; got {value}")


def check_numbers(args) -> None:
    """The numeric options, checked before anything is loaded or written."""
    import math

    check_minimums(("--n", args.n, 1), ("--seed", args.seed, 0), ("--n-steps", args.n_steps, 1),
                   ("--pixels-per-step", args.pixels_per_step, 1), ("--batch-size", args.batch_size, 1))
    budget = args.memory_budget_gb
    if not (math.isfinite(budget) and budget > 0):
        raise UserError(f"--memory-budget-gb must be a finite number > 0; got {budget}")


def run(args) -> int:
    from analysis.data import subset
    from analysis.datasets import DATASETS, get_dataset
    from analysis.evaluate import Protocol
    from analysis.provenance import sample_digests
    from caap.cli import check_device

    if args.dataset not in DATASETS:
        raise UserError(f"--dataset: unknown dataset {args.dataset!r}; available: {', '.join(DATASETS)}")
    if not args.root.exists():
        raise UserError(f"--root {args.root}: no such file or directory")
    check_numbers(args)
    check_out(args.out)
    check_device(args.device)
    methods = _methods(args.methods)
    metrics = _metrics(args)
    from analysis.metrics import PAPER

    paper = any(n in PAPER for n in metrics)
    suite = {n: m for n, m in metrics.items() if n not in PAPER}
    if args.paired is not None:
        from caap.registry import canonical_spec

        try:
            args.paired = canonical_spec(args.paired)
        except ValueError as err:
            raise UserError(f"--paired: {err}") from None
        if args.paired not in methods:
            raise UserError(f"--paired: {args.paired!r} is not one of --methods ({', '.join(methods)})")
        if not paper:
            raise UserError(f"--paired compares the paper's metrics ({', '.join(PAPER)}); --metrics "
                            f"{args.metrics} has none")
    try:
        protocol = Protocol(args.target, args.only_correct, args.pixels_per_step, args.n_steps)
    except ValueError as err:
        raise UserError(str(err)) from None
    rank, world_size, device = distributed.init(args.device)
    try:
        dataset = get_dataset(args.dataset, args.root, args.split)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    samples = subset(dataset.samples, args.n, args.seed)
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        raise UserError(f"{args.dataset}: sample names are not unique; the results could not be resumed")
    model = _load_model(args, device)
    n_out = model.cfg.num_classes
    if n_out == 0 or getattr(model.cfg, "head_output", "logits") == "embedding":
        raise UserError(f"{model.cfg.model_name or 'the model'} outputs an embedding, not class logits: caap bench "
                        f"scores class probabilities and needs a classifier")
    if dataset.num_classes is not None and dataset.num_classes != n_out:
        raise UserError(f"the model has {n_out} classes but {args.dataset} has {dataset.num_classes}; give a "
                        f"checkpoint fine-tuned on {args.dataset}")
    if max(s.label for s in samples) >= n_out:
        raise UserError(f"{args.dataset} has label {max(s.label for s in samples)} but the model only "
                        f"{n_out} classes")
    out = args.out
    built = _build(methods, model)  # option values checked before run.json is written
    settings = _settings(args, model, methods, protocol, device, sample_digests(samples), metrics)
    error = None
    if rank == 0:
        try:
            if args.table_only and not (out / "run.json").is_file():
                raise UserError(f"--table-only: {out} holds no run.json (nothing to tabulate)")
            out.mkdir(parents=True, exist_ok=True)
            settings = _check_out_dir(out, settings)
            if not args.table_only:  # a running job may share the directory: --table-only writes only tables
                (out / "run.json").write_text(json.dumps(settings, indent=1) + "\n")
        except UserError as err:
            error = str(err)
    error = distributed.broadcast(error)
    if error:
        raise UserError(error)
    if not args.table_only:
        _score(args, model, methods, samples, protocol, out, rank, world_size, device, suite, paper, built)
    distributed.barrier()
    status = 0
    if rank == 0:
        rows = merge(out, names, settings["methods"]) if paper else []
        suite_rows = [r for n in suite for r in merge(out, names, settings["methods"], _suite_glob(n))]
        listed = [m for m in methods if m in settings["methods"]]  # --methods order
        table = write_tables(out, rows, listed, settings, common=args.common_images, suite=suite,
                             suite_rows=suite_rows, paper=paper)
        print(table)
        if args.paired:
            from analysis.paired import write_paired

            print("\n" + write_paired(out, rows, listed, args.paired))
        print(f"wrote {out / 'table.md'}, {out / 'table.csv'} ({len(rows)} rows)" if not suite else
              f"wrote {out / 'table.md'}, {out / 'table_metrics.csv'} ({len(rows)} + {len(suite_rows)} rows)")
    distributed.finish()
    return status


def main(argv=None) -> int:  # pragma: no cover - the console script is analysis.cli:main
    from analysis.cli import main as cli_main

    return cli_main(["bench", *(argv if argv is not None else sys.argv[1:])])
