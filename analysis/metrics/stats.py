"""Summary statistics shared by the metric tables."""
from __future__ import annotations

import math

import numpy as np


def standard_error(values) -> float:
    """The paper's standard error: population SD / sqrt(n) (``ddof = 0``; it prints 50.00 +- 4.42 for a
    Pointing Game of 64 hits in 128 images, which ``ddof = 1`` would make 4.44). NaN for n = 0."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=0) / math.sqrt(len(v))) if len(v) else float("nan")
