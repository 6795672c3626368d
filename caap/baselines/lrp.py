"""Transformer Attribution (T-Attr; Chefer, Gur & Wolf, CVPR 2021) on HookedViT.

LRP relevance of the target class is propagated from the logits through every block with the authors'
rules (:mod:`caap.baselines.lrp_rules`); per block the relevance of the attention probabilities ``R_A`` is
weighted by the gradient of the target logit w.r.t. the attention, ``Abar = mean_heads(relu(grad_A * R_A))``,
and the blocks are rolled out, ``C = (Abar_L + I) ... (Abar_s + I)`` (no row normalization, as in their
``ViT_LRP.py``); the map is the CLS row over the patch columns (register columns dropped).

Follows hila-chefer/Transformer-Explainability (``baselines/ViT/ViT_LRP.py``, ``modules/layers_ours.py``,
``method="transformer_attribution"``, ``alpha=1``): the relevance starts as the one-hot target vector at
the logits; linear layers (head, qkv, proj, fc1, fc2) use the z+ rule; LayerNorm (``ln_final``, ``ln1``,
``ln2``, ``fc_norm``), GELU, softmax pass it unchanged; ``A @ V`` and ``Q K^T`` split it between their two
operands and halve; residual sums use their normalized Add rule; the CLS pooling sends it to the CLS token.
Choices where their ViT has no counterpart (documented defaults):

* LayerScale (DeiT3, DINOv2): ``layer_scale_rule="linear"`` applies the linear z+ rule to the per-channel
  product (not conservative: channels with a negative branch output lose their relevance);
  ``"identity"`` passes it through like their LayerNorm's per-channel affine weight (conservative).
* Register tokens take part in every block like any token; their columns are dropped from the map.
* CLIP's ``ln_pre`` lies below the first attention and never affects the map.
* Per-image sums in the Add rule (theirs sum over the whole batch, which they run with one image).
* ``global_pool="avg"`` is refused: the map is the CLS row of the rollout, and an average-pooling model
  does not read its output from the CLS token.

Cost per batch: one forward (attention cached), one backward to the attention maps, and one relevance
pass, which evaluates every linear layer about four times (two forward-sized, two backward-sized matmuls):
about 4 forwards in all (4.0 x a batch-1 forward measured on DINOv2-S/14 at 224 px, CPU).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from caap.baselines.lrp_rules import diagonal_alpha1_beta0, linear_alpha1_beta0, matmul_rule, residual_add
from caap.targets import resolve_targets
from caap.validation import check_choice, check_int, check_method_images

LAYER_SCALE_RULES = ("linear", "identity")
_BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "ln1.hook_normalized",
                "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern", "attn.hook_z",
                "ln2.hook_normalized", "mlp.hook_post")


@dataclass
class LRPTrace:
    """What one T-Attr pass computed, per block ``l`` (index = block number; None where not computed).

    ``pattern``/``pattern_grad``/``attn_relevance``: ``[batch, head, query, key]``; ``resid_relevance[l]``:
    relevance at ``blocks.{l}.hook_resid_pre`` ``[batch, pos, d_model]`` (only when propagated to the
    input); ``head_relevance``: relevance entering the final norm ``[batch, pos, d_model]``.
    """

    targets: Tensor
    pattern: list = field(default_factory=list)
    pattern_grad: list = field(default_factory=list)
    attn_relevance: list = field(default_factory=list)
    resid_relevance: list = field(default_factory=list)
    head_relevance: Tensor | None = None


def refuse_avg_pooling(model, method: str) -> None:
    """Raise for ``global_pool="avg"`` models: ``method`` reads the CLS token's row."""
    if model.cfg.pooling != "token" or not model.cfg.has_cls_token:
        raise ValueError(f"{method} reads the CLS token's row of the attention; this model pools its output "
                         f"with global_pool={model.cfg.pooling!r} (has_cls_token={model.cfg.has_cls_token}), so "
                         f"no token carries the class decision. Use a CLS-token model (global_pool='token').")


