"""One batched masking engine: score a classifier on many masked copies of one image.

Every perturbation method (Simple Insertion/Deletion, RISE, ViT-CX, Occlusion, MDA) and the
Deletion/Insertion metric curves evaluate ``model(reference + mask * (image - reference))`` for K masks
(mask 1 keeps the image, 0 shows the reference). This module does it once: masks are applied in
batches sized by a memory budget, under ``torch.inference_mode``, on the model's device and dtype.
Masks may be a tensor or produced lazily chunk by chunk (``masks(lo, hi)``), so thousands of
full-resolution masks never sit in memory at once.

The model only needs ``model(x) -> [n, n_out]``; a HookedViT's config gives the per-sample memory
estimate, any other ``nn.Module`` gets :data:`DEFAULT_PER_SAMPLE_BYTES`.
"""
from __future__ import annotations

from typing import Callable, Iterator, Union

import torch
from einops import reduce
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

DEFAULT_MEMORY_BUDGET_GB = 1.0
DEFAULT_PER_SAMPLE_BYTES = 64 * 2**20  # models without a ViT config (e.g. CNNs): 64 MiB per forward sample
# On CPU a large batch is *slower* per image (cache misses in the big matmuls): ViT-S/14 at 224 px on the
# 2-core dev machine ran 72 ms/img at 16 vs 89-101 ms/img at 108 (`python benchmarks/bench_cpu_batch.py`).
# GPUs are not capped: there the memory budget alone sets the batch.
CPU_MAX_BATCH = 16

MaskChunks = Callable[[int, int], Tensor]  # (lo, hi) -> masks[lo:hi], [hi - lo, (1,) h, w]
Masks = Union[Tensor, MaskChunks]
Score = Union[str, Callable[[Tensor], Tensor]]


def _param(model) -> Tensor:
    try:
        return next(model.parameters())
    except StopIteration:  # parameter-free modules run on CPU in float32
        return torch.zeros(())


def per_sample_bytes(model) -> int:
    """Peak activation bytes of one sample's forward. For a ViT config: tokens × (qkv + residual +
    attention output ≈ 6·d_model, MLP hidden before/after activation 2·d_mlp, attention scores and
    pattern 2·heads·tokens) × element size, plus the input image twice (perturbed copy and its source)."""
    cfg = getattr(model, "cfg", None)
    needed = ("n_tokens", "d_model", "d_mlp", "n_heads", "image_size", "in_chans")
    if cfg is None or not all(hasattr(cfg, a) for a in needed):
        return DEFAULT_PER_SAMPLE_BYTES
    elem = _param(model).element_size()
    t = cfg.n_tokens
    per_token = 6 * cfg.d_model + 2 * cfg.d_mlp + 2 * cfg.n_heads * t
    image = 2 * cfg.in_chans * cfg.image_size[0] * cfg.image_size[1]
    return elem * (t * per_token + image)


