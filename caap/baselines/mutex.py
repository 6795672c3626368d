"""MUTEX, MUltiplex Transformer EXplainer (Marchetti, Traini, Ursino & Virgili, Neural Computing and
Applications 37(29), 2025).

The attention of every block becomes one layer of a multiplex network over the patch tokens; node
statistics across the layers select sets of patches; the model is run on each set alone (token dropping)
and every patch scores the mean target probability of the sets containing it.

1. Per block, the heads are fused by ``min``, ``max`` and ``sum`` (three multiplexes); prefix (CLS,
   register) rows and columns are dropped; in each layer edges below ``min_cut`` times the layer's
   largest patch-to-patch weight are cut.
2. Per multiplex, from ``start_layer`` on, each patch's in-degree (column sum) and out-degree (row sum)
   per layer; across the layers nine statistics: entropy of the layer proportions ("coherence"), max,
   min, sum, std (unbiased), sum / (std + 1e-8), lower median, skewness and excess kurtosis (biased,
   scipy's defaults; NaN for a patch whose degree is constant, which then is never selected).
3. Each of the 3 x 2 x 9 = 54 statistics selects the patches whose value is at least its
   ``ceil(n_patches * token_ratio)``-th smallest value (about ``1 - token_ratio`` of them, ties included).
4. The model runs on the prefix tokens plus each selection (tokens dropped after the position embedding,
   as the authors' hook on the embedding output does); the map is, per patch, the mean softmax
   probability of the target over the selections containing it (0 if none does).

The paper itself is not publicly readable; this follows the authors' implementation
(DavideTraini/ViT-Visual-Interpretability, ``Implementation/mutex.py``, the repository the paper's code
link names) with its notebook's defaults ``min_cut=0.01``, ``token_ratio=0.5``, ``starting_layer=0``.
Generalizations: batched (their code explains one image), prefix tokens = CLS and registers (theirs: CLS
and DeiT's distillation token), average-pooling models work (the mean runs over the kept patches), an
empty selection is skipped (it adds nothing to any patch).

Cost per image: 1 forward, plus one forward on ``n_prefix + ~(1 - token_ratio) n_patches`` tokens per
non-empty selection (at most 54): about 27-30 full forwards of compute at the defaults, run batched
(8.1 x a batch-1 forward in wall time on DINOv2-S/14 at 224 px, CPU).
"""
from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from caap.baselines.lrp import targets_before_forward
from caap.validation import check_float, check_int, check_method_images

OPERATORS = ("min", "max", "sum")
CENTRALITIES = ("in", "out")
STATISTICS = ("entropy", "max", "min", "sum", "std", "sum_over_std", "median", "skew", "kurtosis")


def layer_statistics(values: Float[Tensor, "... layer node"]) -> Float[Tensor, "... stat node"]:
    """The nine statistics of ``STATISTICS`` over the layer axis."""
    total = values.sum(-2)
    proportions = torch.where(total[..., None, :] != 0, values / total[..., None, :], torch.zeros_like(values))
    plogp = torch.where(proportions != 0, proportions * proportions.log(), torch.zeros_like(values))
    std = values.std(-2)
    mean = values.mean(-2)
    dev = values - mean[..., None, :]
    m2, m3, m4 = (dev.pow(p).mean(-2) for p in (2, 3, 4))
    constant = m2 <= (torch.finfo(values.dtype).resolution * mean) ** 2  # scipy's test for a zero variance
    nan = torch.full_like(m2, float("nan"))
    skew = torch.where(constant, nan, m3 / m2.pow(1.5))
    kurtosis = torch.where(constant, nan, m4 / m2.pow(2) - 3.0)
    return torch.stack([-plogp.sum(-2), values.amax(-2), values.amin(-2), total, std, total / (std + 1e-8),
                        values.median(-2).values, skew, kurtosis], dim=-2)


def top_selection(values: Float[Tensor, "... node"], token_ratio: float) -> Bool[Tensor, "... node"]:
    """Nodes whose value is at least the ``ceil(n * token_ratio)``-th smallest (NaN never selected; a NaN
    threshold selects nothing)."""
    n = values.shape[-1]
    threshold = values.sort(-1).values[..., math.ceil(n * token_ratio) - 1]
    return values >= threshold[..., None]


