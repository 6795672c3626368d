"""Figures of the paper's analyses: attention grouping per layer, cumulative layer sweeps."""
from __future__ import annotations

from typing import Mapping

from jaxtyping import Float
from torch import Tensor

from analysis.evaluate import METRICS


def plot_grouping(grouping: Mapping[str, Float[Tensor, "sample layer"]], title: str = ""):
    """Mean (± standard error) intra- and extra-object attention, and their difference, per layer."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, keys in ((left, ("intra", "extra")), (right, ("diff",))):
        for key in keys:
            values = grouping[key]
            mean, sem = values.mean(0), values.std(0) / max(values.shape[0], 1) ** 0.5
            layers = range(values.shape[1])
            ax.plot(layers, mean, marker="o", label=key)
            ax.fill_between(layers, mean - sem, mean + sem, alpha=0.25)
        ax.set_xlabel("layer")
        ax.legend()
    left.set_ylabel("mean attention from object patches")
    right.set_ylabel("intra - extra")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_layer_sweep(summary: Mapping[str, Mapping[str, tuple[float, float, int]]], title: str = ""):
    """One panel per metric against the last patched block; ``summary`` keys are ``"0..end"``."""
    import matplotlib.pyplot as plt

    ends = [int(name.split("..")[1]) for name in summary]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3 * len(METRICS), 3))
    for ax, metric in zip(axes, METRICS):
        means = [summary[name][metric][0] for name in summary]
        sems = [summary[name][metric][1] for name in summary]
        ax.errorbar(ends, means, yerr=sems, marker="o", capsize=2)
        ax.set_title(metric)
        ax.set_xlabel("last patched block")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
