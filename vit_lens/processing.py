"""TransformerLens's weight processing for HookedViT, each option exact on the model's outputs.

Semantics follow ``transformer_lens.weight_processing.ProcessWeights`` (applied in its order: fold_ln,
center_writing_weights, center_unembed, fold_value_biases, refactor_factored_attn_matrices), on HookedViT's
own parameters, computed in float64 and stored back in the model's dtype. In place; the model is returned.
What each option changes (everything not listed keeps its value; logits within 1e-5 relative, tested for
every family):

* ``fold_ln``: each affine LayerNorm's weight and bias move into the layers that read it: ``ln1`` into
  ``qkv`` (``W_Q/W_K/W_V``, ``b_Q/b_K/b_V``), ``ln2`` into ``fc1`` (and the gate), the final norm (``ln_final``,
  or ``fc_norm`` for pooled features) into the classifier (every ``d_model`` chunk of a ``cls_mean`` head);
  the reading weights are then centred over ``d_model`` (TL's ``center_weights``; exact, as they read
  centred vectors). The norms become :class:`~vit_lens.components.LayerNormPre` and ``cfg.normalization_type
  == "LNPre"``: ``ln*.hook_normalized`` / ``fc_norm.hook_normalized`` / ``ln_final.hook_normalized`` no longer
  include the affine; ``hook_q/k/v``, ``mlp.hook_pre`` and the logits are unchanged; ``tl_parameters()`` drops
  the norm keys. CLIP's ``ln_pre`` stays affine (its output *is* the residual stream; nothing reads it
  through one layer). Refused for a headless model with a final norm (no classifier to fold it into).
* ``center_writing_weights``: everything that writes to the residual stream is made mean-zero over
  ``d_model``: the patch embedding (``W_E``, ``b_E``), CLS/register tokens, ``W_pos``, and each branch
  output (``W_O``/``b_O``, ``W_out``/``b_out``); LayerScale is folded into ``proj``/``fc2`` first (its gamma
  becomes ones). Exact because every reader of the stream is a LayerNorm (refused for a model without a
  final norm). Changes ``hook_embed``, ``hook_pos_embed``, ``hook_attn_out``, ``hook_mlp_out``,
  ``attn.hook_result``, ``hook_resid_*`` (each now centred), not the norms' outputs. With CLIP's ``ln_pre`` the
  stream starts from ``ln_pre``'s output: its bias is centred, its weighted normalized part cannot be (it
  depends on the image), so the stream there is not mean-zero.
* ``center_unembed``: ``W_U``/``b_U`` (the classifier) centred over the classes. Logits shift by a per-image
  constant (``logits - logits.mean(-1)`` and the softmax are unchanged); nothing else changes. Refused for
  a headless model.
* ``fold_value_biases``: ``b_V`` moves into ``b_O`` (``b_O += sum_h b_V[h] @ W_O[h]``; attention rows sum to
  one), ``b_V = 0``: ``hook_v``, ``hook_z``, ``attn.hook_result`` lose the value bias; ``hook_attn_out`` is
  unchanged.
* ``refactor_factored_attn_matrices``: per head, ``[W_Q; b_Q]`` and ``[W_K; b_K]`` are refactored to an even
  split of their product (``FactoredMatrix.make_even``) and ``W_V``/``W_O`` to ``U S`` / ``Vh^T`` of the OV
  SVD, ``b_V`` folded into ``b_O``; LayerScale is folded into ``proj``. ``hook_q``/``hook_k``/``hook_v``/
  ``hook_z`` change; the scores, patterns and ``hook_attn_out`` do not.
"""
from __future__ import annotations

from typing import Any

import torch
from einops import einsum, rearrange
from torch import Tensor, nn

from vit_lens.components.layer_norm import LayerNormPre, PooledFinalNorm

OPTIONS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases",
           "refactor_factored_attn_matrices")


def pop_processing_options(kwargs: dict) -> dict[str, Any]:
    """Remove the weight-processing options from a constructor's ``**kwargs`` and return them."""
    return {name: kwargs.pop(name) for name in OPTIONS if name in kwargs}


