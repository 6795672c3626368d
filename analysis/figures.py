"""Figures of the paper's analyses: attention grouping (Fig. 6), cumulative layer sweep (Fig. 7), blank and
selection ablations (Figs. 4-5), mean deletion/insertion curves (Figs. 8-9) and a gallery of maps.

Both layer figures use the same x-axis: the 0-based block index ``l`` of ``blocks.{l}`` (see
``analysis.grouping``), with CAAP's default cutoff ``ceil(2L/3)`` (``caap.default_layers``) marked.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from jaxtyping import Float
from torch import Tensor

from analysis.grouping import Grouping

GROUPING_AXIS = "block l (0-based; attention of blocks.l)"
SWEEP_AXIS = "last patched block l_e (0-based; blocks 0..l_e patched)"
REGION_COLORS = {"intra": "tab:blue", "inter": "tab:orange", "background": "tab:green"}
REGION_LABELS = {"intra": "intra-object", "inter": "inter-object", "background": "object-to-background"}
METRIC_TITLES = {"deletion": "Deletion ↓", "insertion": "Insertion ↑", "ins_del": "Ins−Del ↑", "aupr1": "AUPR₁ ↑",
                 "aupr0": "AUPR₀ ↑", "pointing_game": "Pointing Game ↑"}


def _mark_cutoff(ax, cutoff: int | None):
    if cutoff is not None:
        ax.axvline(cutoff, color="grey", linestyle="--", linewidth=1, label=f"⌈2L/3⌉ = {cutoff}")


def _head_mean(x: Tensor) -> np.ndarray:
    x = x.float()
    return (x.nanmean(-1) if x.ndim == 2 else x).numpy()


def plot_grouping(grouping: Grouping, cutoff: int | None = None, title: str = ""):
    """Left: mean (± SE over images) intra-object, inter-object and object-to-background attention per block
    (Fig. 6; curves with no defined value, e.g. inter-object on single-object images, are omitted). Right: the
    grouping score intra − extra of Sec. 3.2. Per-head results are averaged over heads for drawing."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    layers = np.arange(grouping.n_layers)
    for key in ("intra", "inter", "background"):
        if key not in grouping.per_image or int(grouping.n(key).min()) == 0:
            continue
        mean, se = _head_mean(grouping.mean(key)), _head_mean(grouping.se(key))
        n = int(grouping.n(key).flatten()[0])
        left.plot(layers, mean, marker="o", color=REGION_COLORS[key], label=f"{REGION_LABELS[key]} (n={n})")
        left.fill_between(layers, mean - se, mean + se, color=REGION_COLORS[key], alpha=0.25)
    mean, se = _head_mean(grouping.mean("score")), _head_mean(grouping.se("score"))
    right.plot(layers, mean, marker="o", color="black", label="intra − extra")
    right.fill_between(layers, mean - se, mean + se, color="black", alpha=0.2)
    norm = "renormalized over patch tokens (Eq. 5)" if grouping.renormalize else "softmax over all tokens"
    left.set_ylabel(f"mean attention weight\n({norm})")
    right.set_ylabel("grouping score E[α | O] − E[α | not O]")
    for ax in (left, right):
        _mark_cutoff(ax, cutoff)
        ax.set_xlabel(GROUPING_AXIS)
        ax.set_xticks(layers)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_layer_sweep(summary: Mapping[str, Mapping[str, tuple[float, float, int]]], cutoff: int | None = None,
                     title: str = "", metrics: Sequence[str] = ("deletion", "insertion", "ins_del", "aupr1", "aupr0",
                                                                "pointing_game")):
    """One panel per metric (mean ± SE) against the last patched block; ``summary`` keys are ``"0..end"``."""
    import matplotlib.pyplot as plt

    ends = [int(name.split("..")[1]) for name in summary]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        means = [summary[name][metric][0] for name in summary]
        sems = [summary[name][metric][1] for name in summary]
        ax.errorbar(ends, means, yerr=sems, marker="o", capsize=2)
        ax.set_xticks(ends)
        _mark_cutoff(ax, cutoff)
        ax.set_title(METRIC_TITLES.get(metric, metric))
        ax.set_xlabel(SWEEP_AXIS, fontsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_ablation(summary: Mapping[str, Mapping[str, tuple[float, float, int]]], title: str = "",
                  metrics: Sequence[str] = ("insertion", "deletion", "ins_del", "pointing_game", "aupr1", "aupr0")):
    """Figs. 4-5: one panel per metric, one bar (mean ± SE) per variant, in ``summary``'s order."""
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.2), squeeze=False)
    colors = [f"C{i}" for i in range(len(names))]
    for ax, metric in zip(axes[0], metrics):
        means = [summary[n][metric][0] for n in names]
        sems = [float(np.nan_to_num(summary[n][metric][1])) for n in names]  # n = 1: no SE
        ax.bar(range(len(names)), means, yerr=sems, color=colors, capsize=2)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=9)
        lo = min(m - s for m, s in zip(means, sems))
        hi = max(m + s for m, s in zip(means, sems))
        pad = 0.15 * (hi - lo) if hi > lo else 0.05
        ax.set_ylim(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(curves: Mapping[str, Mapping[str, Float[np.ndarray, "n steps"]]], title: str = ""):
    """Figs. 8-9: mean (± SE) target-class probability against the fraction of pixels inserted / deleted, one
    line per method. ``curves[method][mode]`` is ``[n_images, n_steps + 1]``."""
    import matplotlib.pyplot as plt

    n = len(curves)
    below = n > 6  # a long legend inside the axes would hide the curves: put it under them, two columns
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6 + (0.12 * n if below else 0)))
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20")  # distinct colours up to 20 methods
    for ax, mode in zip(axes, ("insertion", "deletion")):
        for i, (method, per_mode) in enumerate(curves.items()):
            c = np.asarray(per_mode[mode], dtype=float)
            x = np.linspace(0, 1, c.shape[1])
            mean, se = c.mean(0), c.std(0) / np.sqrt(c.shape[0])
            auc = float(np.trapezoid(mean, x)) if hasattr(np, "trapezoid") else float(np.trapz(mean, x))
            color, style = colors(i % colors.N), ("-", "--", ":")[(i // colors.N) % 3]
            ax.plot(x, mean, color=color, linestyle=style, label=f"{method} ({auc:.3f}, n={c.shape[0]})")
            ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.15)
        ax.set_xlabel(f"fraction of pixels {'inserted' if mode == 'insertion' else 'deleted'}")
        ax.set_ylabel("probability of the explained class")
        ax.set_title(f"{mode.capitalize()} {'↑' if mode == 'insertion' else '↓'} (AUC of the mean curve)", fontsize=9)
        if below:
            ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
        else:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_gallery(images: Float[np.ndarray, "n H W 3"], masks: Sequence[np.ndarray | None],
                 maps: Mapping[str, Float[Tensor, "n h w"]], row_titles: Sequence[str] | None = None,
                 size: float = 2.3):
    """One row per image: the image with its mask outline, then every method's map (min-max normalized) over the
    image with the same outline."""
    import matplotlib.pyplot as plt

    from caap.plot import overlay

    n_rows, n_cols = len(images), len(maps) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
    for r in range(n_rows):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_axis_off()
        axes[r, 0].set_title(row_titles[r] if row_titles else "image", fontsize=8)
        for c, (name, m) in enumerate(maps.items(), start=1):
            overlay(images[r], m[r], axes[r, c], title=name if r == 0 else None)
        if masks[r] is not None and np.asarray(masks[r]).any():
            for ax in axes[r]:
                ax.contour(np.asarray(masks[r], dtype=float), levels=[0.5], colors="white", linewidths=1.2)
    fig.tight_layout()
    return fig
