"""``caap figure sanity``: the model-parameter-randomisation sanity check of Adebayo et al. 2018 ("Sanity Checks for
Saliency Maps", Fig. 2 cascading / Fig. 4 independent) as a figure.

* ``sanity.png`` / ``sanity.csv``: x = the randomized block, from ``original`` through the last block down to
  block 0 (cascading: blocks L−1..l all randomized; ``--mprt independent``: block l alone), y = mean (± SE,
  population SD / √n as the tables) Spearman ρ and SSIM of the randomized model's map to the original, one line
  per method. The numbers are the ``mprt`` metric's (:func:`analysis.metrics.mprt.block_similarities`): read from
  a finished ``caap bench --metrics mprt`` run (``--results``, its run.json checked as ``caap figure curves``
  does) or computed here through the same code path as ``caap bench`` (rows in ``DIR/sanity.jsonl``,
  resumable). ``original`` is 1 by definition (a map against itself).
* ``sanity_gallery.png`` (+ ``sanity_gallery_maps.npz``, ``sanity_gallery.json``): for one image (``--image``,
  default the first), rows = methods, columns = the original map then the map after randomizing each of
  ``--gallery-blocks`` (default every block), on copies randomized by :func:`analysis.metrics.mprt.randomize_block`
  with ``--seed`` (the metric's seed), each map min-max normalized over the image as ``caap figure gallery``.

Cost without ``--results``: L explanations per (image, method) plus the original map (the metric's cost); the
gallery adds ``len(--gallery-blocks) + 1`` explanations per method.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
from pathlib import Path

MODES = ("cascading", "independent")  # analysis.metrics.mprt.MODES (not imported here: the parser stays light)


def add_arguments(p: argparse.ArgumentParser, common) -> None:
    """The ``sanity`` subcommand's options: ``common(p)`` (the figure CLI's model/dataset options) plus its own."""
    common(p)
    p.add_argument("--results", type=Path, help="a `caap bench --metrics mprt --out DIR` folder whose per-block "
                                                "similarities to draw (default: compute them here)")
    p.add_argument("--mprt", choices=MODES, default="cascading",
                   help="randomization: cascading from the last block (default, Adebayo et al.'s Fig. 2) or one "
                        "block at a time")
    p.add_argument("--image", help="the gallery's image: a sample name of the subset (default: the first)")
    p.add_argument("--gallery-blocks", type=int, nargs="+", metavar="L",
                   help="gallery columns: the map after randomizing these blocks (default: every block)")


def _expected(args, settings: dict) -> dict:
    return {"model": settings["model"], "weights_sha256": settings["weights_sha256"], "dataset": args.dataset,
            "seed": args.seed}


def _bench_rows(args, methods: list[str], digests: dict[str, str], settings: dict, metric) -> dict:
    """``{method: {sample: mprt_blocks}}`` from the ``caap bench`` rows in ``args.results``, refusing a run with
    another model, checkpoint, seed, target or MPRT setting, or none of these rows."""
    from analysis.bench import _suite_glob
    from analysis.figure_runs import _check_bench_run
    from analysis.results import read_foreign
    from caap.registry import method_settings

    results = args.results
    command = (f"`caap bench <the same model and dataset options> --methods {','.join(methods)} --metrics mprt "
               f"--mprt {args.mprt} --out {results}`")
    paths = sorted(results.glob(_suite_glob("mprt")))
    found: dict[str, dict[str, dict]] = {}
    for path in paths:
        for r in read_foreign(path):
            if r.get("method") in methods and r.get("sample") in digests and r.get("mprt_blocks"):
                found.setdefault(r["method"], {}).setdefault(r["sample"], r["mprt_blocks"])
    if not found:
        raise ValueError(f"--results {results} holds no mprt rows for {', '.join(methods)} on these images; "
                         f"{command} writes them (or drop --results to compute them here)")
    run = _check_bench_run(results, _expected(args, settings), digests)
    protocol = run.get("protocol") or {}
    for key, want in (("target", args.target), ("only_correct", args.only_correct)):
        if protocol.get(key) != want:
            raise ValueError(f"--results {results}: its rows explain with {key} {protocol.get(key)!r}, this command "
                             f"asks for {want!r}; pass the same options as the caap bench run, or another --results")
    stored = (run.get("metric_settings") or {}).get("mprt")
    if stored != dict(metric.settings):
        raise ValueError(f"--results {results}: its mprt rows were computed with {stored!r}, this command asks for "
                         f"{dict(metric.settings)!r} (--mprt {args.mprt}); use another --results")
    for m in found:
        old = (run.get("method_settings") or {}).get(m)
        if old != method_settings(m):
            raise ValueError(f"--results {results}: method {m!r} was scored with settings {old!r}, now "
                             f"{method_settings(m)!r}; use another --results")
    return found


def _compute(args, model, methods: list[str], samples, settings: dict, metric) -> dict:
    """``{method: {sample: mprt_blocks}}`` computed as ``caap bench --metrics mprt`` does (its
    ``score_sample`` with the mprt metric as the only extra), appended to ``DIR/sanity.jsonl`` (resumable)."""
    from tqdm.auto import tqdm

    from analysis.evaluate import Protocol, read_rows, score_sample
    from analysis.figure_runs import _check_run, build_methods
    from caap.registry import get_method_spec

    built = {m: method.attribute for m, method in build_methods(methods, model).items()}  # before writing
    _check_run(args.out, "sanity", settings)
    path = args.out / "sanity.jsonl"
    rows = [r for r in read_rows(path) if r.get("metric") == "mprt"]
    done = {(r["sample"], r["method"]) for r in rows}
    todo = [(s, m) for s in samples for m in methods if (s.name, m) not in done]
    protocol = Protocol(args.target, args.only_correct, None, args.n_steps)
    with open(path, "a") as f:
        for sample, m in tqdm(todo, desc=f"mprt ({args.mprt})", unit="map", disable=args.no_progress):
            for row in score_sample(model, built, [], sample, protocol, extras=[(metric, [m])], seed=args.seed,
                                    rebuild=lambda name, net: get_method_spec(name, net).attribute):
                f.write(json.dumps(row) + "\n")
                f.flush()
                rows.append(row)
    names = {s.name for s in samples}
    found: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["method"] in methods and r["sample"] in names and r.get("mprt_blocks"):
            found.setdefault(r["method"], {}).setdefault(r["sample"], r["mprt_blocks"])
    return found


def summarize(found: dict[str, dict[str, dict]], methods: list[str]) -> tuple[list[int], dict]:
    """The randomized blocks (in the rows' order, last block first) and per method and similarity the
    ``(mean, SE, n)`` over images at each block."""
    from analysis.metrics.suite import mean_se

    orders = {tuple(b["block"]) for per in found.values() for b in per.values()}
    if len(orders) != 1:
        raise ValueError(f"the mprt rows randomize different blocks {sorted(orders)}; rerun into one --out")
    blocks = list(orders.pop())
    table = {m: {sim: [mean_se([per[s][sim][i] for s in per]) for i in range(len(blocks))]
                 for sim in ("spearman", "ssim")} for m in methods if (per := found.get(m))}
    return blocks, table


def write_csv(path: Path, blocks: list[int], table: dict) -> None:
    """One row per method and x position: ``original`` (1 by definition) then each randomized block."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "step", "block", "spearman_mean", "spearman_se", "ssim_mean", "ssim_se", "n"])
        for m, sims in table.items():
            n = sims["spearman"][0][2]
            w.writerow([m, 0, "original", 1.0, 0.0, 1.0, 0.0, n])
            for i, b in enumerate(blocks):
                (rho, rho_se, k), (ssim, ssim_se, _) = sims["spearman"][i], sims["ssim"][i]
                w.writerow([m, i + 1, b, repr(rho), repr(rho_se), repr(ssim), repr(ssim_se), k])


def plot_sanity(blocks: list[int], table: dict, mode: str, title: str = ""):
    """Adebayo et al.'s figure: one panel per similarity, one line (mean ± SE band) per method."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    colors = plt.get_cmap("tab10" if len(table) <= 10 else "tab20")
    x = np.arange(len(blocks) + 1)
    for ax, sim, label in zip(axes, ("spearman", "ssim"), ("Spearman ρ", "SSIM")):
        for i, (m, sims) in enumerate(table.items()):
            mean = np.array([1.0] + [v[0] for v in sims[sim]])
            se = np.nan_to_num(np.array([0.0] + [v[1] for v in sims[sim]]))
            color = colors(i % colors.N)
            ax.plot(x, mean, marker="o", markersize=3, color=color, label=f"{m} (n={sims[sim][0][2]})")
            ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.15)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(x, ["original"] + [str(b) for b in blocks], rotation=45 if len(x) > 8 else 0)
        ax.set_xlabel("randomized block (" + ("cascading: this block and all after it" if mode == "cascading"
                                               else "independent: this block alone") + ")")
        ax.set_ylabel(f"{label} to the original map (mean ± SE)")
        ax.set_title(f"MPRT, {label}", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()  # one legend for both panels, outside the data
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.845, 0.5), fontsize=7, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    return fig


def gallery_maps(model, image, target: int, methods: list[str], blocks: list[int], seed: int, mode: str) -> dict:
    """``{method: [original, after each of blocks]}`` maps ``[h, w]``: blocks are randomized last to first on a
    copy of the model with :func:`randomize_block` (cascading keeps each one randomized; independent restores it),
    so column ``l`` is the model the ``mprt`` metric explains at block ``l``."""
    import torch

    from analysis.metrics.mprt import randomize_block
    from caap import get_method

    t = torch.tensor([target], device=image.device)

    def explain(name, net):
        return get_method(name, net).attribute(image, t).detach().float().cpu()[0]

    maps = {m: [explain(m, model)] for m in methods}
    net = copy.deepcopy(model)
    for layer in reversed(range(len(net.blocks))):
        if mode == "independent" and layer not in blocks:
            continue
        saved = copy.deepcopy(net.blocks[layer].state_dict()) if mode == "independent" else None
        randomize_block(net, layer, seed)
        if layer in blocks:
            for m in methods:
                maps[m].append(explain(m, net))
        if saved is not None:
            net.blocks[layer].load_state_dict(saved)
    return maps


def plot_sanity_gallery(image, mask, maps: dict, columns: list[str], title: str = "", size: float = 2.0):
    """Rows = methods, columns = ``columns`` (original, then each randomization); every map min-max normalized
    over the image (:func:`caap.plot.overlay`), with the object's outline when there is a mask."""
    import matplotlib.pyplot as plt
    import numpy as np

    from caap.plot import overlay

    rows = list(maps)
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(size * len(columns), size * len(rows)), squeeze=False)
    for r, m in enumerate(rows):
        for c, a in enumerate(maps[m]):
            overlay(image, a, axes[r, c], title=columns[c] if r == 0 else None)
            if mask is not None and np.asarray(mask).any():
                axes[r, c].contour(np.asarray(mask, dtype=float), levels=[0.5], colors="white", linewidths=1)
        axes[r, 0].text(-0.06, 0.5, m, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=9)
    fig.suptitle(title, fontsize=9)
    height = size * len(rows)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))  # a fixed 0.35 in for the title, above the column titles
    return fig


