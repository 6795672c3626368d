"""Paired differences to a reference method (``caap bench --paired REF``): for each other method, its score minus
REF's on the same image, averaged over the images both scored, mean ± SE (population SD / √n, as the tables).

Why: on a few dozen images most methods' means sit within one SE of each other, but the images are shared, so the
per-image difference cancels the image-to-image variance the unpaired SEs carry (the README's readout and padding
comparisons on the two-object composites are these numbers). Cost: none (rows already written).
"""
from __future__ import annotations

from pathlib import Path

from analysis.metrics.suite import mean_se

# (row key, column header) of the paper's metrics, × 100 as the paper table
COLUMNS = (("deletion", "Del"), ("insertion", "Ins"), ("ins_del", "Ins−Del"), ("aupr1", "AUPR₁"),
           ("aupr0", "AUPR₀"), ("pointing_game", "PG"))


def paired_differences(rows: list[dict], methods: list[str], reference: str) -> dict[str, tuple[int, dict]]:
    """``{method: (n, {key: (mean, se)})}`` of ``100 · (method − reference)`` per image, over the n images where
    both have a scored (not skipped) row; methods sharing no image with ``reference`` are left out."""
    scored = {(r["method"], r["sample"]): r for r in rows if not r.get("skipped")}
    ref_rows = [r for (m, _), r in scored.items() if m == reference]
    keys = [k for k, _ in COLUMNS if ref_rows and all(r.get(k) is not None for r in ref_rows)]  # --metrics subset
    out = {}
    for method in methods:
        samples = [s for (m, s) in scored if m == method and (reference, s) in scored]
        if method == reference or not samples:
            continue
        out[method] = (len(samples), {k: mean_se([100 * (scored[(method, s)][k] - scored[(reference, s)][k])
                                                  for s in samples])[:2] for k in keys})
    return out


def write_paired(out: Path, rows: list[dict], methods: list[str], reference: str) -> str:
    """``table_paired.md`` / ``table_paired.csv`` in ``out``; returns the markdown."""
    diffs = paired_differences(rows, methods, reference)
    if not diffs:
        raise ValueError(f"--paired {reference}: no other method shares a scored image with it in {out}")
    keys = list(next(iter(diffs.values()))[1])
    header = dict(COLUMNS)
    lines = ["| method − " + reference + " | n | " + " | ".join(header[k] for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    csv = ["method,reference,n," + ",".join(f"{k}_diff_mean,{k}_diff_se" for k in keys)]
    for method, (n, cols) in diffs.items():
        lines.append(f"| {method} | {n} | " + " | ".join(f"{m:+.2f} ± {se:.2f}" for m, se in cols.values()) + " |")
        csv.append(f"{method},{reference},{n}," + ",".join(f"{m:.6g},{se:.6g}" for m, se in cols.values()))
    md = "\n".join(lines) + (f"\n\npaired differences (method − {reference}) × 100 per image, mean ± SE "
                             f"(population SD / sqrt(n)) over the images both scored.")
    (out / "table_paired.md").write_text(md + "\n")
    (out / "table_paired.csv").write_text("\n".join(csv) + "\n")
    return md
