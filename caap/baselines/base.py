"""What several baselines share: the input checks and gradient context of the gradient methods, and the
patch-level view of the pixel-level perturbation methods."""
from __future__ import annotations

from typing import Callable, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap.masking import patch_average
from caap.targets import check_score as _check_score
from caap.targets import refuse_target_with_callable, require_classifier, resolve_targets
from caap.validation import check_method_images

# "logit" / "prob": the explained class's logit or softmax probability; a callable maps the model's output
# [batch, n_out] (logits, or the embedding of a headless model) to one differentiable score per image [batch].
GradientScore = Union[str, Callable[[Tensor], Tensor]]


def check_score(score) -> GradientScore:
    return _check_score(score, "the output [batch, n_out] to [batch]")


class GradientMethod:
    """Base of methods that need one backward: ``attribute`` checks the images, moves them to the model's
    device and runs ``_attribute(images, target)`` with gradients on, also when the caller is under
    ``torch.inference_mode`` (the copy is a normal tensor, so the weights may stay frozen).

    ``score`` (see :data:`GradientScore`) says what is explained. A callable explains any scalar of the
    output, e.g. the cosine to a text embedding on a headless CLIP tower (pytorch-grad-cam's custom
    targets); ``target`` must then be None. The predicted class is read from the same forward that is
    differentiated, so ``target=None`` costs no extra forward."""

    model: torch.nn.Module
    score: GradientScore = "logit"

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        check_method_images(self.model, images)
        refuse_target_with_callable(self.score, target)
        if not callable(self.score):
            require_classifier(self.model)
        with torch.inference_mode(False), torch.enable_grad():
            return self._attribute(images.to(next(self.model.parameters()).device).clone(), target)

    def explained_score(self, output: Float[Tensor, "batch n_out"], images: Tensor,
                        target) -> Float[Tensor, "batch"]:
        """The differentiable score per image whose gradient the method takes."""
        if callable(self.score):
            scores = self.score(output)
            if not isinstance(scores, Tensor) or scores.shape != output.shape[:1]:
                raise ValueError(f"score callable {getattr(self.score, '__name__', self.score)!r} must return one "
                                 f"score per image, shape [{output.shape[0]}]; got "
                                 f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}")
            return scores
        targets = output.detach().argmax(-1) if target is None else resolve_targets(self.model, images, target)
        values = output.softmax(-1) if self.score == "prob" else output
        return values.gather(1, targets[:, None])[:, 0]

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