def process_weights(model, *, fold_ln: bool = False, center_writing_weights: bool = False,
                    center_unembed: bool = False, fold_value_biases: bool = False,
                    refactor_factored_attn_matrices: bool = False):
    """Apply TransformerLens's weight processing to a HookedViT in place (see the module docstring for
    what each option changes in the cache) and return it. Cost: a few matmuls per layer."""
    options = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                   fold_value_biases=fold_value_biases, refactor_factored_attn_matrices=refactor_factored_attn_matrices)
    for name, value in options.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool; got {value!r}")
    if not any(options.values()):
        return model
    _check_processable(model, options)
    with torch.no_grad():
        if fold_ln and model.cfg.normalization_type == "LN":
            _fold_ln(model)
        if center_writing_weights:
            _center_writing_weights(model)
        if center_unembed:
            _center_unembed(model)
        if fold_value_biases:
            _fold_value_biases(model, recentre=center_writing_weights)
        if refactor_factored_attn_matrices:
            _refactor_factored_attn_matrices(model)
    model.setup()  # replaced norms bring new hook points
    model._sync_cfg_device()
    return model


def _check_processable(model, options: dict) -> None:
    cfg = model.cfg
    hooked = [name for name, point in model.hook_dict.items() if point._forward_hooks or point._backward_hooks]
    if hooked:
        raise ValueError(f"process_weights: remove the hooks first (they sit on {hooked[:3]}; processing replaces "
                         f"hook points and changes what some of them see): model.reset_hooks(including_permanent=True)")
    has_final_norm = cfg.final_norm or cfg.fc_norm
    if options["fold_ln"] and model.head is None and has_final_norm and cfg.normalization_type == "LN":
        raise ValueError("fold_ln: this model is headless (num_classes=0): its output is the final norm's affine "
                         "output, and there is no classifier to fold the norm's weight and bias into")
    if options["center_writing_weights"] and not has_final_norm:
        raise ValueError("center_writing_weights: this model has no final norm (neither ln_final nor fc_norm), so "
                         "the head reads the residual stream's mean and centring would change the output")
    if options["center_unembed"] and model.head is None:
        raise ValueError("center_unembed: this model is headless (num_classes=0): its output is the pooled features, "
                         "not logits, and there is no unembedding to centre")


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def _set(param: Tensor, value: Tensor) -> None:
    param.copy_(value.to(param.dtype))


def _ensure_bias(linear: nn.Linear) -> Tensor:
    if linear.bias is None:
        w = linear.weight
        linear.bias = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))
    return linear.bias


def _fold_norm_into_linear(w: Tensor, b: Tensor, linear: nn.Linear, chunk: slice = slice(None)) -> None:
    """``linear(norm(x))`` -> ``linear'(normalize(x))``: scale the input columns ``chunk`` by the norm weight,
    push the norm bias through into the linear bias, then centre those columns over their input axis."""
    weight, w, b = _f64(linear.weight[:, chunk]), _f64(w), _f64(b)
    bias = _f64(_ensure_bias(linear)) + weight @ b
    weight = weight * w
    weight = weight - weight.mean(1, keepdim=True)
    _set(linear.bias, bias)
    linear.weight[:, chunk] = weight.to(linear.weight.dtype)


