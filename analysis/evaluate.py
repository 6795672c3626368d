"""Score attribution methods on samples under the paper's protocol: resumable JSONL rows and summary tables.

One row per (sample, method): the explained class, the prediction, whether it is correct, the protocol
(``target`` rule, ``only_correct``, curve steps), Deletion / Insertion AUC with their curves, and AUPR1 /
AUPR0 / Pointing Game when the sample has a mask (``None`` otherwise: skipped, never faked).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from analysis.data import Sample, load_sample
from analysis.metrics import aupr, auc, check_finite, curves_for, pointing_game, to_pixels

log = logging.getLogger(__name__)

Method = Callable[[Float[Tensor, "1 chan H W"], Int[Tensor, "1"]], Float[Tensor, "1 h w"]]
FAITHFULNESS = ("deletion", "insertion", "ins_del")
LOCALIZATION = ("aupr1", "aupr0", "pointing_game")
METRICS = FAITHFULNESS + LOCALIZATION
LOWER_IS_BETTER = {"deletion"}
HEADERS = {"deletion": "Del ↓", "insertion": "Ins ↑", "ins_del": "Ins−Del ↑", "aupr1": "AUPR₁ ↑",
           "aupr0": "AUPR₀ ↑", "pointing_game": "PG ↑"}
TARGETS = ("predicted", "label")
# two-object images: localize against the explained object's mask (default) or the union of all objects
PAIR_MASKS = ("explained", "union")


@dataclass(frozen=True)
class Protocol:
    """The settings that change a row's numbers. ``target``: explain the ``"predicted"`` class (default, as
    RISE and ``CAAP.attribute``) or the ``"label"``; ``only_correct``: skip misclassified images (their rows
    say so); ``pixels_per_step`` (default: the image width, RISE) or ``n_steps`` (quick runs)."""
    target: str = "predicted"
    only_correct: bool = False
    pixels_per_step: int | None = None
    n_steps: int | None = None

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}; got {self.target!r}")
        if self.pixels_per_step is not None and self.n_steps is not None:
            raise ValueError("give pixels_per_step or n_steps, not both")
        if not isinstance(self.only_correct, bool):
            raise ValueError(f"only_correct must be True or False; got {self.only_correct!r}")
        for name in ("pixels_per_step", "n_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or None for the default); got {value!r}")


def default_methods(model) -> dict[str, Method]:
    """CAAP (exact), E-CAAP, the two input-level baselines and Grad-CAM, all with default settings."""
    from caap import CAAP, GradCAM, SimpleDeletion, SimpleInsertion

    methods = {"CAAP": CAAP(model, progress=False), "E-CAAP": CAAP(model, engine="efficient", progress=False),
               "SimpleInsertion": SimpleInsertion(model, progress=False),
               "SimpleDeletion": SimpleDeletion(model, progress=False), "Grad-CAM": GradCAM(model)}
    return {name: m.attribute for name, m in methods.items()}


def check_row(row, path: Path, line: int) -> dict:
    """A stored result row must be an object naming its ``sample`` and ``method`` (strings)."""
    if not isinstance(row, dict) or not isinstance(row.get("sample"), str) or not isinstance(row.get("method"), str):
        got = type(row).__name__ if not isinstance(row, dict) else f"keys {sorted(row)[:6]}"
        raise ValueError(f"{path}: line {line} is not a result row (an object with string 'sample' and 'method'; "
                         f"got {got}); the results file is corrupt or from another tool")
    return row


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (an interrupted write) is dropped with a warning and cut
    from the file, so later appends start on a fresh line. A bad line elsewhere is an error."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows, good_bytes = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + (1 if i < len(lines) - 1 else 0)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 or all(not rest.strip() for rest in lines[i + 1:]):
                log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", path, len(line))
                with open(path, "r+b") as f:
                    f.truncate(good_bytes)
                return rows
            raise ValueError(f"{path}: line {i + 1} is not JSON; the results file is corrupt") from None
        rows.append(check_row(row, path, i + 1))
        good_bytes += len(line) + (1 if i < len(lines) - 1 else 0)
    if raw and not raw.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
    return rows


def score_attribution(model, image: Float[Tensor, "1 chan H W"], attribution: Float[Tensor, "1 h w"],
                      target: int, mask=None, ignore=None, *, protocol: Protocol = Protocol(),
                      memory_budget_gb: float = 1.0, curves: bool = True, batch_size: int | None = None) -> dict:
    """Every metric of one map: Deletion / Insertion AUC (and their curves when ``curves``), Ins−Del, and
    AUPR1 / AUPR0 / Pointing Game when ``mask`` is given and holds both foreground and background (else
    ``None``). Cost: 2 curves of ``points`` forwards each."""
    return score_attributions(model, image, [attribution], target, mask, ignore, protocol=protocol,
                              memory_budget_gb=memory_budget_gb, curves=curves, batch_size=batch_size)[0]


def score_attributions(model, image: Float[Tensor, "1 chan H W"], attributions: Sequence[Float[Tensor, "1 h w"]],
                       target: int, mask=None, ignore=None, *, protocol: Protocol = Protocol(),
                       memory_budget_gb: float = 1.0, curves: bool = True,
                       batch_size: int | None = None) -> list[dict]:
    """:func:`score_attribution` for several maps of one image (one per method) at once: the Deletion and
    Insertion curves of all maps are one stream of perturbed copies, batched by the memory budget (so a
    quick 16-step run fills batches of 2·17·maps copies). Cost: 2 curves of ``points`` forwards per map."""
    for a in attributions:
        if a.ndim != 3 or a.shape[0] != 1:
            raise ValueError(f"each attribution must be one map [1, h, w]; got shape {tuple(a.shape)}")
        check_finite(a)  # before upsampling, so the message counts the map's own NaN/Inf values
    h, w = image.shape[-2:]
    maps = torch.cat([to_pixels(a.float(), (h, w)) for a in attributions])
    k = maps.shape[0]
    both = curves_for(model, image.expand(k, -1, -1, -1), maps, torch.full((k,), target),
                      pixels_per_step=protocol.pixels_per_step, n_steps=protocol.n_steps,
                      memory_budget_gb=memory_budget_gb, batch_size=batch_size)
    dele, ins = both["deletion"], both["insertion"]
    d_auc, i_auc = auc(dele), auc(ins)
    keep = None if mask is None else (mask if ignore is None else mask[~ignore])
    localize = keep is not None and bool(keep.any()) and not bool(keep.all())
    rows = []
    for j, attribution in enumerate(attributions):
        d, i = float(d_auc[j]), float(i_auc[j])
        row = {"deletion": d, "insertion": i, "ins_del": i - d, "aupr1": None, "aupr0": None, "pointing_game": None}
        if mask is not None:
            if localize:
                row["aupr1"], row["aupr0"] = aupr(attribution[0].cpu(), mask, ignore)
                row["pointing_game"] = float(pointing_game(attribution[0].cpu(), mask, ignore))
            else:
                row["mask_note"] = "mask empty or full after the transform: localization skipped"
        if curves:
            row["curves"] = {"deletion": dele[j].tolist(), "insertion": ins[j].tolist()}
        rows.append(row)
    return rows


def evaluate(model, methods: Mapping[str, Method], samples: Sequence[Sample], results_path: str | Path, *,
             target: str = "predicted", only_correct: bool = False, n_steps: int | None = None,
             pixels_per_step: int | None = None, progress: bool = True, curves: bool = False,
             memory_budget_gb: float = 1.0, pair_mask: str = "explained") -> list[dict]:
    """Score every (sample, method) pair not yet in ``results_path`` (one JSON line each, appended as
    computed, so an interrupted run resumes). Rows computed under another :class:`Protocol` (or, for
    two-object images, another ``pair_mask``: see :func:`score_sample`) are refused. Returns all rows in the file."""
    protocol = Protocol(target, only_correct, pixels_per_step, n_steps)
    check_pair_mask(pair_mask)
    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    rows = read_rows(results_path)
    for r in rows:
        if r.get("protocol") != asdict(protocol):
            raise ValueError(f"{results_path} holds rows computed with protocol {r.get('protocol')}, not "
                             f"{asdict(protocol)}; use another results file")
        if r.get("pair_mask", pair_mask) != pair_mask:
            raise ValueError(f"{results_path} holds rows localized with pair_mask {r['pair_mask']!r}, not "
                             f"{pair_mask!r}; use another results file")
    done = {(r["sample"], r["method"]) for r in rows}
    with open(results_path, "a") as out:
        for sample in tqdm(samples, disable=not progress, desc="evaluate"):
            todo = [name for name in methods if (sample.name, name) not in done]
            if not todo:
                continue
            for row in score_sample(model, methods, todo, sample, protocol, curves=curves,
                                    memory_budget_gb=memory_budget_gb, pair_mask=pair_mask):
                out.write(json.dumps(row) + "\n")
                out.flush()
    return read_rows(results_path)


def check_pair_mask(pair_mask) -> str:
    if not isinstance(pair_mask, str) or pair_mask not in PAIR_MASKS:
        raise ValueError(f"pair_mask must be one of {PAIR_MASKS}; got {pair_mask!r}")
    return pair_mask


def score_sample(model, methods: Mapping[str, Method], todo: Sequence[str], sample: Sample, protocol: Protocol, *,
                 curves: bool = True, memory_budget_gb: float = 1.0, autocast=None, batch_size: int | None = None,
                 pair_mask: str = "explained", extras=(), rebuild=None, seed: int = 0):
    """Yield one row per method of ``todo`` for ``sample``: every map first, then all their curves in one
    batched stream (:func:`score_attributions`).

    ``extras``: ``(Metric, method names)`` pairs of the evaluation suite (``analysis.metrics``, ``caap bench
    --metrics``), scored on the same maps (each map computed once); their rows carry ``"metric"`` and are
    yielded after the paper's (:func:`analysis.metrics.suite.score_extras`; ``rebuild``, ``seed``: its Context).

    Two-object images: ``correct`` means the explained object's class was predicted (``target="label"``: the
    prediction is ``label``; ``"predicted"``: it is one of the objects' classes, else the image is
    misclassified; :meth:`Sample.correct`). With per-object masks (``sample.masks_by_label``) localization
    uses, with ``pair_mask="explained"``, the mask of the object whose class is explained; a misclassified image scored anyway (no ``only_correct``) explains a
    class no object has, so its localization is ``None`` with a ``mask_note`` (faithfulness is scored).
    ``pair_mask="union"``: the union of the objects ("any object" localization). Rows say which
    (``pair_mask``, ``mask_object``: the explained object's label, ``"union"`` or None)."""
    import contextlib
    from dataclasses import replace

    check_pair_mask(pair_mask)
    autocast = autocast or contextlib.nullcontext
    loaded = load_sample(model, sample)
    with torch.no_grad(), autocast():
        predicted = int(model(loaded.image).argmax(-1))
    cls = sample.label if protocol.target == "label" else predicted
    correct = sample.correct(predicted, protocol.target)
    pair = sample.masks_by_label is not None
    base = {"sample": sample.name, "target": cls, "predicted": predicted, "label": sample.label, "correct": correct,
            "protocol": asdict(protocol)}
    mask, ignore, note = loaded.mask, loaded.ignore, None
    if pair:
        path = sample.mask if pair_mask == "union" else sample.object_mask(cls)
        base |= {"pair_mask": pair_mask, "mask_object": "union" if pair_mask == "union" else
                 (cls if path is not None else None)}
    extras = [(metric, list(names)) for metric, names in extras if names]
    if protocol.only_correct and not correct:
        for name in todo:
            yield {**base, "method": name, "skipped": "incorrect"}
        for metric, names in extras:
            yield from ({**base, "method": name, "metric": metric.name, "skipped": "incorrect"} for name in names)
        return
    if pair and path is None:
        mask, ignore, note = None, None, f"no object of the explained class {cls}: localization skipped"
    elif pair and path != sample.mask:
        object_loaded = load_sample(model, replace(sample, mask=path))
        mask, ignore = object_loaded.mask, object_loaded.ignore
    attributions, seconds = {}, {}
    for name in dict.fromkeys([*todo, *(n for _, names in extras for n in names)]):  # each map once
        start = time.perf_counter()
        with autocast():
            attributions[name] = methods[name](loaded.image, torch.tensor([cls], device=loaded.image.device)).float()
        seconds[name] = time.perf_counter() - start
    if todo:
        with autocast():
            scored = score_attributions(model, loaded.image, [attributions[n] for n in todo], cls, mask, ignore,
                                        protocol=protocol, memory_budget_gb=memory_budget_gb, curves=curves,
                                        batch_size=batch_size)
        for name, metrics in zip(todo, scored):
            yield {**base, "method": name, **metrics, **({"mask_note": note} if note else {}), "seconds": seconds[name]}
    if extras:
        from analysis.metrics.registry import Context
        from analysis.metrics.suite import score_extras

        ctx = Context(model, loaded.image, cls, mask, ignore, methods, rebuild, sample.name, seed, memory_budget_gb,
                      batch_size, sample.label, source=sample)
        with autocast():
            rows = score_extras(ctx, extras, attributions, base, seconds, note)
        yield from rows


def _mean_se(values: list[float]) -> tuple[float, float, int]:
    """Mean and the paper's standard error (population SD / sqrt(n)); exact sums (``math.fsum``), so the
    result does not depend on row order (a merged multi-process run equals a single-process run)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    return mean, sd / math.sqrt(n), n


def summarize(records: Sequence[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per method and metric: ``(mean, standard error, n)`` over the scored rows (skipped rows and
    ``None`` values left out). SE as the paper: population SD / sqrt(n) (:func:`analysis.metrics.standard_error`)."""
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method and not r.get("skipped")]
        table[method] = {m: _mean_se([r[m] for r in rows if r.get(m) is not None]) for m in METRICS + ("seconds",)}
    return table


