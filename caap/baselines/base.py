"""What several baselines share: the input checks and gradient context of the gradient methods, and the
patch-level view of the pixel-level perturbation methods."""
from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap.masking import patch_average


def check_batch(images: Tensor) -> None:
    """Refuse an empty batch: the one check ``HookedViT.check_images`` (shape, dtype, NaN/inf pixels), which
    every caller runs first, leaves to the methods."""
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch (shape [0, ...]); pass at least one image")


class GradientMethod:
    """Base of methods that need one backward: ``attribute`` checks the images, moves them to the model's
    device and runs ``_attribute(images, target)`` with gradients on, also when the caller is under
    ``torch.inference_mode`` (the copy is a normal tensor, so the weights may stay frozen)."""

    model: torch.nn.Module

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        self.model.check_images(images)
        check_batch(images)
        with torch.inference_mode(False), torch.enable_grad():
            return self._attribute(images.to(next(self.model.parameters()).device).clone(), target)

    def _attribute(self, images: Tensor, target) -> Tensor:
        raise NotImplementedError


class PixelLevelMethod:
    """Base of methods whose natural output is pixel-level (RISE, ViT-CX, Occlusion): ``attribute_pixels``
    gives ``[batch, H, W]``; ``attribute``, the registry's patch-level map, its mean over each patch cell."""

    model: torch.nn.Module

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        return patch_average(self.model, self.attribute_pixels(images, target))

    def attribute_pixels(self, images: Tensor, target=None) -> Tensor:
        raise NotImplementedError