def _fold_ln(model) -> None:
    cfg, d = model.cfg, model.cfg.d_model
    for block in model.blocks:
        _fold_norm_into_linear(block.ln1.w, block.ln1.b, block.attn.qkv)
        readers = [block.mlp.fc1_g, block.mlp.fc1_x] if cfg.gated_mlp else [block.mlp.fc1]
        for linear in readers:
            _fold_norm_into_linear(block.ln2.w, block.ln2.b, linear)
        block.ln1, block.ln2 = _pre_like(block.ln1), _pre_like(block.ln2)
    norm = model.final_norm_module()
    if norm is not None:
        for i in range(cfg.d_pooled // d):  # a cls_mean head reads several normed d_model vectors
            _fold_norm_into_linear(norm.w, norm.b, model.head, slice(i * d, (i + 1) * d))
    if cfg.fc_norm:
        model.fc_norm = _pre_like(model.fc_norm)
        model.ln_final = PooledFinalNorm(model.fc_norm, model.pool)
    elif cfg.final_norm:
        model.ln_final = _pre_like(model.ln_final)
    cfg.qkv_bias = True  # folding ln1's bias gives q, k, v a bias
    cfg.normalization_type = "LNPre"


def _pre_like(norm) -> LayerNormPre:
    w = norm.w
    return LayerNormPre(w.shape[0], norm.eps).to(device=w.device, dtype=w.dtype)


def _fold_layer_scale(layer_scale, linear: nn.Linear) -> None:
    """Move a LayerScale gamma into the linear layer before it (gamma becomes ones)."""
    gamma = getattr(layer_scale, "gamma", None)
    if gamma is None:
        return
    g = _f64(gamma)
    _set(linear.weight, _f64(linear.weight) * g[:, None])
    _set(linear.bias, _f64(linear.bias) * g)
    gamma.fill_(1.0)


def _centre(param: Tensor | None, dim: int) -> None:
    if param is not None:
        value = _f64(param)
        _set(param, value - value.mean(dim, keepdim=True))


def _center_writing_weights(model) -> None:
    _centre(model.patch_embed.proj.weight, 0)
    _centre(model.patch_embed.proj.bias, 0)
    _centre(model.cls_token, -1)
    _centre(model.reg_token, -1)
    _centre(model.pos_embed.W_pos, -1)
    if model.ln_pre is not None:
        _centre(model.ln_pre.b, 0)
    for block in model.blocks:
        for layer_scale, linear in ((block.ls1, block.attn.proj), (block.ls2, block.mlp.fc2)):
            _fold_layer_scale(layer_scale, linear)
            _centre(linear.weight, 0)
            _centre(linear.bias, 0)


def _center_unembed(model) -> None:
    _centre(model.head.weight, 0)
    _centre(model.head.bias, 0)


def _value_slice(attn) -> slice:
    hd = attn.n_heads * attn.d_head
    return slice(2 * hd, 3 * hd)


def _fold_value_biases(model, recentre: bool) -> None:
    for block in model.blocks:
        attn = block.attn
        if attn.qkv.bias is None:
            continue
        b_v = _f64(attn.qkv.bias[_value_slice(attn)])
        bias = _f64(attn.proj.bias) + _f64(attn.proj.weight) @ b_v  # before LayerScale, as proj's own bias
        if recentre:  # TL re-centres b_O after folding when writing weights are centred (gamma is one then)
            bias = bias - bias.mean()
        _set(attn.proj.bias, bias)
        attn.qkv.bias[_value_slice(attn)] = 0.0


def _refactor_factored_attn_matrices(model) -> None:
    from transformer_lens import FactoredMatrix

    for block in model.blocks:
        attn = block.attn
        _fold_layer_scale(block.ls1, attn.proj)
        hd, h = attn.n_heads * attn.d_head, attn.n_heads
        q_eff, k_eff = (torch.cat([_f64(w), _f64(b)[:, None]], dim=1)
                        for w, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K)))  # [head, d_model + 1, d_head]
        q_even, k_even_t = FactoredMatrix(q_eff, k_eff.transpose(-1, -2)).make_even().pair
        k_even = k_even_t.transpose(-1, -2)
        w_v, b_v, w_o = _f64(attn.W_V), _f64(attn.b_V), _f64(attn.W_O)
        b_o = _f64(attn.proj.bias) + einsum(b_v, w_o, "h d, h d m -> m")
        u, s, v = FactoredMatrix(w_v, w_o).svd()  # u, v [head, d_model, d_head], s [head, d_head]
        new_w_v, new_w_o = u * s[:, None, :], v.transpose(-1, -2)
        weight = torch.cat([rearrange(w[:, :-1], "h m d -> (h d) m") for w in (q_even, k_even)]
                           + [rearrange(new_w_v, "h m d -> (h d) m")])
        bias = torch.cat([rearrange(q_even[:, -1], "h d -> (h d)"), rearrange(k_even[:, -1], "h d -> (h d)"),
                          torch.zeros(hd, dtype=torch.float64, device=weight.device)])
        _set(attn.qkv.weight, weight)
        _set(_ensure_bias(attn.qkv), bias)
        _set(attn.proj.weight, rearrange(new_w_o, "h d m -> m (h d)", h=h))
        _set(attn.proj.bias, b_o)
    model.cfg.qkv_bias = True