def _columns(summary) -> list[str]:
    return [m for m in METRICS if any(s[m][2] > 0 for s in summary.values())]


def format_table(summary: Mapping[str, Mapping[str, tuple[float, float, int]]], scale: float = 100.0) -> str:
    """Markdown table in the paper's layout (metrics × ``scale``, mean ± SE, best per column in bold, the
    number of scored images per method; a cell whose n differs says so). Metrics no method has (no masks)
    are left out. Timings stay in the rows: runs share machines, so they are no benchmark."""
    if not summary:
        raise ValueError("format_table needs at least one method in summary; got an empty summary "
                         "(no rows scored: all skipped or none run)")
    metrics = _columns(summary)
    best = {}
    for metric in metrics:
        means = {m: s[metric][0] for m, s in summary.items() if s[metric][2] > 0}
        best[metric] = (min if metric in LOWER_IS_BETTER else max)(means, key=means.get)
    lines = ["| method | n | " + " | ".join(HEADERS[m] for m in metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
    for method, stats in summary.items():
        n = stats["deletion"][2]
        cells = []
        for metric in metrics:
            mean, se, k = stats[metric]
            cell = "–" if k == 0 else f"{mean * scale:.2f} ± {se * scale:.2f}"
            cell = f"**{cell}**" if best.get(metric) == method else cell
            cells.append(cell + (f" (n={k})" if k not in (0, n) else ""))
        lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_csv(summary: Mapping[str, Mapping[str, tuple[float, float, int]]], scale: float = 100.0) -> str:
    """The same table as CSV: ``method`` then ``<metric>_mean``, ``<metric>_se``, ``<metric>_n`` (× scale)."""
    if not summary:
        raise ValueError("format_csv needs at least one method in summary; got an empty summary")
    metrics = _columns(summary)
    header = ["method"] + [f"{m}_{k}" for m in metrics for k in ("mean", "se", "n")]
    lines = [",".join(header)]
    for method, stats in summary.items():
        cells = [method]
        for m in metrics:
            mean, se, n = stats[m]
            cells += [f"{mean * scale:.4f}", f"{se * scale:.4f}", str(n)]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
