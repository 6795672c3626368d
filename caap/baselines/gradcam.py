"""Grad-CAM (Selvaraju et al., ICCV 2017) on the tokens entering the last block's attention.

Cost: one forward and one backward per batch. Verified equal to pytorch-grad-cam's ``GradCAM`` with a
ViT reshape transform.
"""
from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap.targets import resolve_targets


class GradCAM:
    """Grad-CAM on the tokens entering the last block's attention (``blocks.{L-1}.ln1.hook_normalized``):
    channel weights are the patch-averaged gradients of the class score; one forward + one backward."""

    def __init__(self, model, layer: int | None = None):
        self.model = model
        self.hook_name = f"blocks.{model.cfg.n_layers - 1 if layer is None else layer}.ln1.hook_normalized"

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        with torch.inference_mode(False), torch.enable_grad():  # also works when called under inference_mode
            return self._attribute(images.to(next(self.model.parameters()).device).clone(), target)

    def _attribute(self, images, target):
        model, n_pre = self.model, self.model.cfg.n_prefix_tokens
        targets = resolve_targets(model, images, target).clone()  # a normal tensor even if target was not
        stored = {}

        def keep(act, hook):  # a leaf when the weights are frozen, so the gradient always exists
            stored["a"] = act if act.requires_grad else act.detach().requires_grad_()
            return stored["a"]

        with model.hooks(fwd_hooks=[(self.hook_name, keep)]):
            logits = model(images)
            acts = stored["a"]
            grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)[0]
        acts, grads = acts[:, n_pre:].detach(), grads[:, n_pre:]
        cam = torch.relu((acts * grads.mean(1, keepdim=True)).sum(-1))
        return model.layout.to_grid(cam)
