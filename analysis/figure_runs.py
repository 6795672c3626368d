"""The figures of ``caap figure`` (:mod:`analysis.figure_cli` parses the command and dispatches here): model and
sample loading shared by all figures, resumable metric rows per figure (``DIR/<figure>.run.json`` refuses other
settings), and one function per figure returning the exit status."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def load_model(args):
    from caap.cli import load_checked_model

    if args.weights is not None and not args.weights.is_file():
        raise ValueError(f"--weights {args.weights}: no such file")
    return load_checked_model(argparse.Namespace(model=args.model, weights=args.weights, hf=args.hf,
                                                 device=args.device))


def _manifest_csv(args) -> Path | None:
    if args.dataset != "manifest":
        return None
    return args.root / "manifest.csv" if args.root.is_dir() else args.root


def _samples(args, split=None):
    from analysis.data import subset
    from analysis.datasets import get_dataset

    if not args.root.exists():
        raise FileNotFoundError(f"--root {args.root}: no such file or directory")
    dataset = get_dataset(args.dataset, args.root, split if split is not None else args.split)
    return subset(dataset.samples, args.n, args.seed)


def check_methods(spec: str) -> list[str]:
    """The canonical method specs of ``--methods`` (``NAME[:KEY=VALUE...]``; names and option keys checked)."""
    from caap.registry import check_method_specs

    return check_method_specs(spec, "--methods")


def build_methods(methods: list[str], model) -> dict:
    """Each method spec built on ``model`` (option values checked: one ValueError naming the spec)."""
    from caap.registry import get_method_spec

    return {m: get_method_spec(m, model) for m in methods}


def _settings(args, model, figure: str, extra: dict, digests: dict[str, str] | None = None) -> dict:
    """What the figure's rows depend on; files by content (analysis.provenance), so another folder with the same
    file names, or a checkpoint rewritten in place, is another run. ``digests``: the images' content digests
    (:func:`analysis.provenance.sample_digests`), when the figure reads a dataset subset."""
    from analysis.provenance import combined_digest, file_digest, hf_weights_digest

    weights = str(args.weights.resolve()) if args.weights is not None else None
    return {"figure": figure, "model": model.cfg.model_name or args.model, "weights": weights,
            "weights_sha256": file_digest(args.weights) if args.weights is not None else hf_weights_digest(args.hf),
            "dataset": args.dataset, "split": args.split, "n": args.n,
            "dataset_fingerprint": combined_digest(digests) if digests is not None else None,
            "seed": args.seed, "n_steps": args.n_steps, "target": args.target, "only_correct": args.only_correct,
            **extra}


def _check_run(out: Path, figure: str, settings: dict) -> None:
    """Refuse to append to ``out/<figure>.jsonl`` rows of another run (model, data, protocol)."""
    from analysis.provenance import read_run_json

    run_file = out / f"{figure}.run.json"
    if run_file.is_file():
        old = read_run_json(run_file)
        diff = [k for k in settings if k not in ("variants", "weights") and old.get(k) != settings[k]]
        if diff:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in diff)
            raise ValueError(f"--out {out} holds a {figure} run with other settings ({detail}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(settings, indent=1) + "\n")


def _write_summary(out: Path, figure: str, summary: dict) -> None:
    from analysis.evaluate import METRICS

    with open(out / f"{figure}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "se", "n")])
        for name, stats in summary.items():
            w.writerow([name] + [v for m in METRICS for v in stats[m]])
    (out / f"{figure}.json").write_text(json.dumps(summary, indent=1) + "\n")


def _evaluate_variants(args, model, figure: str, methods: dict, extra: dict) -> dict:
    from analysis.evaluate import evaluate, summarize

    samples = _samples(args)
    from analysis.provenance import sample_digests

    _check_run(args.out, figure, _settings(args, model, figure, extra, sample_digests(samples)))
    rows = evaluate(model, methods, samples, args.out / f"{figure}.jsonl", target=args.target,
                    only_correct=args.only_correct, n_steps=args.n_steps, progress=not args.no_progress)
    names = {s.name for s in samples}
    summary = summarize([r for r in rows if r["sample"] in names and r["method"] in methods])
    summary = {m: summary[m] for m in methods if m in summary}
    if not summary or all(s["deletion"][2] == 0 for s in summary.values()):
        raise ValueError(f"no image was scored for {figure} (all skipped: --only-correct with no correct "
                         f"prediction?)")
    _write_summary(args.out, figure, summary)
    return summary


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"wrote {path}")


def _print_metric_table(summary: dict) -> None:
    from analysis.evaluate import format_table

    print(format_table(summary))


# ---------------------------------------------------------------- figures

def grouping(args, model) -> int:
    from analysis.figures import plot_grouping
    from analysis.grouping import grouping_transition
    from analysis.data import subset
    from analysis.sweeps import grouping_over_samples, iter_instances, load_instance_manifest

    csv_path = _manifest_csv(args)
    if csv_path is not None:
        if not csv_path.is_file():
            raise FileNotFoundError(f"--root {args.root}: no manifest CSV at {csv_path}")
        samples = subset(load_instance_manifest(csv_path, kind=args.split), args.n, args.seed)
        items, total = iter_instances(model, samples), len(samples)
    else:
        plain = [s for s in _samples(args) if s.mask is not None]
        if not plain:
            raise ValueError(f"--dataset {args.dataset} has no masks; attention grouping needs object masks")
        items, total = _single_instances(model, plain), len(plain)
    grouping = grouping_over_samples(model, items, batch_size=args.batch_size, renormalize=not args.unnormalized,
                                     per_head=args.per_head, threshold=args.threshold,
                                     progress=not args.no_progress, total=total)
    transition = grouping_transition(grouping, model.cfg.n_layers)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary = grouping.summary()
    layer_axis = "block l, 0-based: attention of blocks.l (acting on blocks.l.hook_resid_pre)"
    (out / "grouping.json").write_text(json.dumps({**_settings(args, model, "grouping", {}), "layer_axis": layer_axis,
                                                   "summary": summary, "transition": transition,
                                                   "images": grouping.names}, indent=1) + "\n")
    keys = [k for k in ("intra", "inter", "background", "extra", "score") if k in grouping.per_image]
    with open(out / ("grouping_heads.csv" if args.per_head else "grouping.csv"), "w", newline="") as f:
        w = csv.writer(f)
        head_cols = ["head"] if args.per_head else []
        w.writerow(["block"] + head_cols + [f"{k}_{s}" for k in keys for s in ("mean", "se", "n")])
        means = {k: grouping.mean(k) for k in keys}
        ses = {k: grouping.se(k) for k in keys}
        ns = {k: grouping.n(k) for k in keys}
        for l in range(grouping.n_layers):
            heads = range(means["intra"].shape[1]) if args.per_head else [None]
            for h in heads:
                idx = (l,) if h is None else (l, h)
                w.writerow([l] + ([h] if h is not None else []) +
                           [float(v[k][idx]) for k in keys for v in (means, ses, ns)])
    title = (f"{model.cfg.model_name or 'model'}: {len(grouping.names)} images "
             f"({'renormalized over patches' if grouping.renormalize else 'unnormalized'})")
    _save(plot_grouping(grouping, cutoff=transition["cutoff"], title=title), out / "grouping.png")
    score = grouping.mean("score")
    score = score.nanmean(-1) if score.ndim == 2 else score
    print("block  " + " ".join(f"{l:>6d}" for l in range(grouping.n_layers)))
    for k in ("intra", "inter", "background"):
        m = grouping.mean(k)
        m = m.nanmean(-1) if m.ndim == 2 else m
        print(f"{k[:6]:<6} " + " ".join(f"{v:6.4f}" for v in m.tolist()))
    print("score  " + " ".join(f"{v:6.4f}" for v in score.tolist()))
    print(f"grouping score peaks at block {transition['peak_layer']} (plateau within 1 SE: {transition['plateau']}); "
          f"CAAP cutoff ceil(2L/3) = block {transition['cutoff']}")
    return 0


def _single_instances(model, samples):
    from analysis.sweeps import load_pair

    for s in samples:
        image, mask = load_pair(model, s)
        yield s.name, image, mask[None]


def layers(args, model) -> int:
    from analysis.figures import plot_layer_sweep
    from analysis.sweeps import layer_sweep_methods
    from caap import default_layers

    L = model.cfg.n_layers
    ends = args.ends if args.ends else list(range(L))
    bad = [e for e in ends if not 0 <= e < L]
    if bad:
        raise ValueError(f"--ends {bad} out of range: blocks are 0..{L - 1}")
    summary = _evaluate_variants(args, model, "layers", layer_sweep_methods(model, ends), {"variants": ends})
    cutoff = default_layers(L)[1]
    _save(plot_layer_sweep(summary, cutoff=cutoff, title=f"CAAP patching blocks 0..l_e "
                                                         f"({model.cfg.model_name or 'model'})"), args.out / "layers.png")
    _print_metric_table(summary)
    best = {m: max(summary, key=lambda k: summary[k][m][0] * (-1 if m == "deletion" else 1))
            for m in ("deletion", "ins_del", "aupr1")}
    print(f"best last block: {best}; CAAP default l_e = {cutoff}")
    return 0


def ablation(args, model, figure: str, methods: dict, title: str) -> int:
    from analysis.figures import plot_ablation

    summary = _evaluate_variants(args, model, figure, methods, {"variants": list(methods)})
    _save(plot_ablation(summary, title=f"{title} ({model.cfg.model_name or 'model'})"), args.out / f"{figure}.png")
    _print_metric_table(summary)
    return 0


def _check_bench_run(results: Path, expected: dict, digests: dict[str, str]) -> dict:
    """The ``caap bench`` run.json of ``results``, refusing a run made with another model, checkpoint or protocol,
    or whose images differ in content from this command's (same names, other files)."""
    from analysis.provenance import read_run_json

    run_file = results / "run.json"
    if not run_file.is_file():
        raise ValueError(f"--results {results} holds caap bench rows but no run.json: cannot tell what they were "
                         f"computed with; use another --results")
    run = read_run_json(run_file)
    for key, want in expected.items():
        if run.get(key) != want:
            raise ValueError(f"--results {results}: its rows were computed with {key} {run.get(key)!r}, this command "
                             f"asks for {want!r}; pass the same model/protocol options as the caap bench run, or "
                             f"another --results")
    stored = run.get("samples")
    if not isinstance(stored, dict):
        raise ValueError(f"--results {results}: run.json has no image digests (an older caap bench); rerun caap "
                         f"bench into a new --out")
    other = [n for n in digests if n in stored and stored[n] != digests[n]]
    if other:
        raise ValueError(f"--results {results}: image {other[0]!r} (and {len(other) - 1} more) differs from the one "
                         f"the rows were computed on (another --root?); use the same dataset or another --results")
    return run


