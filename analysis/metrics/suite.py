"""Scoring and tabulating the evaluation suite (the registered metrics beyond the paper's four).

Rows: one per (image, method, metric), ``{**base, "method", "metric", <the metric's fields>, "seconds" (the
map), "metric_seconds" (this metric's time for the image divided by its methods)}``; a metric that needs a
mask gets ``None`` fields and a ``mask_note`` where the image has none (or it is empty / full after the
transform). ``caap bench`` keeps them in ``metrics-<name>[.rank<r>].jsonl``, so adding a metric to a run
computes only it, and tabulates them in a second table below the paper's.
"""
from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

from torch import Tensor

from analysis.metrics.registry import Context, Metric


def has_localizable_mask(mask, ignore) -> bool:
    """A mask with both foreground and background outside the ignored pixels."""
    if mask is None:
        return False
    keep = mask if ignore is None else mask[~ignore]
    return bool(keep.any()) and not bool(keep.all())


def score_extras(ctx: Context, extras: Sequence[tuple[Metric, Sequence[str]]], maps: Mapping[str, Tensor],
                 base: dict, seconds: Mapping[str, float], note: str | None = None) -> list[dict]:
    """The rows of every ``(metric, methods)`` pair on the precomputed ``maps`` (``[1, h, w]`` each)."""
    rows = []
    localize = has_localizable_mask(ctx.mask, ctx.ignore)
    for metric, names in extras:
        start = time.perf_counter()
        extra = {}
        if metric.needs_mask and not localize:
            fields = [dict.fromkeys(metric.columns) for _ in names]
            extra = {"mask_note": note or ("no object mask: " if ctx.mask is None else "mask empty or full after "
                                           "the transform: ") + f"{metric.name} skipped"}
        else:
            fields = metric.score(ctx, list(names), [maps[n] for n in names])
            if len(fields) != len(names):
                raise RuntimeError(f"metric {metric.name!r} returned {len(fields)} rows for {len(names)} maps")
        share = (time.perf_counter() - start) / len(names)
        for name, f in zip(names, fields):
            rows.append({**base, "method": name, "metric": metric.name, **f, **extra, "seconds": seconds[name],
                         "metric_seconds": share})
    return rows


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and the paper's SE (population SD / sqrt(n)) with exact sums, so row order does not matter."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = math.fsum(values) / n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n) / math.sqrt(n), n


def summarize_extras(rows: Sequence[dict], methods: Sequence[str], metrics: Sequence[Metric]
                     ) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per method and column: ``(mean, SE, n)`` over the scored rows of each metric (skipped rows and
    ``None`` values left out); ``"n"``: the images the method has any scored suite row for."""
    table = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method and not r.get("skipped")]
        if not mine:
            continue
        stats = {"n": (float("nan"), float("nan"), len({r["sample"] for r in mine}))}
        for metric in metrics:
            own = [r for r in mine if r.get("metric") == metric.name]
            for col in metric.columns:
                stats[col] = mean_se([float(r[col]) for r in own if r.get(col) is not None])
        table[method] = stats
    return table


def format_extras(summary: Mapping[str, Mapping[str, tuple[float, float, int]]], metrics: Sequence[Metric],
                  skipped_for_masks: Sequence[str] = ()) -> str:
    """The suite's markdown table (raw values, mean ± SE, best per column in bold, a cell's n when it differs
    from the method's), and a footnote naming the metrics recorded as None for want of masks."""
    cols = [(m, c, h) for m in metrics for c, h in m.columns.items()]
    lines = ["| method | n | " + " | ".join(h for _, _, h in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    best = {}
    for m, c, _ in cols:
        means = {k: s[c][0] for k, s in summary.items() if s[c][2] > 0}
        if means:
            best[c] = (min if c in m.lower_is_better else max)(means, key=means.get)
    for method, stats in summary.items():
        n = stats["n"][2]
        cells = []
        for _, c, _ in cols:
            mean, se, k = stats[c]
            cell = "–" if k == 0 else f"{mean:.4g} ± {se:.2g}"
            cell = f"**{cell}**" if best.get(c) == method else cell
            cells.append(cell + (f" (n={k})" if k not in (0, n) else ""))
        lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if skipped_for_masks:
        text += (f"\n\n{', '.join(skipped_for_masks)}: need object masks; recorded as None (–) where an image has "
                 f"none.")
    return text


def format_extras_csv(summary, metrics: Sequence[Metric]) -> str:
    """The suite's table as CSV: ``method,n`` then ``<column>_mean``, ``_se``, ``_n`` (raw values)."""
    cols = [c for m in metrics for c in m.columns]
    lines = [",".join(["method", "n"] + [f"{c}_{k}" for c in cols for k in ("mean", "se", "n")])]
    for method, stats in summary.items():
        cells = [method, str(stats["n"][2])]
        for c in cols:
            mean, se, n = stats[c]
            cells += [f"{mean:.6g}", f"{se:.6g}", str(n)]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
