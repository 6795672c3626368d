"""The rows and tables of a ``caap bench`` output folder: which (sample, method) pairs are done, the merge of every
rank's part, and ``table.md`` / ``table.csv`` (plus the evaluation suite's table). Read by ``caap bench`` and by the
tools that reuse its rows (``caap figure curves``, ``caap view --results``)."""
from __future__ import annotations

import json
from pathlib import Path

RESULT_GLOB = "results*.jsonl"
SUITE_GLOB = "metrics-*.jsonl"  # the evaluation suite: metrics-<name>.jsonl / metrics-<name>.rank<r>.jsonl


def done_pairs(out: Path, own: Path, pattern: str = RESULT_GLOB) -> set[tuple[str, str]]:
    from analysis.evaluate import read_rows

    done = set()
    for path in sorted(out.glob(pattern)):
        rows = read_rows(path) if path == own else read_foreign(path)
        done |= {(r["sample"], r["method"]) for r in rows}
    return done


def read_foreign(path: Path) -> list[dict]:
    """Rows of another rank's file without repairing it (that rank may still be writing)."""
    from analysis.evaluate import check_row

    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.append(check_row(row, path, i + 1))
    return rows


def merge(out: Path, order: list[str], methods: list[str], pattern: str = RESULT_GLOB) -> list[dict]:
    """All rows of every part (files matching ``pattern``), one per (sample, method), in dataset then method
    order."""
    rank = {name: i for i, name in enumerate(order)}
    mrank = {m: i for i, m in enumerate(methods)}
    rows = {}
    for path in sorted(out.glob(pattern)):
        for r in read_foreign(path):
            if r["sample"] in rank and r["method"] in mrank:
                rows.setdefault((r["sample"], r["method"]), r)
    return [rows[k] for k in sorted(rows, key=lambda k: (rank[k[0]], mrank[k[1]]))]


def common_images(rows: list[dict], methods: list[str]) -> list[dict]:
    """The rows of the images that every one of ``methods`` has a row for (scored or skipped)."""
    by_sample: dict[str, set[str]] = {}
    for r in rows:
        by_sample.setdefault(r["sample"], set()).add(r["method"])
    keep = {s for s, have in by_sample.items() if set(methods) <= have}
    return [r for r in rows if r["sample"] in keep]


def write_tables(out: Path, rows: list[dict], methods: list[str], settings: dict | None = None,
                 common: bool = False, suite: dict | None = None, suite_rows: list[dict] = (),
                 paper: bool = True) -> str:
    """``table.md|csv`` from the paper's rows (when ``paper``) and, below it, the suite's table from
    ``suite_rows`` of the ``suite`` metrics (its CSV in ``table_metrics.csv``)."""
    table = _paper_table(out, rows, methods, settings, common) if paper else ""
    if suite:
        from analysis.metrics.suite import format_extras, format_extras_csv, summarize_extras

        suite_rows = [r for r in suite_rows if r["method"] in methods]
        if common:
            suite_rows = common_images(suite_rows, methods)
        summary = summarize_extras(suite_rows, methods, list(suite.values()))
        if not summary and not paper:
            raise ValueError(f"no image was scored (all skipped: --only-correct with no correct prediction?); "
                            f"rows are in {out}")
        masked = [n for n, m in suite.items() if m.needs_mask and any(r.get("metric") == n and r.get("mask_note")
                                                                       for r in suite_rows)]
        extra = format_extras(summary, list(suite.values()), masked) if summary else "no suite row scored"
        md = (out / "table.md").read_text() if paper else ""
        (out / "table.md").write_text(md + ("\n" if md else "") + extra + "\n")
        (out / "table_metrics.csv").write_text(format_extras_csv(summary, list(suite.values())))
        table += ("\n\n" if table else "") + extra
    return table


def _paper_table(out: Path, rows: list[dict], methods: list[str], settings: dict | None, common: bool) -> str:
    from analysis.evaluate import format_csv, format_table, summarize

    rows = [r for r in rows if r["method"] in methods]
    if common:
        rows = common_images(rows, methods)
    summary = summarize(rows)
    summary = {m: summary[m] for m in methods if m in summary and summary[m]["deletion"][2] > 0}
    if not summary:
        raise ValueError(f"no image was scored (all skipped: --only-correct with no correct prediction?); "
                        f"rows are in {out}")
    table = format_table(summary)
    skipped = sum(1 for r in rows if r.get("skipped"))
    p = (settings or {}).get("protocol", {})
    steps = f"{p['n_steps']} steps" if p.get("n_steps") else f"{p.get('pixels_per_step') or 'image width'} px per step"
    note = (f"\n\nmetrics x 100, mean ± SE (population SD / sqrt(n)); target: {p.get('target')}; "
            f"only_correct: {p.get('only_correct')}; {steps}; {len(rows)} rows, {skipped} skipped (misclassified)"
            + ("; only the images every method scored." if common else "."))
    counts = {s["deletion"][2] for s in summary.values()}
    if len(counts) > 1 and not common:
        note += " n differs across methods: their means cover different images (see --common-images)."
    (out / "table.md").write_text(table + note + "\n")
    (out / "table.csv").write_text(format_csv(summary))
    return table
