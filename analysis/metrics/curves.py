"""The paper's faithfulness curves (Sec. 4.1): Deletion / Insertion AUC, batched on the shared masking engine.

Deletion / Insertion follow RISE's ``CausalMetric`` (Petsiuk et al. 2018, the protocol the paper cites as
[25]), which are this module's named defaults:

* pixels are ranked by the (bilinearly upsampled) map, highest first; ties keep raster order (stable sort);
* ``pixels_per_step`` = the image width (RISE's ``step = 224`` at 224 px: 224 steps, 225 curve points);
* Deletion replaces ranked pixels by 0 *after* normalization (RISE's ``torch.zeros_like`` substrate = the
  dataset mean colour); Insertion starts from the image blurred by RISE's 11x11, sigma = 5 kernel
  (``gkern(11, 5)``: a delta smoothed by scipy's ``gaussian_filter``, applied per channel with zero padding);
* the curve is the softmax probability of the explained class; AUC by the trapezoid rule on [0, 1].

Attribution maps may be patch-level or pixel-level. Every tensor follows the model's device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from caap.masking import DEFAULT_MEMORY_BUDGET_GB, iter_batched_outputs
from caap.targets import class_targets

RISE_BLUR_KLEN = 11
RISE_BLUR_SIGMA = 5.0
MODES = ("deletion", "insertion")


def check_finite(attribution: Tensor, name: str = "attribution") -> None:
    """Refuse NaN/Inf maps: they have no ranking, and sorting would silently put them first or last."""
    if not torch.isfinite(attribution).all():
        bad = int((~torch.isfinite(attribution)).sum())
        raise ValueError(f"{name} holds {bad} NaN/Inf values; attribution maps must be finite")


def to_pixels(attribution: Float[Tensor, "batch h w"], image_size: tuple[int, int]) -> Float[Tensor, "batch H W"]:
    """Bilinear upsampling (``align_corners=False``) of patch-level maps to the image size."""
    if tuple(attribution.shape[-2:]) == tuple(image_size):
        return attribution.float()
    return F.interpolate(attribution[:, None].float(), size=tuple(image_size), mode="bilinear",
                         align_corners=False)[:, 0]


def rise_kernel(klen: int = RISE_BLUR_KLEN, sigma: float = RISE_BLUR_SIGMA) -> Float[Tensor, "klen klen"]:
    """RISE's ``gkern(klen, sigma)``: a centred delta smoothed by ``scipy.ndimage.gaussian_filter`` (Gaussian
    truncated at 4 sigma, ``reflect`` boundary), i.e. the outer product of a 1-D Gaussian folded back into
    ``klen`` taps at the borders. Sums to 1."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    g = g / g.sum()
    taps = torch.zeros(klen, dtype=torch.float64)
    centre = klen // 2
    for off, weight in zip(offsets.long().tolist(), g):
        # the output tap i receives the input delta through offset off = centre - j, with j reflected into [0, klen)
        j = centre + off
        period = 2 * klen
        j = j % period
        j = j if j < klen else period - 1 - j  # "reflect" (d c b a | a b c d | d c b a)
        taps[j] += weight
    return torch.outer(taps, taps).float()


def blur(images: Float[Tensor, "batch chan H W"], klen: int = RISE_BLUR_KLEN,
         sigma: float = RISE_BLUR_SIGMA) -> Float[Tensor, "batch chan H W"]:
    """The Insertion start image: RISE's per-channel convolution with :func:`rise_kernel`, zero padding
    ``klen // 2`` (in normalized space, so borders fade towards the mean colour, as in RISE)."""
    c = images.shape[1]
    kernel = rise_kernel(klen, sigma).to(images.device, images.dtype)
    weight = kernel.expand(c, 1, klen, klen)
    return F.conv2d(images, weight, padding=klen // 2, groups=c)


def step_counts(n_pixels: int, width: int, *, pixels_per_step: int | None = None,
                n_steps: int | None = None) -> Int[Tensor, "points"]:
    """Number of switched pixels at each curve point. Default (RISE): ``pixels_per_step`` = image width,
    counts ``0, step, 2 step, ..., n_pixels`` (``ceil(n_pixels / step) + 1`` points, the last one capped).
    ``n_steps`` instead spaces ``n_steps + 1`` points evenly (rounded) - for quick runs."""
    if pixels_per_step is not None and n_steps is not None:
        raise ValueError(f"give pixels_per_step or n_steps, not both; got pixels_per_step={pixels_per_step}, "
                         f"n_steps={n_steps}")
    if n_steps is not None:
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1; got {n_steps!r}")
        return torch.round(torch.linspace(0, n_pixels, n_steps + 1)).long()
    step = width if pixels_per_step is None else pixels_per_step
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"pixels_per_step must be an int >= 1; got {pixels_per_step!r}")
    points = (n_pixels + step - 1) // step
    return torch.clamp(torch.arange(points + 1) * step, max=n_pixels)


