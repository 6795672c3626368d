"""Readouts: map the patched model's output ``[batch, K, n_out]`` to a score ``[batch, K]``.

A readout must act independently on each intervention (engines call it on chunks of K), so every engine
(loop, parallel, efficient) gives the same map for the same readout. The class readouts by name, with
``z`` the logits of one forward (one image, one intervention) and ``t`` the explained class:

- ``"logit"``: ``z_t`` (the paper, Sec. 3).
- ``"prob"``: ``softmax(z)_t``.
- ``"logit-diff"``: ``z_t - mean_{j != t} z_j`` (the target logit against the mean of the other classes:
  evidence that raises every logit, e.g. objectness, cancels).
- ``"logit-margin"``: ``z_t - max_{j != t} z_j``: the runner-up is the highest OTHER logit of the same
  forward (recomputed per intervention, so it may be a different class for each patch); negative when
  another class wins.
- ``"log-prob"``: ``log_softmax(z)_t = z_t - logsumexp(z)`` (computed stably, never ``log(prob)``).
"""
from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

Readout = Callable[[Float[Tensor, "batch K n_out"]], Float[Tensor, "batch K"]]
KINDS = ("logit", "prob", "logit-diff", "logit-margin", "log-prob")
CONTRASTIVE = ("logit-diff", "logit-margin")  # need another class to compare with


def class_score(output: Float[Tensor, "*lead n_out"], target: Int[Tensor, "*lead"],
                kind: str = "logit") -> Float[Tensor, "*lead"]:
    """The readout ``kind`` (see the module docstring) of class ``target[...]`` in ``output[..., :]``;
    ``target`` has the leading shape of ``output`` (broadcast first if it is per image). Cost: O(n_out)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    n_out = output.shape[-1]
    if kind in CONTRASTIVE and n_out < 2:
        raise ValueError(f"readout {kind!r} compares the target with the other classes; the output has {n_out}")
    index = target[..., None]
    if kind == "prob":
        return output.softmax(-1).gather(-1, index)[..., 0]
    if kind == "log-prob":
        return output.log_softmax(-1).gather(-1, index)[..., 0]
    own = output.gather(-1, index)[..., 0]
    if kind == "logit":
        return own
    if kind == "logit-diff":
        return own - (output.sum(-1) - own) / (n_out - 1)
    others = output.scatter(-1, index, float("-inf"))  # logit-margin: the runner-up among j != t
    return own - others.amax(-1)


class ClassScore:
    """One class readout (``kind``, one of :data:`KINDS`) of one class per image."""

    def __init__(self, target: Int[Tensor, "batch"], kind: str = "logit"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        self.target, self.kind = target, kind

    def __call__(self, output: Float[Tensor, "batch K n_out"]) -> Float[Tensor, "batch K"]:
        if output.ndim != 3:
            raise ValueError(f"readout expects output of shape [batch, K, n_out]; got {tuple(output.shape)}")
        n_out = output.shape[-1]
        if int(self.target.min()) < 0 or int(self.target.max()) >= n_out:
            raise ValueError(f"target classes must be in [0, {n_out}); got {self.target.tolist()}")
        index = self.target.to(output.device)
        if index.is_inference() and not torch.is_inference_mode_enabled():  # built under inference_mode, read
            index = index.clone()  # in a graph (attribution patching): a normal copy may be saved for backward
        index = index.view(-1, 1).expand(-1, output.shape[1])
        return class_score(output, index, self.kind)
