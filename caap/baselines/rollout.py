"""Attention-based baselines: Attention Rollout (Abnar & Zuidema, ACL 2020) and its gradient-weighted
sibling GAE (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability").

Both compose per-layer token-to-token matrices over the blocks and read the CLS row over the patch
columns. Register tokens take part in the composition (they are attended to and attend) but are
neither the read-out row nor an output column. Only CLS-token models are supported: with
``global_pool="avg"`` the prediction is not read from CLS and both methods raise.

The composed CLS row is computed as a row vector times the per-layer matrices, last layer first
(``e_cls A_L ... A_s``), which equals the CLS row of the paper's matrix product at O(N^2) per layer.
"""
from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap.baselines.base import GradientMethod, GradientScore, check_score
from caap.targets import resolve_targets
from caap.validation import check_choice, check_float, check_int, check_method_images

HEAD_FUSIONS = ("mean", "max", "min")


def _require_cls(model, method: str) -> None:
    cfg = model.cfg
    if not cfg.has_cls_token or cfg.pooling != "token":
        raise ValueError(f"{method} reads the CLS row of the composed attention, but this model "
                         f"(has_cls_token={cfg.has_cls_token}, pooling={cfg.pooling!r}) does not predict from "
                         f"the CLS token; use a gradient method ('ixg', 'ixg+', 'libra-ixg+', 'grad-cam') instead")


def _cls_row_times(matrices: list[Float[Tensor, "batch pos pos"]], n_prefix: int) -> Float[Tensor, "batch n_patches"]:
    """CLS row of ``M_last @ ... @ M_first`` restricted to the patch columns."""
    batch, n_tokens = matrices[0].shape[:2]
    row = torch.zeros(batch, 1, n_tokens, dtype=matrices[0].dtype, device=matrices[0].device)
    row[:, 0, 0] = 1.0  # CLS sits at position 0
    for m in reversed(matrices):
        row = row @ m
    return row[:, 0, n_prefix:]


def _check_images_and_target(model, images, target) -> None:
    check_method_images(model, images)
    if target is not None:  # class-agnostic, but a malformed target is still refused
        resolve_targets(model, images, target)


class AttentionRollout:
    """Attention Rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

    Per block ``l >= start_layer``: fuse the heads' attention ``[batch, query, key]`` (``head_fusion``:
    ``"mean"`` as in the paper, or ``"max"``/``"min"`` as in the widely used vit-explain variant), zero the
    ``discard_ratio`` smallest entries of each image's fused matrix (never the CLS->CLS entry; vit-explain's
    noise filter, 0 = the paper), add the identity for the residual connection, normalize rows to sum to
    one, and multiply over the blocks (later blocks on the left). The map is the CLS row over the patch
    columns. Class-agnostic: ``target`` is validated and ignored.

    Defaults: ``head_fusion="mean"``, ``discard_ratio=0.0``, ``start_layer=1``. The start layer follows the
    evaluation scripts of the benchmark that made rollout a ViT baseline, hila-chefer/Transformer-Explainability
    (``baselines/ViT/generate_visualizations.py`` and ``imagenet_seg_eval.py`` call ``generate_rollout(...,
    start_layer=1)``, i.e. block 0 is left out; their library default and the paper's rollout use 0, pass
    ``start_layer=0`` for that). A one-block model needs ``start_layer=0``.
    Cost: one forward (explicit-softmax attention path), no backward.
    """

    def __init__(self, model, head_fusion: Literal["mean", "max", "min"] = "mean", discard_ratio: float = 0.0,
                 start_layer: int = 1):
        _require_cls(model, "Attention Rollout")
        self.model, self.head_fusion = model, check_choice(head_fusion, "head_fusion", HEAD_FUSIONS)
        self.discard_ratio = check_float(discard_ratio, "discard_ratio", low=0, high=1, high_open=True)
        self.start_layer = check_int(start_layer, "start_layer", low=0, high=model.cfg.n_layers - 1)

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        _check_images_and_target(self.model, images, target)
        model = self.model
        patterns: dict[int, Tensor] = {}

        def keep(layer):
            def hook(pattern, hook):
                patterns[layer] = pattern.detach()
            return hook

        names = [(f"blocks.{l}.attn.hook_pattern", keep(l)) for l in range(self.start_layer, model.cfg.n_layers)]
        with torch.no_grad(), model.hooks(fwd_hooks=names):
            model(images)
        matrices = [self._layer_matrix(patterns[l]) for l in sorted(patterns)]
        return model.layout.to_grid(_cls_row_times(matrices, model.cfg.n_prefix_tokens))

    def _layer_matrix(self, pattern: Float[Tensor, "batch head pos pos"]) -> Float[Tensor, "batch pos pos"]:
        if self.head_fusion == "mean":
            fused = pattern.mean(1)
        elif self.head_fusion == "max":
            fused = pattern.amax(1)
        else:
            fused = pattern.amin(1)
        if self.discard_ratio > 0:
            batch, n = fused.shape[:2]
            flat = fused.reshape(batch, n * n).clone()
            n_drop = int(n * n * self.discard_ratio)
            candidates = flat.clone()
            candidates[:, 0] = torch.inf  # the CLS->CLS entry is never discarded
            drop = candidates.topk(n_drop, dim=-1, largest=False).indices
            fused = flat.scatter(1, drop, 0.0).reshape(batch, n, n)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        augmented = fused + eye
        return augmented / augmented.sum(-1, keepdim=True)