def _bench_curves(results: Path, methods: list[str], digests: dict[str, str], expected: dict) -> dict:
    """Curves stored by ``caap bench`` rows (``row["curves"]``) for ``methods`` and the samples of ``digests``
    (name -> content digest), from a run whose settings equal ``expected`` (see :func:`_check_bench_run`)."""
    from analysis.results import RESULT_GLOB, read_foreign

    paths = sorted(results.glob(RESULT_GLOB))
    if not paths:
        return {}
    _check_bench_run(results, expected, digests)
    names = set(digests)
    found: dict[str, dict[str, dict]] = {}
    for path in paths:
        for r in read_foreign(path):
            if r.get("method") in methods and r.get("sample") in names and r.get("curves"):
                found.setdefault(r["method"], {}).setdefault(r["sample"], r["curves"])
    return found


def curves(args, model) -> int:
    import numpy as np

    from analysis.evaluate import evaluate
    from analysis.figures import plot_curves

    from analysis.provenance import sample_digests

    methods = check_methods(args.methods)
    samples = _samples(args)
    names = {s.name for s in samples}
    digests = sample_digests(samples)  # every image read once: for the bench rows' check and this figure's run.json
    settings = _settings(args, model, "curves", {}, digests)
    expected = {"model": settings["model"], "weights_sha256": settings["weights_sha256"], "dataset": args.dataset,
                "protocol": {"target": args.target, "only_correct": args.only_correct, "pixels_per_step": None,
                             "n_steps": args.n_steps}}
    reused = _bench_curves(args.results or args.out, methods, digests, expected)
    missing = [m for m in methods if m not in reused]
    if missing:
        built = {m: method.attribute for m, method in build_methods(missing, model).items()}  # before writing
        _check_run(args.out, "curves", settings)
        rows = evaluate(model, built, samples, args.out / "curves.jsonl", target=args.target,
                        only_correct=args.only_correct, n_steps=args.n_steps, curves=True,
                        progress=not args.no_progress)
        for r in rows:
            if r["method"] in built and r["sample"] in names and r.get("curves"):
                reused.setdefault(r["method"], {})[r["sample"]] = r["curves"]
    curves, table = {}, {}
    for m in methods:
        per_sample = reused.get(m, {})
        if not per_sample:
            continue
        lengths = {len(c["deletion"]) for c in per_sample.values()}
        if len(lengths) > 1:
            raise ValueError(f"{m}: stored curves have different lengths {sorted(lengths)}; rerun with one --n-steps")
        curves[m] = {mode: np.array([c[mode] for c in per_sample.values()]) for mode in ("deletion", "insertion")}
        table[m] = {mode: {"mean": curves[m][mode].mean(0).tolist(), "n": len(per_sample)}
                    for mode in ("deletion", "insertion")}
    if not curves:
        raise ValueError("no curves to draw (every image skipped?)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves.json").write_text(json.dumps(table, indent=1) + "\n")
    _save(plot_curves(curves, title=model.cfg.model_name or ""), args.out / "curves.png")
    for m, t in table.items():
        print(f"{m}: n={t['deletion']['n']}, mean deletion curve start/end "
              f"{t['deletion']['mean'][0]:.3f}/{t['deletion']['mean'][-1]:.3f}")
    return 0


