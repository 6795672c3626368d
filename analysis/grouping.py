"""Attention grouping per block (CAAP paper Sec. 3.2, Eq. 5, Fig. 6): do object patches attend to their own
object, to other objects, or to the background?

Conventions (named defaults, documented where the paper is silent):

* **Block index.** Layer ``l`` is the 0-based block ``blocks.{l}``; its attention ``blocks.{l}.attn.hook_pattern``
  mixes ``blocks.{l}.hook_resid_pre``, the activation CAAP patches in block ``l``. ``caap.default_layers`` patches
  blocks ``0..ceil(2L/3)`` in the same indexing, so both figures share one x-axis.
* **Eq. 5 normalizer.** With ``renormalize=True`` (default) the attention of a query patch is renormalized over
  the N patch keys, ``alpha_ij = a_ij / sum_{m patch} a_im``, which equals the softmax of Eq. 5 taken over patch
  tokens only. ``renormalize=False`` keeps the model's softmax over all tokens, so the share a patch gives to
  CLS/register tokens stays in the denominator (the row sums over patch keys are then < 1).
* **Patch membership** (:func:`patch_labels`): a patch belongs to instance ``k`` when at least ``threshold``
  (default 0.5) of its pixels lie in mask ``k``; a patch qualifying for several instances goes to the one covering
  most of it (ties: the lower index). Every other patch is background, including patches partly covered by an
  object below the threshold.
* **Regions of a query patch i in instance k**: intra = ``O_k`` (including ``i`` itself), inter = patches of the
  other instances, background = patches of no instance, extra = every patch not in ``O_k`` (inter + background).
  Each value is the *mean* attention weight over the keys of the region (``E_{j in region}[alpha_ij]``).
* **Grouping score** (Sec. 3.2): ``score = E_i[E_{j in O}[alpha_ij] - E_{j not in O}[alpha_ij]]`` = intra - extra.
* **Averages**: per image over every object query patch (all instances pooled), over heads unless
  ``per_head=True``; then mean and standard error over images (population SD / sqrt(n), as in the paper's tables).
  ``inter`` is undefined (NaN) for images with one instance and ``background`` for images without background
  patches; those images are left out of that key's mean (``n`` per key says how many remain).

Cost: one forward per batch of images with the attention pattern hooked (the fused attention kernel is off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

KEYS = ("intra", "inter", "background", "extra", "score")


def patch_membership(mask: Bool[Tensor, "H W"], patch_size: tuple[int, int], threshold: float = 0.5) -> Bool[Tensor, "n_patches"]:
    """A patch belongs to the object when at least ``threshold`` of its pixels are foreground (row-major)."""
    return patch_fractions(mask[None], patch_size)[0] >= threshold


def patch_fractions(masks: Bool[Tensor, "k H W"], patch_size: tuple[int, int]) -> Float[Tensor, "k n_patches"]:
    """Fraction of each patch's pixels inside each mask (row-major patches)."""
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [n_instances, H, W]; got {tuple(masks.shape)}")
    h, w = masks.shape[-2:]
    ph, pw = patch_size
    if h % ph or w % pw:
        raise ValueError(f"mask size {(h, w)} is not a multiple of the patch size {tuple(patch_size)}")
    return F.avg_pool2d(masks[:, None].float(), kernel_size=patch_size, stride=patch_size).flatten(1)


