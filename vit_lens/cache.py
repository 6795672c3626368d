"""``ActivationCache`` with the final norm of pooled-feature models mapped onto TL's ``apply_ln``.

TransformerLens normalizes a residual stack for the unembedding with ``ln_final``'s cached per-position
scale. A timm model with ``fc_norm`` (average pooling, or ``fc_norm=True``) instead normalizes the *pooled*
vector, so its per-position streams have no ``ln_final.hook_scale``. Here, at the final layer, every
position is centred and divided by the pooled vector's scale (``fc_norm.hook_scale`` for the cached path;
the component's own pooled vector for ``recompute_ln``, e.g. ``accumulated_resid(apply_ln=True)`` and the
logit lens, through ``model.ln_final``, a :class:`~vit_lens.components.layer_norm.PooledFinalNorm`).
Centring is linear, so pooling the normalized positions gives exactly the normalized pooled vector:
per-position logit attributions *average over the patch positions* (avg pooling) or *select position 0*
(CLS pooling) to the model's logit. Every other case is TL's own code.
"""
from __future__ import annotations

import torch
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice


class ViTActivationCache(ActivationCache):
    """What ``HookedViT.run_with_cache`` returns."""

    def __getitem__(self, key):
        """TL's lookup, plus TransformerLens 4 hook names (``blocks.{l}.attn.hook_q_input``, ``..._grad``)."""
        if isinstance(key, str) and key not in self.cache_dict:
            from vit_lens.tl_compat import resolve_hook_name

            base, grad = (key[:-5], "_grad") if key.endswith("_grad") else (key, "")
            if resolve_hook_name(base) + grad in self.cache_dict:
                return self.cache_dict[resolve_hook_name(base) + grad]
        return super().__getitem__(key)

    def apply_slice_to_batch_dim(self, batch_slice):
        """TL's, returning a ViTActivationCache (TL's builds a plain ActivationCache)."""
        out = super().apply_slice_to_batch_dim(batch_slice)
        return ViTActivationCache(out.cache_dict, self.model, has_batch_dim=out.has_batch_dim)

    def _pooled_final_norm(self, layer) -> bool:
        cfg = self.model.cfg
        return layer in (None, -1, cfg.n_layers) and cfg.fc_norm and not cfg.final_norm

    def _get_cached_ln_scale(self, layer, mlp_input, pos_slice, batch_slice=None):
        """TL's helper for the fused LN + projection path: the pooled scale at every position here."""
        if not self._pooled_final_norm(layer):
            return super()._get_cached_ln_scale(layer, mlp_input, pos_slice, batch_slice)
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        scale = self["fc_norm.hook_scale"]
        if batch_slice is not None and self.has_batch_dim:
            scale = batch_slice.apply(scale)
        return scale if pos_slice.mode == "int" else scale.unsqueeze(-2)

    def apply_ln_to_stack(self, residual_stack, layer=None, mlp_input=False, pos_slice=None, batch_slice=None,
                          has_batch_dim=True, recompute_ln=False):
        if not self._pooled_final_norm(layer):
            return super().apply_ln_to_stack(residual_stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                             batch_slice=batch_slice, has_batch_dim=has_batch_dim,
                                             recompute_ln=recompute_ln)
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln:
            n_tokens = self.model.cfg.n_tokens
            if pos_slice.mode != "identity" or residual_stack.shape[-2] != n_tokens:
                raise ValueError(
                    f"recompute_ln on a model whose final norm is fc_norm on the pooled features needs every "
                    f"position ({n_tokens}) to pool; got pos_slice={pos_slice.slice!r} and a stack of shape "
                    f"{tuple(residual_stack.shape)}. Slice positions after applying the norm.")
            comps = residual_stack if has_batch_dim else residual_stack[:, None]
            out = torch.stack([self.model.ln_final(c) for c in comps])
            return out if has_batch_dim else out[:, 0]
        centred = residual_stack - residual_stack.mean(-1, keepdim=True)
        scale = self["fc_norm.hook_scale"]  # [batch, 1] (or [1] without a batch dim)
        if self.has_batch_dim:
            scale = batch_slice.apply(scale)
        if pos_slice.mode != "int":  # the stack keeps a position axis: one scale for every position
            scale = scale.unsqueeze(-2)
        return centred / scale
