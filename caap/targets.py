"""Resolve the class to explain for each image."""
from __future__ import annotations

import numbers

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap.validation import check_method_images
from vit_lens.patching.readouts import KINDS

ALLOWED = "None (the predicted class), an int class index, or one int class index per image"


def _as_class_tensor(target) -> Tensor:
    """Integer class indices as a long tensor; floats (3.7 would silently become 3), bools, strings and NaN
    are refused."""
    if isinstance(target, bool) or isinstance(target, (str, bytes)):
        raise TypeError(f"target must be {ALLOWED}; got {target!r} ({type(target).__name__})")
    if isinstance(target, numbers.Integral):
        return torch.tensor([int(target)], dtype=torch.long)
    if isinstance(target, numbers.Number):
        raise TypeError(f"target must be {ALLOWED}; got {target!r} ({type(target).__name__}): class indices "
                        f"are integers")
    try:
        tensor = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"target must be {ALLOWED}; got {type(target).__name__} {target!r}") from err
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"target must hold integer class indices; got dtype {tensor.dtype} "
                        f"({tensor.reshape(-1)[:8].tolist()}{' ...' if tensor.numel() > 8 else ''})")
    return tensor.reshape(-1).long()


SCORES = ("logit", "prob")
# CAAP's class readouts by name (formulas: vit_lens.patching.readouts): every patching engine reads them the
# same way. The other methods take SCORES only (their own readouts know no other name).
READOUTS = KINDS


def check_score(score, callable_maps: str, allowed: tuple[str, ...] = SCORES):
    """``score`` is one of ``allowed`` (default ``"logit"``, ``"prob"``) or a callable (``callable_maps`` says
    its shapes, for the message)."""
    if callable(score) or (isinstance(score, str) and score in allowed):
        return score
    raise ValueError(f"score must be one of {allowed} or a callable mapping {callable_maps}; got {score!r}")


def require_classifier(model) -> None:
    """Refuse class targets on a headless model: its output is an embedding, whose arg-max is no class."""
    if model.cfg.num_classes == 0:
        raise ValueError("this model has no classifier head (num_classes=0): pass score=<callable on the "
                         "output embedding> instead of a class target")
    if getattr(model.cfg, "head_output", "logits") == "embedding":
        raise ValueError(f"this model outputs a {model.cfg.num_classes}-dimensional embedding (a CLIP projection), "
                         f"not class logits: pass score=<callable on the embedding> (e.g. the cosine to a text "
                         f"embedding) instead of a class target")


def refuse_target_with_callable(score, target) -> None:
    """A callable score decides what is explained; a class target beside it would be silently ignored."""
    if callable(score) and target is not None:
        raise ValueError(f"target must be None when score is a callable (the callable decides what is "
                         f"explained); got target={target!r}")


def resolve_targets(model, images: Float[Tensor, "batch chan height width"],
                    target: int | Tensor | None) -> Int[Tensor, "batch"]:
    """None -> the predicted class; an int -> that class for every image; a tensor/sequence of ints -> one
    class per image."""
    require_classifier(model)
    n_classes, batch = model.cfg.num_classes, images.shape[0]
    if target is None:
        with torch.no_grad():  # not inference_mode: Grad-CAM differentiates through a gather on it
            return model(images).argmax(-1)
    return class_targets(target, batch, n_classes).to(images.device)


def class_targets(target, batch: int, n_classes: int | None) -> Int[Tensor, "batch"]:
    """The one check of an explicit class target (methods and metrics alike): an int, or one int per image,
    each in ``[0, n_classes)`` (no range check when ``n_classes`` is None). Floats (2.9 would silently be
    class 2), bools (True would be class 1), strings and NaN are refused. Returns a long tensor ``[batch]``."""
    target = _as_class_tensor(target)
    if target.numel() == 1 and batch > 1:
        target = target.expand(batch)
    if target.shape != (batch,):
        raise ValueError(f"target must be an int or one class per image (shape [{batch}]); got shape "
                         f"{tuple(target.shape)}")
    if n_classes is not None and batch and (int(target.min()) < 0 or int(target.max()) >= n_classes):
        raise ValueError(f"target must be in [0, {n_classes}); got {target.tolist()} (class indices of a "
                         f"{n_classes}-class model)")
    return target


def prepare_inputs(model, images: Float[Tensor, "batch chan height width"],
                   target: int | Tensor | None) -> tuple[Float[Tensor, "batch chan height width"], Int[Tensor, "batch"]]:
    """The common start of every method: check the images (shape, dtype, finite pixels, a non-empty batch),
    move them to the model's device and resolve one class per image (:func:`resolve_targets`)."""
    check_method_images(model, images)
    images = images.to(next(model.parameters()).device)
    return images, resolve_targets(model, images, target)