def patch_labels(instance_masks: Bool[Tensor, "k H W"], patch_size: tuple[int, int], threshold: float = 0.5) -> Int[Tensor, "n_patches"]:
    """Instance index of every patch (row-major), ``-1`` for background (rule in the module docstring)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    fractions = patch_fractions(instance_masks.bool(), patch_size)  # [k, N]
    if fractions.shape[0] == 0:
        return torch.full((fractions.shape[1],), -1, dtype=torch.long)
    best, index = fractions.max(0)  # first maximum on ties
    return torch.where(best >= threshold, index, torch.full_like(index, -1))


def _as_instance_masks(masks, n_images: int, image_size: tuple[int, int]) -> list[Tensor]:
    if isinstance(masks, Tensor):
        if masks.ndim == 3:  # one mask per image
            masks = masks[:, None]
        if masks.ndim != 4:
            raise ValueError(f"instance_masks must be [batch, n_instances, H, W] or a list of [n_instances, H, W]; "
                             f"got a tensor of shape {tuple(masks.shape)}")
        masks = list(masks)
    masks = list(masks)
    if len(masks) != n_images:
        raise ValueError(f"instance_masks must hold one entry per image ({n_images}); got {len(masks)}")
    out = []
    for b, m in enumerate(masks):
        m = torch.as_tensor(m)
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3 or tuple(m.shape[-2:]) != tuple(image_size):
            raise ValueError(f"instance_masks[{b}] must have shape [n_instances, {image_size[0]}, {image_size[1]}] "
                             f"(boolean pixel masks at the input size); got {tuple(m.shape)}")
        out.append(m.bool().cpu())
    return out


def _nan_mean(values: Tensor, valid: Tensor, dim: int) -> Tensor:
    """Mean over ``dim`` of the entries where ``valid``; NaN where none is valid."""
    count = valid.sum(dim)
    total = torch.where(valid, values, torch.zeros_like(values)).sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _layer_stats(pattern: Float[Tensor, "batch head T T"], labels: Int[Tensor, "batch N"], n_prefix: int,
                 renormalize: bool) -> dict[str, Float[Tensor, "batch head"]]:
    """Per image and head, the mean over object query patches of each region's mean attention."""
    a = pattern[:, :, n_prefix:, n_prefix:].double()  # [b, h, N (query), N (key)]
    row_total = a.sum(-1)  # [b, h, N]
    if renormalize:
        a = a / row_total[..., None]
        row_total = torch.ones_like(row_total)
    n_inst = int(labels.max()) + 1 if labels.numel() else 0
    onehot = F.one_hot(labels + 1, num_classes=n_inst + 1).to(a.dtype)  # [b, N, 1 + K]; column 0 = background
    group_sum = torch.einsum("bhqk,bkg->bhqg", a, onehot)  # attention of each query to each group
    counts = onehot.sum(1)  # [b, 1 + K] patches per group
    own = labels.clamp(min=0)  # the query's own instance (meaningless for background queries, masked below)
    intra_sum = group_sum[..., 1:].gather(-1, own[:, None, :, None].expand(-1, a.shape[1], -1, 1))[..., 0]
    n_own = counts[:, 1:].gather(-1, own)[:, None, :].expand_as(intra_sum)  # [b, h, N]
    n_objects = counts[:, 1:].sum(-1)[:, None, None]
    n_background = counts[:, :1][:, None]  # [b, 1, 1]
    bg_sum = group_sum[..., 0]
    inter_sum = group_sum[..., 1:].sum(-1) - intra_sum
    n_patches = labels.shape[1]
    query = (labels >= 0)[:, None, :].expand_as(intra_sum)

    def region(total, count):
        valid = query & (count > 0)
        return _nan_mean(total / count.clamp(min=1), valid, dim=-1)

    n_inter = (n_objects - n_own)
    stats = {"intra": region(intra_sum, n_own), "inter": region(inter_sum, n_inter),
             "background": region(bg_sum, n_background.expand_as(intra_sum)),
             "extra": region(row_total - intra_sum, n_patches - n_own)}
    stats["score"] = stats["intra"] - stats["extra"]
    return stats


@dataclass
class Grouping:
    """Per-image values ``per_image[key]``: ``[image, layer]`` (or ``[image, layer, head]``) for
    ``key`` in ``KEYS``; ``mean``/``se``/``n`` aggregate over images, ignoring NaN (undefined) entries."""

    per_image: dict[str, Tensor]
    names: list[str] = field(default_factory=list)
    renormalize: bool = True
    threshold: float = 0.5

    def __getitem__(self, key: str) -> Tensor:
        return self.mean(key)

    def n(self, key: str) -> Tensor:
        return (~self.per_image[key].isnan()).sum(0)

    def mean(self, key: str) -> Tensor:
        v = self.per_image[key]
        return _nan_mean(v, ~v.isnan(), dim=0)

    def se(self, key: str) -> Tensor:
        """Population SD / sqrt(n) over the images where ``key`` is defined (NaN when n == 0)."""
        v = self.per_image[key]
        valid = ~v.isnan()
        mean = self.mean(key)
        var = _nan_mean((v - mean) ** 2, valid, dim=0)
        return (var / self.n(key).clamp(min=1)).sqrt()

    @property
    def n_layers(self) -> int:
        return self.per_image["intra"].shape[1]

    @staticmethod
    def concat(parts: Sequence["Grouping"]) -> "Grouping":
        if not parts:
            raise ValueError("parts must be a non-empty sequence of Grouping")
        return Grouping({k: torch.cat([p.per_image[k] for p in parts]) for k in parts[0].per_image},
                        [n for p in parts for n in p.names], parts[0].renormalize, parts[0].threshold)

    def summary(self) -> dict:
        """JSON-able: per key the per-layer mean, SE and n."""
        return {"renormalize": self.renormalize, "threshold": self.threshold, "n_images": len(self.per_image["intra"]),
                **{k: {"mean": self.mean(k).tolist(), "se": self.se(k).tolist(), "n": self.n(k).tolist()}
                   for k in self.per_image}}


