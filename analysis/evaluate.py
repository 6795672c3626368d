"""Benchmark attribution methods on image + mask samples: resumable JSONL results and summary tables."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from analysis.data import Sample, load_image_and_mask
from analysis.metrics import auc, aupr, perturbation_curves, pointing_game

Method = Callable[[Float[Tensor, "1 chan H W"], Int[Tensor, "1"]], Float[Tensor, "1 h w"]]
METRICS = ("deletion", "insertion", "ins_del", "aupr1", "aupr0", "pointing_game")
LOWER_IS_BETTER = {"deletion"}
HEADERS = {"deletion": "Del ↓", "insertion": "Ins ↑", "ins_del": "Ins−Del ↑", "aupr1": "AUPR₁ ↑",
           "aupr0": "AUPR₀ ↑", "pointing_game": "PG ↑"}


def default_methods(model) -> dict[str, Method]:
    """CAAP (exact), E-CAAP, the two input-level baselines and Grad-CAM, all with default settings."""
    from caap import CAAP, GradCAM, SimpleDeletion, SimpleInsertion

    methods = {"CAAP": CAAP(model, progress=False), "E-CAAP": CAAP(model, engine="efficient", progress=False),
               "SimpleInsertion": SimpleInsertion(model, progress=False),
               "SimpleDeletion": SimpleDeletion(model, progress=False), "Grad-CAM": GradCAM(model)}
    return {name: m.attribute for name, m in methods.items()}


def _done(results_path: Path) -> set[tuple[str, str]]:
    if not results_path.is_file():
        return set()
    with open(results_path) as f:
        return {(r["sample"], r["method"]) for r in map(json.loads, filter(str.strip, f))}


def evaluate(model, methods: Mapping[str, Method], samples: Sequence[Sample], results_path: str | Path, *,
             target: str = "label", only_correct: bool = False, n_steps: int = 32, progress: bool = True) -> list[dict]:
    """Score every (sample, method) pair not yet in ``results_path`` (one JSON line each, appended as it
    is computed, so an interrupted run resumes). ``target``: ``"label"`` or ``"predicted"``;
    ``only_correct`` skips images the model gets wrong. Returns all records in the file."""
    if target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted'; got {target!r}")
    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done(results_path)
    with open(results_path, "a") as out:
        for sample in tqdm(samples, disable=not progress, desc="evaluate"):
            todo = [name for name in methods if (sample.name, name) not in done]
            if not todo:
                continue
            x, mask = load_image_and_mask(model, sample)
            with torch.no_grad():
                predicted = int(model(x).argmax(-1))
            if only_correct and predicted != sample.label:
                continue
            cls = torch.tensor([sample.label if target == "label" else predicted])
            for name in todo:
                start = time.perf_counter()
                attribution = methods[name](x, cls)
                seconds = time.perf_counter() - start
                deletion = auc(perturbation_curves(model, x, attribution, cls, mode="deletion", n_steps=n_steps))
                insertion = auc(perturbation_curves(model, x, attribution, cls, mode="insertion", n_steps=n_steps))
                aupr1, aupr0 = aupr(attribution[0], mask)
                record = {"sample": sample.name, "method": name, "target": int(cls), "predicted": predicted,
                          "label": sample.label, "deletion": float(deletion), "insertion": float(insertion),
                          "ins_del": float(insertion - deletion), "aupr1": aupr1, "aupr0": aupr0,
                          "pointing_game": float(pointing_game(attribution[0], mask)), "seconds": seconds}
                out.write(json.dumps(record) + "\n")
                out.flush()
    with open(results_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(records: Sequence[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per method and metric: ``(mean, standard error, n)``."""
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        stats = {}
        for metric in METRICS + ("seconds",):
            values = torch.tensor([r[metric] for r in rows], dtype=torch.float64)
            sem = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
            stats[metric] = (float(values.mean()), sem, len(values))
        table[method] = stats
    return table


def format_table(summary: Mapping[str, Mapping[str, tuple[float, float, int]]], scale: float = 100.0) -> str:
    """Markdown table (metrics x ``scale``, as in the paper) with the best value per column in bold.
    Timings stay in the records: runs share the machine, so they are no benchmark."""
    metrics = METRICS
    best = {}
    for metric in metrics:
        means = {m: s[metric][0] for m, s in summary.items()}
        best[metric] = (min if metric in LOWER_IS_BETTER else max)(means, key=means.get)
    header = "| method | n | " + " | ".join(HEADERS[m] for m in metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for method, stats in summary.items():
        cells = []
        for metric in metrics:
            mean, sem, _ = stats[metric]
            cell = f"{mean * scale:.2f} ± {sem * scale:.2f}"
            cells.append(f"**{cell}**" if best[metric] == method else cell)
        lines.append(f"| {method} | {stats['deletion'][2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
