"""ViT-CX: Causal Explanation of Vision Transformers (Xie et al. 2023; reference code vaynexie/CausalX-ViT).

1. Masks from the target layer's patch embeddings: each of the d feature maps ``[grid_h, grid_w]`` is
   upsampled bilinearly to the image size and min-max normalized to [0, 1].
2. Clustering: agglomerative, complete linkage, on the cosine distance between these d masks, merging
   while the distance is below ``distance_threshold``; each cluster's mask is the sum of its members,
   min-max normalized again.
3. Causal impact score with the density correction: for each of the k cluster masks M_i, with Gaussian
   noise ε_i (std ``noise_std``, normalized input space) placed where the mask is off,
   ``s_i = P(c | x⊙M_i + ε_i⊙(1−M_i)) − P(c | x + ε_i⊙(1−M_i)) + P(c | x)`` and the saliency is
   ``Σ_i s_i · M_i / Σ_j M_j`` (pixelwise: masks that cover a pixel more often count less), divided by k.

Defaults as in the reference code: target layer = the last block's first LayerNorm output
(``blocks.{L-1}.ln1.hook_normalized``), ``distance_threshold=0.1``, ``noise_std=0.1``, softmax
probabilities. Pixels no mask covers (Σ_j M_j = 0) get 0 (the reference divides by zero there);
constant feature maps (which the reference turns into NaN) are masks of zeros and dropped after
clustering. The cosine similarities of the upsampled maps are computed exactly in grid space
(bilinear upsampling is linear: ``<U a, U b> = aᵀ (UᵀU) b``), so no ``d × H·W`` matrix product is needed.

Cost per image: 2k forwards (k clusters, typically tens) + one forward per batch for the features.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caap.baselines.base import PixelLevelMethod
from caap.masking import DEFAULT_MEMORY_BUDGET_GB, masked_scores
from caap.targets import resolve_targets
from caap.validation import check_flag, check_float, check_int, check_method_images


def _interp_matrix(n_in: int, n_out: int) -> Float[Tensor, "n_out n_in"]:
    """The 1-D linear interpolation matrix of ``F.interpolate(align_corners=False)``."""
    eye = torch.eye(n_in, dtype=torch.float64)[None]  # [1, n_in (channels), n_in]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def _upsample(maps: Float[Tensor, "k gh gw"], size: tuple[int, int]) -> Float[Tensor, "k h w"]:
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]


def normalized_feature_maps(features: Float[Tensor, "d gh gw"], image_size: tuple[int, int],
                            chunk: int = 64) -> Float[Tensor, "d gh gw"]:
    """Grid-space maps ``a'`` whose bilinear upsampling is the min-max normalized upsampled feature map
    (upsampling rows sum to 1, so it commutes with the affine normalization). Constant maps -> 0."""
    lo, hi = [], []
    for start in range(0, features.shape[0], chunk):  # min/max at full resolution, a chunk of maps at a time
        up = _upsample(features[start:start + chunk], image_size).flatten(1)
        lo.append(up.min(1).values)
        hi.append(up.max(1).values)
    lo, hi = torch.cat(lo)[:, None, None], torch.cat(hi)[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (features - lo) / span.clamp_min(torch.finfo(features.dtype).tiny), 0.0)


def mask_distances(maps: Float[Tensor, "d gh gw"], image_size: tuple[int, int]) -> Float[Tensor, "d d"]:
    """``1 − cosine similarity`` of the upsampled maps (zero maps: similarity 0), computed in grid space."""
    mh = _interp_matrix(maps.shape[1], image_size[0])
    mw = _interp_matrix(maps.shape[2], image_size[1])
    a = maps.double()
    gram = torch.einsum("dpq,pr,qs,ers->de", a, mh.T @ mh, mw.T @ mw, a)
    norm = gram.diagonal().clamp_min(0).sqrt()
    sim = gram / (norm[:, None] * norm[None, :])
    sim = torch.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0)
    dist = (1 - sim).clamp_min(0)
    dist.fill_diagonal_(0)
    return dist


def cluster_masks(features: Float[Tensor, "d gh gw"], image_size: tuple[int, int],
                  distance_threshold: float = 0.1) -> tuple[Float[Tensor, "k h w"], np.ndarray]:
    """ViT-CX's masks: cluster the normalized feature masks (complete linkage on cosine distance,
    scikit-learn's ``AgglomerativeClustering``), sum each cluster, min-max normalize. Returns the
    ``[k, H, W]`` masks (all-zero clusters dropped) and the cluster label of each feature map."""
    from sklearn.cluster import AgglomerativeClustering

    maps = normalized_feature_maps(features.float(), image_size)
    if maps.shape[0] == 1:
        labels = np.zeros(1, dtype=int)
    else:
        dist = mask_distances(maps, image_size).cpu().numpy()
        labels = AgglomerativeClustering(n_clusters=None, distance_threshold=distance_threshold,
                                         metric="precomputed", linkage="complete").fit(dist).labels_
    index = torch.as_tensor(labels, device=maps.device)
    sums = torch.zeros(int(labels.max()) + 1, *maps.shape[1:], device=maps.device).index_add_(0, index, maps)
    up = _upsample(sums, image_size).flatten(1)
    lo, hi = up.min(1, keepdim=True).values, up.max(1, keepdim=True).values
    keep = (hi > lo)[:, 0]
    masks = ((up[keep] - lo[keep]) / (hi[keep] - lo[keep])).view(-1, *image_size)
    return masks, labels


def causal_impact(masks_score: Float[Tensor, "k"], noise_score: Float[Tensor, "k"], clean_score: float | Tensor,
                  masks: Float[Tensor, "k h w"]) -> Float[Tensor, "h w"]:
    """``Σ_i (P(masked_i) − P(noised_i) + P(x)) · M_i / Σ_j M_j / k`` (0 where no mask covers a pixel)."""
    weights = masks_score - noise_score + clean_score
    coverage = masks.sum(0)
    total = torch.einsum("k,khw->hw", weights, masks)
    return torch.where(coverage > 0, total / coverage.clamp_min(torch.finfo(masks.dtype).tiny), 0.0) / len(masks)


class ViTCX(PixelLevelMethod):
    """ViT-CX (see the module docstring). ``attribute_pixels`` gives ``[batch, H, W]``, ``attribute`` the
    mean over each patch cell. ``seed`` fixes the noise; ``layer``/``hook`` choose the feature layer."""

    def __init__(self, model, *, layer: int | None = None, hook: str = "ln1.hook_normalized",
                 distance_threshold: float = 0.1, noise_std: float = 0.1, seed: int = 0,
                 memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, batch_size: int | None = None,
                 progress: bool | None = None):
        n_layers = model.cfg.n_layers
        layer = check_int(layer, "layer (block index)", low=0, high=n_layers - 1, none_ok=True)
        layer = n_layers - 1 if layer is None else layer
        if not isinstance(hook, str) or f"blocks.{layer}.{hook}" not in model.hook_dict:
            raise ValueError(f"hook must name a hook point inside a block, e.g. 'ln1.hook_normalized'; got {hook!r}")
        self.model, self.hook_name = model, f"blocks.{layer}.{hook}"
        self.distance_threshold = check_float(distance_threshold, "distance_threshold (cosine distance)", low=0,
                                              high=2, low_open=True)
        self.noise_std = check_float(noise_std, "noise_std", low=0)
        self.seed = check_int(seed, "seed", low=0)
        self.memory_budget_gb = check_float(memory_budget_gb, "memory_budget_gb", low=0, low_open=True)
        self.batch_size = check_int(batch_size, "batch_size", low=1, none_ok=True)
        self.progress = check_flag(progress, "progress")
        self.last_n_masks: list[int] = []  # clusters per image of the last call (the cost is 2x this)

    def features(self, images: Float[Tensor, "batch chan height width"]) -> tuple[Tensor, Tensor]:
        """``(logits [batch, n_out], patch features [batch, d, grid_h, grid_w])`` in one forward."""
        model, stored = self.model, {}
        with model.hooks(fwd_hooks=[(self.hook_name, lambda act, hook: stored.setdefault("a", act))]):
            logits = model(images)
        acts = stored["a"][:, model.cfg.n_prefix_tokens:]
        gh, gw = model.cfg.grid_size
        return logits, acts.transpose(1, 2).reshape(len(images), -1, gh, gw)

    @torch.inference_mode()
    def attribute_pixels(self, images: Float[Tensor, "batch chan height width"],
                         target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch height width"]:
        model = self.model
        check_method_images(model, images)
        param = next(model.parameters())
        images = images.to(param.device)
        explicit = None if target is None else resolve_targets(model, images, target)  # refused before any work
        logits, feats = self.features(images)
        targets = logits.argmax(-1) if explicit is None else explicit
        probs = logits.float().softmax(-1)
        size = tuple(model.cfg.image_size)
        g = torch.Generator().manual_seed(self.seed)
        maps, self.last_n_masks = [], []
        for b in tqdm(range(len(images)), disable=not (self.progress or (self.progress is None and len(images) > 1)),
                      desc="ViT-CX"):
            masks, _ = cluster_masks(feats[b], size, self.distance_threshold)
            k = len(masks)
            self.last_n_masks.append(k)
            noise = (torch.randn(k, *images.shape[1:], generator=g) * self.noise_std).to(param.device, param.dtype)
            # x⊙M + ε⊙(1−M) = ε + M⊙(x − ε);  x + ε⊙(1−M) = (x + ε) + M⊙(x − (x + ε))
            refs = torch.cat([noise, images[b] + noise])
            scores = masked_scores(model, images[b], torch.cat([masks, masks]), refs, targets[b], kind="prob",
                                   memory_budget_gb=self.memory_budget_gb, batch_size=self.batch_size)
            maps.append(causal_impact(scores[:k], scores[k:], probs[b, targets[b]], masks.float()))
        return torch.stack(maps)