def perturbation_curves(model, images: Float[Tensor, "batch chan H W"], attributions: Float[Tensor, "batch h w"],
                        target: Int[Tensor, "batch"] | int, *, mode: str = "deletion",
                        pixels_per_step: int | None = None, n_steps: int | None = None,
                        reference: Float[Tensor, "batch chan H W"] | None = None,
                        memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                        batch_size: int | None = None) -> Float[Tensor, "batch points"]:
    """Softmax probability of ``target`` as the top-ranked pixels are removed (``"deletion"``: replaced by
    ``reference``, default 0 = the mean colour after normalization) or revealed (``"insertion"``: starting
    from ``reference``, default :func:`blur`). Curve points as in :func:`step_counts` (default RISE: one
    image width of pixels per step). Forwards are batched across steps *and images* by ``caap.masking``
    within ``memory_budget_gb`` (or ``batch_size`` copies). Cost: ``points`` forwards per image. Returns
    float32 on the CPU."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    return curves_for(model, images, attributions, target, modes=(mode,), pixels_per_step=pixels_per_step,
                      n_steps=n_steps, references=None if reference is None else (reference,),
                      memory_budget_gb=memory_budget_gb, batch_size=batch_size)[mode]


def curves_for(model, images: Float[Tensor, "batch chan H W"], attributions: Float[Tensor, "batch h w"],
               target: Int[Tensor, "batch"] | int, *, modes: tuple[str, ...] = MODES,
               pixels_per_step: int | None = None, n_steps: int | None = None,
               references: tuple[Tensor | None, ...] | None = None,
               memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
               batch_size: int | None = None) -> dict[str, Float[Tensor, "batch points"]]:
    """The curves of every mode in ``modes`` (default Deletion and Insertion) for every image, as
    :func:`perturbation_curves`, from ONE stream of perturbed copies (mode × image × point) cut into
    batches by the memory budget: a 16-step quick run on one image fills batches of 2·17·batch copies
    instead of 17. ``references``: one per mode (``None`` = that mode's default). Cost: ``len(modes) ·
    points`` forwards per image."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be a non-empty tuple of 'deletion'/'insertion'; got {modes!r}")
    if references is not None and len(references) != len(modes):
        raise ValueError(f"references must hold one entry per mode ({len(modes)}); got {len(references)}")
    b, c, h, w = images.shape
    if attributions.ndim != 3 or attributions.shape[0] != b:
        raise ValueError(f"attributions must be [batch={b}, h, w]; got attributions batch "
                         f"{attributions.shape[0] if attributions.ndim else '?'} with shape {tuple(attributions.shape)}")
    check_finite(attributions, "attributions")
    if target is None:
        raise ValueError("target must be an int class index or one per image (the class whose probability the "
                         "curve follows); got None")
    n_classes = getattr(getattr(model, "cfg", None), "num_classes", None)
    target = class_targets(target, b, n_classes or None)  # ints only: 2.9 or True are refused, not truncated
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    images = images.to(device, dtype)
    if hasattr(model, "check_images"):
        model.check_images(images, name="images")
    target = target.to(device).long()
    counts = step_counts(h * w, w, pixels_per_step=pixels_per_step, n_steps=n_steps).to(device)
    refs = []
    for k, mode in enumerate(modes):
        ref = None if references is None else references[k]
        if ref is None:
            ref = torch.zeros_like(images) if mode == "deletion" else blur(images)
        if ref.shape != images.shape:
            raise ValueError(f"reference for {mode} must be {tuple(images.shape)}; got {tuple(ref.shape)}")
        refs.append(ref.to(device, dtype))
    reference = torch.stack(refs)  # [mode, batch, c, h, w]
    insertion = torch.tensor([m == "insertion" for m in modes], device=device)
    order = to_pixels(attributions.to(device), (h, w)).flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=device).expand(b, -1))
    rank = rank.view(b, h, w)
    points = len(counts)

    def split(lo: int, hi: int) -> tuple[Tensor, Tensor, Tensor]:
        flat = torch.arange(lo, hi, device=device)  # index = (mode * b + image) * points + point
        return flat // (b * points), flat // points % b, flat % points

    def inputs(lo: int, hi: int) -> Tensor:
        mode, image, point = split(lo, hi)
        switched = rank[image] < counts[point].view(-1, 1, 1)
        shown = (switched == insertion[mode].view(-1, 1, 1))[:, None].to(dtype)  # 1 shows the image
        ref = reference[mode, image]
        return ref + shown * (images[image] - ref)

    scores = torch.empty(len(modes) * b * points, device=device)
    for lo, hi, output in iter_batched_outputs(model, scores.numel(), inputs, memory_budget_gb=memory_budget_gb,
                                               batch_size=batch_size):
        _, image, _ = split(lo, hi)
        scores[lo:hi] = output.float().softmax(-1).gather(1, target[image][:, None])[:, 0]
    scores = scores.view(len(modes), b, points).cpu()
    return {mode: scores[k] for k, mode in enumerate(modes)}


def auc(curves: Float[Tensor, "batch points"]) -> Float[Tensor, "batch"]:
    """Trapezoidal area under curves sampled at evenly spaced fractions of [0, 1] (RISE's ``auc``)."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)
