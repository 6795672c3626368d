"""Grad-CAM (Selvaraju et al., ICCV 2017) on the tokens entering the last block's attention.

Cost: one forward and one backward per batch. Verified equal to pytorch-grad-cam's ``GradCAM`` with a
ViT reshape transform.
"""
from __future__ import annotations

import torch

from caap.baselines.base import GradientMethod, GradientScore, check_score
from caap.validation import check_int


class GradCAM(GradientMethod):
    """Grad-CAM on the tokens entering the last block's attention (``blocks.{L-1}.ln1.hook_normalized``):
    channel weights are the patch-averaged gradients of the explained score; one forward + one backward.
    ``score``: the class logit (default, as pytorch-grad-cam's ``ClassifierOutputTarget``), ``"prob"``, or a
    callable on the output ``[batch, n_out] -> [batch]`` (its custom targets; needed for headless models)."""

    def __init__(self, model, layer: int | None = None, score: GradientScore = "logit"):
        self.model, self.score = model, check_score(score)
        layer = check_int(layer, "layer", low=0, high=model.cfg.n_layers - 1, none_ok=True)
        self.hook_name = f"blocks.{model.cfg.n_layers - 1 if layer is None else layer}.ln1.hook_normalized"

    def _attribute(self, images, target):
        model, n_pre = self.model, self.model.cfg.n_prefix_tokens
        stored = {}

        def keep(act, hook):  # a leaf when the weights are frozen, so the gradient always exists
            stored["a"] = act if act.requires_grad else act.detach().requires_grad_()
            return stored["a"]

        with model.hooks(fwd_hooks=[(self.hook_name, keep)]):
            logits = model(images)
            acts = stored["a"]
            grads = torch.autograd.grad(self.explained_score(logits, images, target).sum(), acts)[0]
        acts, grads = acts[:, n_pre:].detach(), grads[:, n_pre:]
        cam = torch.relu((acts * grads.mean(1, keepdim=True)).sum(-1))
        return model.layout.to_grid(cam)