class MUTEX:
    """MUTEX (Marchetti et al. 2025): attention multiplex statistics select patch sets, scored by
    token-dropping forwards. Options: ``min_cut`` (0.01), ``token_ratio`` (0.5), ``start_layer`` (0),
    ``batch_size`` (selections per forward, 64). Cost: 1 + up to 54 reduced-token forwards per image."""

    def __init__(self, model, min_cut: float = 0.01, token_ratio: float = 0.5, start_layer: int = 0,
                 batch_size: int = 64):
        self.model = model
        self.min_cut = check_float(min_cut, "min_cut", low=0, high=1)
        self.token_ratio = check_float(token_ratio, "token_ratio", low=0, high=1, low_open=True)
        self.start_layer = check_int(start_layer, "start_layer", low=0, high=model.cfg.n_layers - 1)
        self.batch_size = check_int(batch_size, "batch_size", low=1)

    @torch.no_grad()
    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        model = self.model
        check_method_images(model, images)
        targets = targets_before_forward(model, images, target)
        patterns = {}

        def keep(pattern, hook):
            patterns[hook.name] = pattern

        names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
        with model.hooks(fwd_hooks=[(name, keep) for name in names]):
            logits = model(images)
        if targets is None:
            targets = logits.argmax(-1)
        masks = self.selections(torch.stack([patterns[name] for name in names], dim=1))
        probs = self.score(images, masks, targets)
        heat = (masks * probs[..., None]).sum(1) / masks.sum(1).clamp(min=1)
        return model.layout.to_grid(heat)

    def selections(self, patterns: Float[Tensor, "batch layer head pos pos"]) -> Bool[Tensor, "batch 54 n_patches"]:
        """The 54 patch selections per image, ordered (operator, centrality, statistic)."""
        n_pre = self.model.cfg.n_prefix_tokens
        fused = torch.stack([patterns.amin(2), patterns.amax(2), patterns.sum(2)], dim=1)  # OPERATORS
        fused = fused[..., n_pre:, n_pre:]  # [batch, op, layer, patch, patch]
        cut = fused.amax((-2, -1), keepdim=True) * self.min_cut
        fused = torch.where(fused < cut, torch.zeros_like(fused), fused)[:, :, self.start_layer:]
        degrees = torch.stack([fused.sum(-2), fused.sum(-1)], dim=2)  # CENTRALITIES: [batch, op, c, layer, patch]
        masks = top_selection(layer_statistics(degrees), self.token_ratio)  # [batch, op, c, stat, patch]
        return masks.flatten(1, 3)

    def score(self, images: Float[Tensor, "batch chan height width"], masks: Bool[Tensor, "batch sel n_patches"],
              targets: Int[Tensor, "batch"]) -> Float[Tensor, "batch sel"]:
        """Softmax probability of the target with only the prefix tokens and each selection (0 for an
        empty selection, which contributes to no patch)."""
        model, n_pre = self.model, self.model.cfg.n_prefix_tokens
        resid = model.embed(images)  # blocks.0.hook_resid_pre (after CLIP's per-token ln_pre)
        probs = torch.zeros(masks.shape[:2], dtype=resid.dtype, device=resid.device)
        counts = masks.sum(-1)
        prefix = torch.arange(n_pre, device=resid.device)
        for count in counts.unique().tolist():
            if count == 0:
                continue
            image_idx, sel_idx = torch.nonzero(counts == count, as_tuple=True)
            patch_pos = torch.nonzero(masks[image_idx, sel_idx], as_tuple=True)[1].view(-1, count) + n_pre
            positions = torch.cat([prefix.expand(len(image_idx), -1), patch_pos], dim=1)
            for start in range(0, len(image_idx), self.batch_size):
                rows = slice(start, start + self.batch_size)
                tokens = resid[image_idx[rows, None], positions[rows]]
                out = model.forward_from_resid(tokens, 0).softmax(-1)
                probs[image_idx[rows], sel_idx[rows]] = out.gather(1, targets[image_idx[rows], None])[:, 0]
        return probs