def targets_before_forward(model, images: Tensor, target) -> Tensor | None:
    """Resolve ``target`` without a forward when possible: None when it is the predicted class of a model
    with a head (then take ``argmax`` of the logits of the forward the method runs anyway)."""
    if target is None and model.cfg.num_classes > 0:
        return None
    return resolve_targets(model, images, target)


class TransformerAttribution:
    """T-Attr (Chefer et al., CVPR 2021): LRP relevance of the attention times its gradient, rolled out.

    Options: ``start_layer`` (first block of the rollout, default 1: the authors' evaluation scripts,
    ``baselines/ViT/generate_visualizations.py`` (perturbation tests) and ``imagenet_seg_eval.py``
    (segmentation), call ``generate_LRP(..., start_layer=1)``; their demo notebook
    ``Transformer_explainability.ipynb`` uses the library default 0; a one-block model needs 0),
    ``layer_scale_rule`` (``"linear"`` default, or ``"identity"``; see the module docstring).
    Cost: 1 forward, 1 backward, and a relevance pass of about 4 forwards per batch.
    """

    def __init__(self, model, start_layer: int = 1, layer_scale_rule: str = "linear"):
        start_layer = check_int(start_layer, "start_layer", low=0, high=model.cfg.n_layers - 1)
        if getattr(model.cfg, "mlp_type", "mlp") != "mlp":
            raise ValueError(f"T-Attr's relevance rules cover the two-layer MLP (fc1, activation, fc2); this "
                             f"model has mlp_type={model.cfg.mlp_type!r} (a gated MLP), which has no rule here")
        check_choice(layer_scale_rule, "layer_scale_rule", LAYER_SCALE_RULES)
        self.model, self.start_layer, self.layer_scale_rule = model, start_layer, layer_scale_rule

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        trace = self.trace(images, target)
        return self.model.layout.to_grid(self.combine(trace))

    def combine(self, trace: LRPTrace) -> Float[Tensor, "batch n_patches"]:
        """Roll out ``Abar_l + I`` from ``start_layer`` to the last block; CLS row, patch columns."""
        joint = None
        for grad, rel in zip(trace.pattern_grad[self.start_layer:], trace.attn_relevance[self.start_layer:]):
            abar = (grad * rel).clamp(min=0).mean(1)
            abar = abar + torch.eye(abar.shape[-1], dtype=abar.dtype, device=abar.device)
            joint = abar if joint is None else abar @ joint
        return joint[:, 0, self.model.cfg.n_prefix_tokens:]

    def trace(self, images: Float[Tensor, "batch chan height width"], target=None,
              to_input: bool = False) -> LRPTrace:
        """Forward, attention gradients and relevance propagation down to ``start_layer``'s attention
        (down to ``blocks.0.hook_resid_pre`` with ``to_input=True``, which also fills ``resid_relevance``)."""
        refuse_avg_pooling(self.model, "T-Attr")
        check_method_images(self.model, images)
        with torch.inference_mode(False), torch.enable_grad():  # also works when called under inference_mode
            return self._trace(images.detach().clone(), target, to_input)

    def _forward(self, images: Tensor, target) -> tuple[Tensor, dict, list]:
        model = self.model
        targets = targets_before_forward(model, images, target)
        acts: dict[str, Tensor] = {}

        def keep(act, hook):
            acts[hook.name] = act

        names = [f"blocks.{l}.{h}" for l in range(model.cfg.n_layers) for h in _BLOCK_HOOKS] + ["hook_pre_logits"]
        with model.hooks(fwd_hooks=[(name, keep) for name in names]):
            logits = model(images.requires_grad_(True))  # every activation is in the graph
        if targets is None:
            targets = logits.detach().argmax(-1)
        patterns = [acts[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)]
        grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), patterns)
        return targets, {k: v.detach() for k, v in acts.items()}, list(grads)

    def _layer_scale(self, ls, branch_in, relevance: Tensor) -> Tensor:
        """LayerScale ``y = x * gamma``; ``branch_in()`` computes ``x`` only when the rule needs it."""
        if ls.gamma is None or self.layer_scale_rule == "identity":
            return relevance
        return diagonal_alpha1_beta0(branch_in(), ls.gamma.detach(), relevance)

    def _trace(self, images: Tensor, target, to_input: bool) -> LRPTrace:
        targets, acts, grads = self._forward(images, target)
        with torch.no_grad():
            return self._propagate(images, targets, acts, grads, to_input)

    def _propagate(self, images, targets, acts, grads, to_input) -> LRPTrace:
        model, n_layers = self.model, self.model.cfg.n_layers
        trace = LRPTrace(targets=targets, pattern_grad=grads, pattern=[None] * n_layers,
                         attn_relevance=[None] * n_layers, resid_relevance=[None] * n_layers)
        one_hot = torch.nn.functional.one_hot(targets, model.cfg.num_classes).to(images.dtype)
        pooled = linear_alpha1_beta0(acts["hook_pre_logits"], model.head.weight, one_hot)  # fc_norm: identity
        relevance = torch.zeros_like(acts["blocks.0.hook_resid_pre"])
        relevance[:, 0] = pooled  # CLS pooling; ln_final passes relevance unchanged
        trace.head_relevance = relevance
        stop = 0 if to_input else self.start_layer
        for l in range(n_layers - 1, stop - 1, -1):
            relevance = self._block(l, acts, relevance, trace, last=(l == stop and not to_input))
            if relevance is not None:
                trace.resid_relevance[l] = relevance
        return trace

    def _block(self, l: int, acts: dict, relevance: Tensor, trace: LRPTrace, last: bool) -> Tensor | None:
        """Relevance at ``blocks.{l}.hook_resid_post`` -> at ``hook_resid_pre`` (records ``R_A``)."""
        block, a = self.model.blocks[l], (lambda name: acts[f"blocks.{l}.{name}"])
        n_heads = block.attn.n_heads
        # MLP half: resid_post = resid_mid + ls2(fc2(act(fc1(ln2(resid_mid)))))
        r_mid, r_mlp = residual_add(a("hook_resid_mid"), a("hook_mlp_out"), relevance)
        r_mlp = self._layer_scale(block.ls2, lambda: block.mlp.fc2(a("mlp.hook_post")), r_mlp)
        r_mlp = linear_alpha1_beta0(a("mlp.hook_post"), block.mlp.fc2.weight, r_mlp)  # GELU: identity
        r_mlp = linear_alpha1_beta0(a("ln2.hook_normalized"), block.mlp.fc1.weight, r_mlp)  # ln2: identity
        relevance = r_mid + r_mlp  # the residual stream branches: relevance of both uses adds up
        # attention half: resid_mid = resid_pre + ls1(proj(A @ V))
        r_pre, r_attn = residual_add(a("hook_resid_pre"), a("hook_attn_out"), relevance)
        z = rearrange(a("attn.hook_z"), "b p h d -> b p (h d)")
        r_attn = self._layer_scale(block.ls1, lambda: block.attn.proj(z), r_attn)
        r_z = linear_alpha1_beta0(z, block.attn.proj.weight, r_attn)
        r_z = rearrange(r_z, "b p (h d) -> b h p d", h=n_heads)
        pattern = a("attn.hook_pattern")
        q, k, v = (rearrange(a(f"attn.hook_{t}"), "b p h d -> b h p d") for t in "qkv")
        r_pattern, r_v = matmul_rule(pattern, v, r_z)
        r_pattern, r_v = r_pattern / 2, r_v / 2
        trace.pattern[l], trace.attn_relevance[l] = pattern, r_pattern
        if last:
            return None
        r_q, r_kt = matmul_rule(q, k.transpose(-1, -2), r_pattern)  # softmax: identity; the scale cancels
        r_qkv = torch.stack([r_q / 2, r_kt.transpose(-1, -2) / 2, r_v])
        r_qkv = rearrange(r_qkv, "three b h p d -> b p (three h d)")
        r_x = linear_alpha1_beta0(a("ln1.hook_normalized"), block.attn.qkv.weight, r_qkv)  # ln1: identity
        return r_pre + r_x
