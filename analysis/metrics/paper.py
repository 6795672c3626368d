"""The paper's four metrics as registry entries (Sec. 4.1). They are scored together, one row per (image,
method), by :func:`analysis.evaluate.score_attributions`: Deletion and Insertion are one batched stream on
the masking engine (2 × points forwards per image, 450 at 224 px under RISE's protocol), AUPR and the
Pointing Game need only the mask (no forwards). ``score`` is therefore None here."""
from __future__ import annotations

from analysis.metrics.registry import Metric


def deletion() -> Metric:
    return Metric("deletion", {"deletion": "Del ↓"}, frozenset({"deletion"}))


def insertion() -> Metric:
    return Metric("insertion", {"insertion": "Ins ↑", "ins_del": "Ins−Del ↑"})


def aupr_metric() -> Metric:
    return Metric("aupr", {"aupr1": "AUPR₁ ↑", "aupr0": "AUPR₀ ↑"}, needs_mask=True)


def pointing_game_metric() -> Metric:
    return Metric("pointing-game", {"pointing_game": "PG ↑"}, needs_mask=True)
