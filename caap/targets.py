"""Resolve the class to explain for each image."""
from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def resolve_targets(model, images: Float[Tensor, "batch chan height width"],
                    target: int | Tensor | None) -> Int[Tensor, "batch"]:
    """None -> the predicted class; an int -> that class for every image; a tensor -> one class per image."""
    n_classes, batch = model.cfg.num_classes, images.shape[0]
    if n_classes == 0:
        raise ValueError("this model has no classifier head (num_classes=0): pass score=<callable on the "
                         "output embedding> instead of a class target")
    if target is None:
        with torch.no_grad():  # not inference_mode: Grad-CAM differentiates through a gather on it
            return model(images).argmax(-1)
    if isinstance(target, int):
        target = torch.full((batch,), target, dtype=torch.long)
    target = torch.as_tensor(target).reshape(-1).long()
    if target.numel() == 1 and batch > 1:
        target = target.expand(batch)
    if target.shape != (batch,):
        raise ValueError(f"target must be None, an int or one class per image (shape [{batch}]); got shape "
                         f"{tuple(target.shape)}")
    if int(target.min()) < 0 or int(target.max()) >= n_classes:
        raise ValueError(f"target classes must be in [0, {n_classes}); got {target.tolist()}")
    return target.to(images.device)
