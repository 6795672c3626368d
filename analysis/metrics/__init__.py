"""Attribution metrics: the paper's (Sec. 4.1) and the evaluation suite of ``caap bench --metrics``.

One module per metric family behind :mod:`analysis.metrics.registry` (``get_metric(name)``,
``list_metrics()``); the paper's curves (:mod:`.curves`) and localization (:mod:`.localization`) keep their
names importable from ``analysis.metrics``.
"""
from analysis.metrics.curves import (MODES, RISE_BLUR_KLEN, RISE_BLUR_SIGMA, auc, blur, check_finite, curves_for,
                                     perturbation_curves, rise_kernel, step_counts, to_pixels)
from analysis.metrics.localization import aupr, pointing_game
from analysis.metrics.registry import PAPER, Context, Metric, check_metric_names, get_metric, list_metrics, register
from analysis.metrics.stats import standard_error

__all__ = ["MODES", "PAPER", "RISE_BLUR_KLEN", "RISE_BLUR_SIGMA", "Context", "Metric", "auc", "aupr", "blur",
           "check_finite", "check_metric_names", "curves_for", "get_metric", "list_metrics", "perturbation_curves",
           "pointing_game", "register", "rise_kernel", "standard_error", "step_counts", "to_pixels"]
