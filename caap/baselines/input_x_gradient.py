"""Input x Gradient on the patch tokens, IxG+ (SkipPLUS) and Libra IxG+ (LibraGrad).

Facts from the authors' code (NightMachinery/decompv-libragrad-v1 with its timm fork
pytorch-image-models-libragrad-v1): IxG is taken on the tokens fed to the first block (their
``blocks__0__CAT``), IxG+ sums the channel-summed IxG of every block's input from block ``L // 2`` on
(their ``CAT_s:sum_sum_f{L//2}``), and the explained score is the softmax probability of the target
class (their default ``softmax_mode="S1"``; ``score="logit"`` or a callable on the output, e.g. for a
headless model, is offered). All three cost one forward
and one backward per batch.

One named deviation: for CLIP towers (``ln_pre``) the reference takes IxG *before* ``norm_pre``. IxG on
the input of a LayerNorm vanishes (LN is scale invariant, so ``sum_d x_d df/dx_d = 0`` up to its eps by
Euler's theorem), so we take the tokens entering block 0, after ``ln_pre``; identical for every other
family.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from caap.baselines.base import GradientMethod, GradientScore, check_score
from caap.validation import check_int

LIBRA_RULES = ("layernorm", "attention", "activation")

Hook = tuple[str, Callable]


def _gate(act_fn: str, pre: Tensor) -> Tensor:
    """``g(x)`` with ``act(x) = x * g(x)`` for the activations HookedViT supports."""
    if act_fn == "gelu":
        return 0.5 * (1.0 + torch.erf(pre / math.sqrt(2.0)))
    if act_fn == "gelu_tanh":
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (pre + 0.044715 * pre.pow(3))))
    if act_fn == "quick_gelu":
        return torch.sigmoid(1.702 * pre)
    raise ValueError(f"LibraGrad's activation rule has no gate for act_fn={act_fn!r}; "
                     f"supported: gelu, gelu_tanh, quick_gelu")


def libra_hooks(model, rules: tuple[str, ...] = LIBRA_RULES) -> list[Hook]:
    """Forward hooks giving LibraGrad's backward rules (Mehri et al., CVPR 2025, preset "LibraGrad" =
    gradient brand "LX1") without changing any forward value:

    * ``"layernorm"`` (LN rule): every LayerNorm's standard deviation is a constant in the backward
      (``ln*.hook_scale`` returns it detached; the mean subtraction keeps its gradient), so LN is linear.
    * ``"attention"`` (attention rule): the attention pattern is a constant in the backward (the authors
      detach q and k), so gradients flow only through the values.
    * ``"activation"`` (gate rule, "LineX_ZO"): ``act(x) = x * g(x)`` with the gate ``g`` held constant,
      so the backward of GELU/QuickGELU is ``g(x) = act(x) / x`` instead of ``act'(x)``.

    With all three the network is linear in its input tokens and biases for the backward, which gives
    FullGrad-completeness (the paper's criterion). The hooks force the explicit LN and attention paths.
    """
    unknown = set(rules) - set(LIBRA_RULES)
    if unknown:
        raise ValueError(f"rules must be a subset of {LIBRA_RULES}; got {tuple(rules)!r}")
    hooks: list[Hook] = []
    n_layers = model.cfg.n_layers
    if "layernorm" in rules:
        hooks += [(name, lambda scale, hook: scale.detach()) for name in model.hook_dict
                  if name.endswith("hook_scale")]
    if "attention" in rules:
        hooks += [(f"blocks.{l}.attn.hook_pattern", lambda pattern, hook: pattern.detach()) for l in range(n_layers)]
    if "activation" in rules:
        act_fn, pres = model.cfg.act_fn, {}
        if getattr(model.cfg, "mlp_type", "mlp") != "mlp" or act_fn not in ("gelu", "gelu_tanh", "quick_gelu"):
            raise ValueError(f"LibraGrad's activation rule is implemented for plain MLPs with gelu, gelu_tanh or "
                             f"quick_gelu; this model has mlp_type={getattr(model.cfg, 'mlp_type', 'mlp')!r}, "
                             f"act_fn={act_fn!r} (gated MLPs need the authors' extra product rule). Pass "
                             f"rules=('layernorm', 'attention') to run without it")

        def keep_pre(layer):
            def hook(pre, hook):
                pres[layer] = pre
            return hook

        def gate_post(layer):
            def hook(post, hook):
                pre = pres.pop(layer)
                with torch.no_grad():
                    gate = _gate(act_fn, pre)
                return post.detach() + (pre - pre.detach()) * gate  # value: post; gradient: gate
            return hook

        for l in range(n_layers):
            hooks += [(f"blocks.{l}.mlp.hook_pre", keep_pre(l)), (f"blocks.{l}.mlp.hook_post", gate_post(l))]
    return hooks


class _TokenInputXGradient(GradientMethod):
    """Channel-summed input x gradient of the target score on patch tokens, summed over sites."""

    def __init__(self, model, layers: list[int], rules: tuple[str, ...], score: GradientScore):
        if isinstance(rules, str):
            raise ValueError(f"rules must be a tuple of rule names from {LIBRA_RULES}; got the string {rules!r}")
        self.model, self.layers, self.score = model, layers, check_score(score)
        self.rules = tuple(rules)
        libra_hooks(model, self.rules)  # validates the rules now rather than at the first call

    def _attribute(self, images, target):
        model, n_patches = self.model, self.model.cfg.n_patches
        images = images.detach().requires_grad_()  # a graph even when the weights are frozen
        acts: dict[str, Tensor] = {}

        def keep(act, hook):
            acts[hook.name] = act

        sites = [f"blocks.{l}.hook_resid_pre" for l in self.layers]
        with model.hooks(fwd_hooks=[(name, keep) for name in sites] + libra_hooks(model, self.rules)):
            logits = model(images)
        grads = torch.autograd.grad(self.explained_score(logits, images, target).sum(), [acts[name] for name in sites])
        total = sum((acts[name].detach()[:, -n_patches:] * g[:, -n_patches:]).sum(-1)
                    for name, g in zip(sites, grads))
        return model.layout.to_grid(total)


def _skip_layers(model, start_layer: int | None) -> list[int]:
    n_layers = model.cfg.n_layers
    start = check_int(start_layer, "start_layer", low=0, high=n_layers - 1, none_ok=True)
    return list(range(n_layers // 2 if start is None else start, n_layers))


class InputXGradient(_TokenInputXGradient):
    """IxG on tokens: ``sum_d t_{p,d} * dS/dt_{p,d}`` for the patch tokens ``t`` entering block 0
    (``blocks.0.hook_resid_pre``: patch plus position embedding, after CLIP's ``ln_pre``), ``S`` the
    target's softmax probability (``score``: ``"prob"`` default as in the LibraGrad code, ``"logit"`` or a
    callable on the output ``[batch, n_out] -> [batch]``).
    One forward, one backward."""

    def __init__(self, model, score: GradientScore = "prob"):
        super().__init__(model, [0], (), score)


class IxGPlus(_TokenInputXGradient):
    """IxG+ (SkipPLUS; Mehri et al., "Skip the First Few Layers to Better Explain Vision Transformers",
    CVPR-W 2024): the channel-summed IxG of every block's input ``blocks.{l}.hook_resid_pre`` summed over
    ``l = start_layer .. L-1`` on the patch tokens. Defaults: ``start_layer = L // 2`` (the authors'
    setting), ``score="prob"``. One forward, one backward."""

    def __init__(self, model, start_layer: int | None = None, score: GradientScore = "prob"):
        super().__init__(model, _skip_layers(model, start_layer), (), score)


class LibraIxGPlus(_TokenInputXGradient):
    """Libra IxG+ (LibraGrad; Mehri et al., "Balancing Gradient Flow for Universally Better Vision
    Transformer Attributions", CVPR 2025): IxG+ computed with LibraGrad's backward rules (see
    :func:`libra_hooks`: LayerNorm std, attention pattern and activation gate held constant in the
    backward). ``rules`` selects a subset for ablations; defaults: all three rules, ``start_layer = L // 2``,
    ``score="prob"``. One forward, one backward (explicit LN and attention paths)."""

    def __init__(self, model, start_layer: int | None = None, rules: tuple[str, ...] = LIBRA_RULES,
                 score: GradientScore = "prob"):
        super().__init__(model, _skip_layers(model, start_layer), rules, score)