def batch_size_for(model, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> int:
    """How many perturbed copies fit into one forward within ``memory_budget_gb`` (at least 1), at most
    :data:`CPU_MAX_BATCH` on CPU, where larger batches cost more per image."""
    if not memory_budget_gb > 0:
        raise ValueError(f"memory_budget_gb must be > 0; got {memory_budget_gb!r}")
    fits = max(1, int(memory_budget_gb * 2**30 // per_sample_bytes(model)))
    return min(fits, CPU_MAX_BATCH) if _param(model).device.type == "cpu" else fits


def _readout(kind: Score, target) -> Callable[[Tensor], Tensor]:
    if callable(kind):
        return kind
    if kind not in ("prob", "logit"):
        raise ValueError(f"kind must be 'prob', 'logit' or a callable on the output [n, n_out]; got {kind!r}")
    if target is None:
        raise ValueError("target must be a class index (int or 0-d tensor) when kind is 'prob' or 'logit'; got None")
    target = int(torch.as_tensor(target).reshape(-1)[0]) if torch.as_tensor(target).numel() == 1 else None
    if target is None:
        raise ValueError("target must be a single class index for one image")

    def read(output: Tensor) -> Tensor:
        if not 0 <= target < output.shape[-1]:
            raise ValueError(f"target must be in [0, {output.shape[-1]}); got {target}")
        out = output.float().softmax(-1) if kind == "prob" else output
        return out[:, target]

    return read


def _check(image: Tensor, masks: Masks, reference: Tensor, n_masks: int | None) -> int:
    if not isinstance(image, Tensor) or image.ndim != 3:
        raise ValueError(f"image must be a [chan, height, width] tensor; got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    c, h, w = image.shape
    if not isinstance(reference, Tensor) or reference.shape[-3:] != (c, h, w) or reference.ndim not in (3, 4):
        raise ValueError(f"reference must be a [{c}, {h}, {w}] or [k, {c}, {h}, {w}] tensor; got "
                         f"{tuple(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__}")
    if isinstance(masks, Tensor):
        if not ((masks.ndim == 3 and masks.shape[1:] == (h, w)) or (masks.ndim == 4 and masks.shape[1:] == (1, h, w))):
            raise ValueError(f"masks must have shape [k, {h}, {w}] or [k, 1, {h}, {w}]; got {tuple(masks.shape)}")
        if n_masks is not None and n_masks != masks.shape[0]:
            raise ValueError(f"n_masks={n_masks} but masks holds {masks.shape[0]}")
        n_masks = masks.shape[0]
    elif callable(masks):
        if not isinstance(n_masks, int) or n_masks < 0:
            raise ValueError(f"n_masks must be a non-negative int when masks is a callable (lo, hi) -> chunk; "
                             f"got {n_masks!r}")
    else:
        raise TypeError(f"masks must be a tensor or a callable (lo, hi) -> masks[lo:hi]; got {type(masks).__name__}")
    if reference.ndim == 4 and reference.shape[0] != n_masks:
        raise ValueError(f"reference has {reference.shape[0]} images but there are {n_masks} masks")
    return n_masks


@torch.inference_mode()
def iter_batched_outputs(model, n_inputs: int, inputs: Callable[[int, int], Tensor], *,
                         memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, batch_size: int | None = None,
                         progress: bool = False, desc: str = "masked forwards",
                         ) -> Iterator[tuple[int, int, Float[Tensor, "n n_out"]]]:
    """The engine's loop: ``model(inputs(lo, hi))`` for consecutive chunks of ``n_inputs`` perturbed
    copies (``batch_size``, default :func:`batch_size_for` the ``memory_budget_gb``), under
    ``torch.inference_mode``, one progress bar. ``inputs`` builds each chunk on demand on the model's
    device and dtype, so copies of several images (the metric curves) share batches."""
    if batch_size is None:
        batch_size = batch_size_for(model, memory_budget_gb)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
    with tqdm(total=n_inputs, disable=not progress, desc=desc) as bar:
        for lo in range(0, n_inputs, batch_size):
            hi = min(lo + batch_size, n_inputs)
            yield lo, hi, model(inputs(lo, hi))
            bar.update(hi - lo)


@torch.inference_mode()
def iter_masked_scores(model, image: Float[Tensor, "chan h w"], masks: Masks,
                       reference: Float[Tensor, "chan h w"] | Float[Tensor, "k chan h w"], target: int | Tensor | None,
                       *, kind: Score = "prob", n_masks: int | None = None,
                       memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, batch_size: int | None = None,
                       progress: bool = False, desc: str = "masked forwards",
                       ) -> Iterator[tuple[int, int, Float[Tensor, "n 1 h w"], Float[Tensor, "n"]]]:
    """Yield ``(lo, hi, masks[lo:hi], scores[lo:hi])`` chunk by chunk (masks on the model's device and
    dtype), so callers can accumulate mask-weighted sums without keeping every mask. Arguments as in
    :func:`masked_scores`."""
    n_masks = _check(image, masks, reference, n_masks)
    read = _readout(kind, target)
    param = _param(model)
    image = image.to(param.device, param.dtype)
    reference = reference.to(param.device, param.dtype)
    if hasattr(model, "check_images"):
        model.check_images(image[None], name="image")
    chunks: dict[int, Tensor] = {}

    def inputs(lo: int, hi: int) -> Tensor:
        chunk = masks[lo:hi] if isinstance(masks, Tensor) else masks(lo, hi)
        if chunk.ndim == 3:
            chunk = chunk[:, None]
        if chunk.shape != (hi - lo, 1, *image.shape[1:]):
            raise ValueError(f"masks({lo}, {hi}) must return [{hi - lo}, (1,) {image.shape[1]}, "
                             f"{image.shape[2]}]; got {tuple(chunk.shape)}")
        chunks[lo] = chunk = chunk.to(param.device, param.dtype)
        ref = reference[lo:hi] if reference.ndim == 4 else reference
        return ref + chunk * (image - ref)

    for lo, hi, output in iter_batched_outputs(model, n_masks, inputs, memory_budget_gb=memory_budget_gb,
                                               batch_size=batch_size, progress=progress, desc=desc):
        scores = read(output)
        if scores.shape != (hi - lo,):
            raise ValueError(f"the score must give one value per masked copy ({hi - lo}); got shape "
                             f"{tuple(scores.shape)}")
        yield lo, hi, chunks.pop(lo), scores


def masked_scores(model, image: Float[Tensor, "chan h w"], masks: Masks,
                  reference: Float[Tensor, "chan h w"] | Float[Tensor, "k chan h w"], target: int | Tensor | None,
                  *, kind: Score = "prob", n_masks: int | None = None,
                  memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, batch_size: int | None = None,
                  progress: bool = False, desc: str = "masked forwards") -> Float[Tensor, "k"]:
    """Score of ``target`` on ``reference + masks * (image - reference)`` for every mask.

    ``masks``: ``[k, h, w]`` / ``[k, 1, h, w]`` (1 = image, 0 = reference, fractional values blend), or a
    callable ``(lo, hi) -> masks[lo:hi]`` with ``n_masks``. ``reference``: one image or one per mask.
    ``kind``: ``"prob"`` (softmax), ``"logit"``, or a callable ``output [n, n_out] -> [n]`` (then
    ``target`` may be None). Batches of ``batch_size`` copies, default :func:`batch_size_for` the
    ``memory_budget_gb``. Cost: k forwards. Returns a float32 tensor on the model's device (a normal
    tensor, usable outside inference mode).
    """
    parts = [s for *_, s in iter_masked_scores(model, image, masks, reference, target, kind=kind, n_masks=n_masks,
                                               memory_budget_gb=memory_budget_gb, batch_size=batch_size,
                                               progress=progress, desc=desc)]
    if not parts:
        return torch.empty(0, device=_param(model).device)
    return torch.cat(parts).float().clone()


def patch_average(model, pixel_maps: Float[Tensor, "batch h w"]) -> Float[Tensor, "batch grid_h grid_w"]:
    """Average a pixel-level map over each patch cell of the model's grid (the registry's patch-level
    output for pixel-level methods such as RISE, ViT-CX and Occlusion)."""
    (gh, gw), (ph, pw) = model.cfg.grid_size, model.cfg.patch_size
    if pixel_maps.shape[-2:] != (gh * ph, gw * pw):
        raise ValueError(f"pixel maps must be [batch, {gh * ph}, {gw * pw}]; got {tuple(pixel_maps.shape)}")
    return reduce(pixel_maps, "b (gh ph) (gw pw) -> b gh gw", "mean", ph=ph, pw=pw)
