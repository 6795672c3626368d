"""Transition Attention Maps (TAM; Yuan, Li, Xiong, Cao & Dou, NeurIPS-W XAI4Debugging 2021).

The CLS token's information flow is a Markov chain over the tokens: the state starts as the head-averaged
last-block attention row of CLS, ``s = mean_h A_L[CLS, :]``, and moves backwards through the blocks
``l = L-1, ..., start_layer`` (1-based: every block below the last from ``start_layer`` up) with the
residual connection, ``s <- s (mean_h A_l + I)`` (not renormalized). The state is weighted by the
integrated gradient of the target logit w.r.t. the last block's attention,
``W = relu(mean_{alpha} dlogit/dA_L(alpha * x))`` head-averaged on the CLS row, with ``alpha`` in
``linspace(0, 1, steps)`` (the zero baseline in normalized pixel space, both ends included, plain mean);
the map is ``s * W`` over the patch columns (register columns dropped).

Follows XianrenYty/Transition_Attention_Maps (``transition_attention_maps`` with ``steps=20``,
``with_integral=True``, ``first_state=False``; ``start_layer`` 0-based like theirs). Default
``start_layer=0``, as in the authors' deletion/insertion evaluation (``baselines/ViT/del_ins.py``, whose
own ``transition_attention_maps`` defaults to 0 and is called without it), the protocol ``caap bench``
runs. Their library and demo code (``interpret_methods.py``) default to 4, as do their segmentation,
energy-pointing-game and positive/negative-perturbation scripts (``imagenet_seg_eval.py``,
``energy_point_game.py``, ``generate_visualizations.py``); pass ``start_layer=4`` for those.
``global_pool="avg"`` is refused (the chain starts from the CLS row).

Cost per batch: ``steps`` forwards (the ``alpha = 1`` one also caches the attention of every block) and
``steps`` backwards through the last block and the head only (the blocks below run without a graph):
about ``steps`` forwards in all (18.9 x a forward at ``steps=20``, DINOv2-S/14, 224 px, CPU).
"""
from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from caap.baselines.lrp import refuse_avg_pooling, targets_before_forward
from caap.validation import check_int, check_method_images


class TransitionAttentionMaps:
    """TAM: the CLS Markov-chain state over the attention, weighted by the integrated attention gradient.

    Options: ``start_layer`` (lowest block of the chain, default 0 as in the authors' ``del_ins.py``),
    ``steps`` (integration points, default 20, at least 2). Cost: ``steps`` forwards and ``steps``
    last-block backwards per batch.
    """

    def __init__(self, model, start_layer: int = 0, steps: int = 20):
        start_layer = check_int(start_layer, "start_layer", low=0, high=model.cfg.n_layers - 1)
        steps = check_int(steps, "steps", low=2)  # alpha = linspace(0, 1, steps) must reach the image
        self.model, self.start_layer, self.steps = model, start_layer, steps

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        refuse_avg_pooling(self.model, "TAM")
        check_method_images(self.model, images)  # uint8 would silently become float in images * alpha
        with torch.inference_mode(False), torch.enable_grad():  # also works when called under inference_mode
            states, weights = self.state_and_weights(images.detach().clone(), target)
        return self.model.layout.to_grid((states * weights)[:, self.model.cfg.n_prefix_tokens:])

    def state_and_weights(self, images: Tensor, target) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
        """The chain state ``s`` and the integrated-gradient weights ``W`` over all tokens."""
        model, last = self.model, self.model.cfg.n_layers - 1
        targets = targets_before_forward(model, images, target)
        total, patterns = None, None
        for alpha in torch.linspace(1, 0, self.steps, dtype=torch.float64).tolist():  # alpha = 1 first
            grad, step_patterns, targets = self._step(images * alpha, targets, keep_all=patterns is None)
            patterns = step_patterns if patterns is None else patterns
            total = grad if total is None else total + grad
        weights = (total / self.steps).clamp(min=0).mean(1)[:, 0]
        state = patterns[last].mean(1)[:, 0]
        for l in range(last - 1, self.start_layer - 1, -1):
            state = (state[:, None] @ patterns[l].mean(1))[:, 0] + state
        return state, weights

    def _step(self, scaled: Tensor, targets: Tensor | None, keep_all: bool):
        """One integration point: gradient of the target logit w.r.t. the last block's attention
        ``[batch, head, pos, pos]``, the attention of every block when ``keep_all``, and the targets
        (the predicted classes when ``targets`` is None)."""
        model, last = self.model, self.model.cfg.n_layers - 1
        kept: dict[int, Tensor] = {}

        def keep(layer):
            def hook(pattern, hook):
                if layer == last:  # a leaf: the backward stops at the last block's attention
                    pattern = pattern.detach().requires_grad_(True)
                kept[layer] = pattern
                return pattern
            return hook

        layers = range(model.cfg.n_layers) if keep_all else [last]
        with model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", keep(l)) for l in layers]):
            with torch.no_grad():
                resid = model.embed(scaled)
                for block in model.blocks[:last]:
                    resid = block(resid)
            logits = model.forward_from_resid(resid, last)
        if targets is None:
            targets = logits.detach().argmax(-1)
        grad = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), kept[last])[0]
        return grad, {l: p.detach() for l, p in kept.items()}, targets