def _gallery(args, model, methods: list[str], samples, blocks: list[int]) -> None:
    import numpy as np
    import torch

    from analysis.data import load_sample
    from analysis.figure_runs import _save
    from caap.plot import to_display

    sample = next(s for s in samples if s.name == args.image) if args.image is not None else samples[0]
    loaded = load_sample(model, sample)
    with torch.no_grad():
        predicted = int(model(loaded.image).argmax(-1))
    target = sample.label if args.target == "label" else predicted  # as caap bench's rows
    chosen = sorted(set(args.gallery_blocks or blocks), reverse=True)
    maps = gallery_maps(model, loaded.image, target, methods, chosen, args.seed, args.mprt)
    L = len(model.blocks)
    columns = ["original"] + [f"blocks {L - 1}..{b}" if args.mprt == "cascading" and b < L - 1 else f"block {b}"
                              for b in chosen]
    out = args.out
    np.savez_compressed(out / "sanity_gallery_maps.npz", **{m: torch.stack(v).numpy() for m, v in maps.items()})
    (out / "sanity_gallery.json").write_text(json.dumps(
        {"sample": sample.name, "label": sample.label, "predicted": predicted, "target": target, "mode": args.mprt,
         "seed": args.seed, "blocks": chosen, "columns": columns, "methods": methods}, indent=1) + "\n")
    mask = None if loaded.mask is None else loaded.mask.cpu().numpy()
    title = f"{sample.name}: maps of class {target} as blocks are randomized ({args.mprt}, seed {args.seed})"
    _save(plot_sanity_gallery(to_display(model, loaded.image)[0], mask, maps, columns, title),
          out / "sanity_gallery.png")