class GAE(GradientMethod):
    """GAE: gradient-weighted attention rollout (Chefer, Gur & Wolf, "Generic Attention-model
    Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021), the
    self-attention rules of the authors' ViT code (hila-chefer/Transformer-MM-Explainability).

    Per block: ``Abar = mean_heads(relu(dS/dA * A))`` with ``A`` the attention pattern and ``S`` the target
    class logit; ``R = I``, then ``R <- R + Abar @ R`` over the blocks in order. The map is the CLS row of
    ``R`` over the patch columns. The paper has no options; ``score`` (default the class logit, as the
    authors' one-hot product) also takes ``"prob"`` or a callable on the output ``[batch, n_out] -> [batch]``.
    Settings: the authors publish no ViT evaluation script for GAE (their repository evaluates it on
    VisualBERT, LXMERT and DETR); this follows their ViT notebook (``Transformer_MM_explainability_ViT.ipynb``:
    every block, the target logit), which has nothing else to choose.

    Cost: one forward (explicit-softmax attention path) and one backward per batch.
    """

    def __init__(self, model, score: GradientScore = "logit"):
        _require_cls(model, "GAE")
        self.model, self.score = model, check_score(score)

    def _attribute(self, images, target):
        model = self.model
        images = images.detach().requires_grad_()  # connects every block's pattern, frozen weights or not
        patterns: dict[int, Tensor] = {}

        def keep(layer):
            def hook(pattern, hook):
                patterns[layer] = pattern
            return hook

        names = [(f"blocks.{l}.attn.hook_pattern", keep(l)) for l in range(model.cfg.n_layers)]
        with model.hooks(fwd_hooks=names):
            logits = model(images)
        layers = sorted(patterns)
        grads = torch.autograd.grad(self.explained_score(logits, images, target).sum(), [patterns[l] for l in layers])
        eye = torch.eye(model.cfg.n_tokens, dtype=logits.dtype, device=logits.device)
        # R_L = (I + Abar_L) ... (I + Abar_1): R <- R + Abar @ R is R <- (I + Abar) @ R
        matrices = [eye + torch.relu(g * patterns[l].detach()).mean(1) for l, g in zip(layers, grads)]
        return model.layout.to_grid(_cls_row_times(matrices, model.cfg.n_prefix_tokens))