@torch.inference_mode()
def attention_grouping(model, images: Float[Tensor, "batch chan H W"], instance_masks, *, renormalize: bool = True,
                       per_head: bool = False, threshold: float = 0.5, names: Sequence[str] | None = None) -> Grouping:
    """Intra-object, inter-object, background and extra-object attention of object patches, per block (Fig. 6).

    ``instance_masks``: per image a boolean ``[n_instances, H, W]`` pixel mask at the input size (a list, or a
    ``[batch, n_instances, H, W]`` tensor; a single ``[H, W]`` mask counts as one instance). Images whose masks
    cover no patch raise (nothing to average). Returns a :class:`Grouping` (see the module docstring for every
    convention); ``per_head=True`` keeps ``[image, layer, head]``. Cost: one forward with attention hooked.
    """
    cfg = model.cfg
    model.check_images(images)
    masks = _as_instance_masks(instance_masks, images.shape[0], tuple(cfg.image_size))
    labels = []
    for b, m in enumerate(masks):
        lab = patch_labels(m, cfg.patch_size, threshold)
        if (lab < 0).all():
            raise ValueError(f"instance_masks[{b}] covers no patch at threshold {threshold} (patch size "
                             f"{tuple(cfg.patch_size)}); give a larger mask or a lower threshold")
        labels.append(lab)
    param = next(model.parameters())
    labels_t = torch.stack(labels).to(param.device)
    per_layer: list[dict[str, Tensor]] = [None] * cfg.n_layers  # type: ignore[list-item]

    def read(pattern, hook, layer):
        per_layer[layer] = {k: v.float().cpu() for k, v in
                            _layer_stats(pattern, labels_t, cfg.n_prefix_tokens, renormalize).items()}

    hooks = [(f"blocks.{l}.attn.hook_pattern", lambda p, hook, l=l: read(p, hook, l)) for l in range(cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        model(images.to(param.device, param.dtype))
    per_image = {}
    for key in KEYS:
        values = torch.stack([per_layer[l][key] for l in range(cfg.n_layers)], dim=1)  # [b, layer, head]
        per_image[key] = values if per_head else _nan_mean(values, ~values.isnan(), dim=-1)
    return Grouping(per_image, list(names) if names is not None else [str(i) for i in range(images.shape[0])],
                    renormalize, threshold)


def grouping_transition(grouping: Grouping, n_layers: int | None = None) -> dict:
    """Where grouping gives way to inter-object/background mixing, against CAAP's default cutoff.

    ``peak_layer``: the block where the mean grouping score (intra - extra) is largest — from there on the
    gap shrinks, i.e. context from outside the object mixes in faster than within-object grouping grows.
    ``plateau``: blocks whose mean score is within one SE of the peak (the peak is not resolved more finely).
    ``background_min_layer``: the block with the least object-to-background attention; later blocks mix in
    background. ``cutoff`` = ``caap.default_layers(L)[1]`` (``ceil(2L/3)``, 0-based block index, capped at L-1);
    ``cutoff_in_plateau`` says whether it is within one SE of the peak. Per-head results are averaged first.
    """
    from caap import default_layers

    def mean_over_heads(key):
        m = grouping.mean(key)
        return m.nanmean(-1) if m.ndim == 2 else m

    score = mean_over_heads("score")
    se = grouping.se("score")
    se = se.nanmean(-1) if se.ndim == 2 else se
    n_layers = n_layers or len(score)
    peak = int(torch.nan_to_num(score, nan=-math.inf).argmax())
    plateau = [l for l in range(len(score)) if score[l] >= score[peak] - se[peak]]
    background = mean_over_heads("background")
    cutoff = default_layers(n_layers)[1]
    return {"peak_layer": peak, "peak_score": float(score[peak]), "peak_se": float(se[peak]),
            "plateau": plateau,
            "background_min_layer": None if background.isnan().all() else int(torch.nan_to_num(background, nan=math.inf).argmin()),
            "cutoff": cutoff, "score_at_cutoff": float(score[cutoff]), "cutoff_in_plateau": cutoff in plateau,
            "cutoff_minus_peak": cutoff - peak}
