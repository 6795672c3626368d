"""Readouts: map the patched model's output ``[batch, K, n_out]`` to a score ``[batch, K]``.

A readout must act independently on each intervention (engines call it on chunks of K).
"""
from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

Readout = Callable[[Float[Tensor, "batch K n_out"]], Float[Tensor, "batch K"]]


class ClassScore:
    """The logit (``kind="logit"``) or softmax probability (``kind="prob"``) of one class per image."""

    def __init__(self, target: Int[Tensor, "batch"], kind: str = "logit"):
        if kind not in ("logit", "prob"):
            raise ValueError(f"kind must be 'logit' or 'prob'; got {kind!r}")
        self.target, self.kind = target, kind

    def __call__(self, output: Float[Tensor, "batch K n_out"]) -> Float[Tensor, "batch K"]:
        if output.ndim != 3:
            raise ValueError(f"readout expects output of shape [batch, K, n_out]; got {tuple(output.shape)}")
        n_out = output.shape[-1]
        if int(self.target.min()) < 0 or int(self.target.max()) >= n_out:
            raise ValueError(f"target classes must be in [0, {n_out}); got {self.target.tolist()}")
        scores = output.softmax(-1) if self.kind == "prob" else output
        index = self.target.to(output.device).view(-1, 1, 1).expand(-1, output.shape[1], 1)
        return scores.gather(-1, index).squeeze(-1)