def run(args) -> int:
    """``caap figure sanity``: check the options, then the curves figure and the gallery; returns 0."""
    from analysis import figure_runs as runs
    from analysis.metrics import get_metric
    from analysis.provenance import sample_digests

    methods = runs.check_methods(args.methods)
    bad = [b for b in args.gallery_blocks or () if b < 0]
    if bad:
        raise ValueError(f"--gallery-blocks {bad}: blocks are 0-based indices >= 0")
    metric = get_metric("mprt", mode=args.mprt)
    model = runs.load_model(args)
    L = len(getattr(model, "blocks", ()))
    bad = [b for b in args.gallery_blocks or () if b >= L]
    if bad:
        raise ValueError(f"--gallery-blocks {bad} out of range: {model.cfg.model_name or 'the model'} has blocks "
                         f"0..{L - 1}")
    samples = runs._samples(args)
    if not samples:
        raise ValueError(f"--root {args.root}: no images (split {args.split!r})")
    names = [s.name for s in samples]
    if args.image is not None and args.image not in names:
        raise ValueError(f"--image {args.image!r}: not among the {len(names)} images of this subset "
                         f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    digests = sample_digests(samples)
    settings = runs._settings(args, model, "sanity", {"mprt": dict(metric.settings)}, digests)
    found = _bench_rows(args, methods, digests, settings, metric) if args.results is not None else {}
    missing = [m for m in methods if m not in found]
    if missing:
        if args.results is not None:
            print(f"--results {args.results} has no mprt rows for {', '.join(missing)}: computing them here")
        found.update(_compute(args, model, missing, samples, settings, metric))
    if not found:
        raise ValueError("no image was scored (all skipped: --only-correct with no correct prediction?)")
    blocks, table = summarize(found, methods)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "sanity.csv", blocks, table)
    print(f"wrote {args.out / 'sanity.csv'}")
    title = f"{model.cfg.model_name or 'model'}: model parameter randomisation ({args.mprt}, seed {args.seed})"
    runs._save(plot_sanity(blocks, table, args.mprt, title), args.out / "sanity.png")
    _gallery(args, model, methods, samples, blocks)
    for m, sims in table.items():
        rho = [v[0] for v in sims["spearman"]]
        print(f"{m}: n={sims['spearman'][0][2]}, MPRT (mean Spearman over blocks) {sum(rho) / len(rho):.3f}, "
              f"Spearman after block {blocks[0]} {rho[0]:.3f}, after block {blocks[-1]} {rho[-1]:.3f}")
    return 0