def gallery(args, model) -> int:
    import numpy as np
    import torch

    from analysis.figures import plot_gallery
    from analysis.sweeps import load_pair
    from caap.plot import to_display

    methods = check_methods(args.methods)
    samples = _samples(args)
    if args.n is None:
        samples = samples[:4]
    built = build_methods(methods, model)
    names = model.cfg.class_names or [str(i) for i in range(model.cfg.num_classes)]
    images, masks, maps, titles, record = [], [], {m: [] for m in methods}, [], []
    for s in samples:
        x, mask = load_pair(model, s)
        with torch.no_grad():
            predicted = int(model(x).argmax(-1))
        target = s.label if args.target == "label" else predicted
        images.append(to_display(model, x)[0])
        masks.append(None if mask is None else mask.cpu().numpy())
        for m in methods:
            maps[m].append(built[m].attribute(x, torch.tensor([target], device=x.device)).detach().float().cpu()[0])
        label = names[target] if target < len(names) else str(target)
        titles.append(f"{s.name}\n{label}" + ("" if predicted == s.label else " (misclassified)"))
        record.append({"sample": s.name, "label": s.label, "predicted": predicted, "target": target})
    stacked = {m: torch.stack(v) for m, v in maps.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "gallery_maps.npz", **{m: v.numpy() for m, v in stacked.items()})
    (args.out / "gallery.json").write_text(json.dumps({"methods": methods, "images": record}, indent=1) + "\n")
    _save(plot_gallery(np.stack(images), masks, stacked, titles), args.out / "gallery.png")
    return 0
