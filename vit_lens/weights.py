"""TransformerLens's model-level weight surface for HookedViT (a mixin).

Conventions (shapes as in TL's ``HookedTransformer``):

* ``W_Q/W_K/W_V`` ``[layer, head, d_model, d_head]``, ``b_Q/b_K/b_V`` ``[layer, head, d_head]``,
  ``W_O`` ``[layer, head, d_head, d_model]``, ``b_O`` ``[layer, d_model]``, ``W_in`` ``[layer, d_model, d_mlp]``,
  ``b_in``, ``W_out`` ``[layer, d_mlp, d_model]``, ``b_out``; ``QK``/``OV`` FactoredMatrices. ``W_O``, ``b_O``,
  ``W_out``, ``b_out`` include LayerScale (folded into the views; parameters unchanged). ``W_Q``/``W_K``/
  ``W_V``/``W_in`` read the LayerNorm *output* (``ln1``/``ln2`` weights not folded in, TL's
  ``fold_ln=False``).
* ``W_E`` ``[in_chans * patch_h * patch_w, d_model]`` and ``b_E``: the patch embedding as a matrix on
  patches flattened in ``(chan, row, col)`` order; ``W_pos`` ``[n_tokens, d_model]``: the position
  embedding at every residual position (zeros on the prefix under ``no_embed_class``).
* ``W_U`` ``[d_model, d_vocab_out]``, ``b_U``: the classifier (identity and zeros for a headless model,
  whose output is the pooled features), *not* folded with the final norm, so
  ``final_norm_output @ W_U + b_U`` is the model's output (TL's ``fold_ln=False`` unembed).
* ``tokens_to_residual_directions(c)`` = final-norm weight ⊙ ``W_U[:, c]``: the direction TL returns for a
  model loaded with ``fold_ln=True``, i.e. the one to dot with the *cached-scale* normalized stream that
  ``ActivationCache.apply_ln_to_stack`` / ``logit_attrs`` produce (centred, divided by the final norm's
  scale, no affine). Then ``sum(logit_attrs) + folded_b_U[c] == logit[c]``.
"""
from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn


class TransformerLensWeights:
    """Mixin for HookedViT: TL weight stacks, unembedding and residual directions."""

    def _stack(self, attr: str) -> Tensor:
        owner, name = attr.split(".")
        return torch.stack([getattr(getattr(block, owner), name) for block in self.blocks])

    # ------------------------------------------------------------------ attention / MLP stacks
    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("attn.W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("attn.W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack("attn.W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack("attn.W_O")

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("attn.b_Q")

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("attn.b_K")

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack("attn.b_V")

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("attn.b_O")

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack("mlp.W_in")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack("mlp.b_in")

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack("mlp.W_out")

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack("mlp.b_out")

    @property
    def QK(self):
        """``FactoredMatrix`` ``[layer, head, d_model, d_model]``: ``W_Q @ W_K^T``."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self):
        """``FactoredMatrix`` ``[layer, head, d_model, d_model]``: ``W_V @ W_O`` (with LayerScale)."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    # ------------------------------------------------------------------ embedding
    @property
    def W_E(self) -> Float[Tensor, "d_patch d_model"]:
        """Patch embedding as a matrix: ``rearrange(images, "b c (gh ph) (gw pw) -> b (gh gw) (c ph pw)")
        @ W_E + b_E`` are the patch tokens."""
        return rearrange(self.patch_embed.proj.weight, "m c ph pw -> (c ph pw) m")

    @property
    def b_E(self) -> Float[Tensor, "d_model"]:
        return self.patch_embed.proj.bias

    @property
    def W_pos(self) -> Float[Tensor, "n_tokens d_model"]:
        return self.pos_embed.full()

    # ------------------------------------------------------------------ unembedding
    def _check_single_vector_head(self) -> None:
        if self.cfg.pooling == "cls_mean":
            raise ValueError(f"W_U/b_U and the TransformerLens unembedding act on one d_model vector, but this model's "
                             f"head (pooling='cls_mean') reads {self.cfg.d_pooled} features (CLS of the last blocks "
                             f"and the patch mean); use model.head on hook_pre_logits instead")

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab_out"]:
        self._check_single_vector_head()
        if self.head is None:
            p = self.patch_embed.proj.weight
            return torch.eye(self.cfg.d_model, device=p.device, dtype=p.dtype)
        return self.head.weight.T

    @property
    def b_U(self) -> Float[Tensor, "d_vocab_out"]:
        self._check_single_vector_head()
        if self.head is None:
            return self.patch_embed.proj.weight.new_zeros(self.cfg.d_model)
        return self.head.bias

    @property
    def unembed(self) -> nn.Module:
        """The classifier (TL's ``unembed``); identity for a headless model."""
        return self.head if self.head is not None else nn.Identity()

    def final_norm_module(self) -> nn.Module | None:
        """The LayerNorm right before the classifier: ``ln_final`` (per position) or ``fc_norm`` (on the
        pooled features), or None."""
        if self.cfg.fc_norm:
            return self.fc_norm
        return self.ln_final if self.cfg.final_norm else None

    @property
    def folded_b_U(self) -> Float[Tensor, "d_vocab_out"]:
        """``b_U`` plus the final norm's bias pushed through ``W_U``: TL's ``b_U`` under ``fold_ln=True``,
        the input-independent term missing from ``logit_attrs`` sums."""
        norm = self.final_norm_module()
        return self.b_U if norm is None else self.b_U + norm.b @ self.W_U

    def tokens_to_residual_directions(
        self, tokens: int | str | Int[Tensor, "..."]
    ) -> Float[Tensor, "... d_model"]:
        """Residual-stream direction of each class (``d_vocab_out`` index or class name): the final
        norm's weight times the class's ``W_U`` column (see the module docstring)."""
        norm = self.final_norm_module()
        W = self.W_U if norm is None else norm.w[:, None] * self.W_U
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            return rearrange(W[:, tokens.to(W.device)], "d ... -> ... d")
        if isinstance(tokens, Tensor):
            tokens = int(tokens.item())
        if not isinstance(tokens, int) or not 0 <= tokens < W.shape[1]:
            raise ValueError(f"tokens must be class indices in [0, {W.shape[1]}) or class names; got {tokens!r}")
        return W[:, tokens]

    def to_single_token(self, name: str) -> int:
        """Class index of a class name (``cfg.class_names``), TL's ``to_single_token`` for a classifier."""
        names = self.cfg.class_names
        if not names or name not in names:
            hint = f"one of {names[:5]}..." if names else "an integer index (this model has no cfg.class_names)"
            raise ValueError(f"unknown class name {name!r}; pass {hint}")
        return names.index(name)

    def accumulated_bias(self, layer: int, mlp_input: bool = False,
                         include_mlp_biases: bool = True) -> Float[Tensor, "d_model"]:
        """Sum of ``b_O`` (and ``b_out``) of blocks ``< layer`` (plus ``b_O`` of ``layer`` if ``mlp_input``),
        LayerScale included, as TL's ``HookedTransformer.accumulated_bias``."""
        n = self.cfg.n_layers
        if not 0 <= layer <= n or (mlp_input and layer == n):
            raise ValueError(f"layer must be in [0, {n}] ([0, {n - 1}] with mlp_input=True); got {layer}")
        total = self.patch_embed.proj.weight.new_zeros(self.cfg.d_model)
        for block in self.blocks[:layer]:
            total = total + block.attn.b_O
            if include_mlp_biases:
                total = total + block.mlp.b_out
        if mlp_input:
            total = total + self.blocks[layer].attn.b_O
        return total

    def tl_parameters(self) -> dict[str, Tensor]:
        """TransformerLens state-dict names -> weights, as ``TransformerBridge.tl_parameters()`` (what TL's
        ``SVDInterpreter`` reads): ``embed.W_E``/``b_E``, ``pos_embed.W_pos``, ``blocks.{l}.attn.W_Q`` ... ``b_O``
        (LayerScale in ``W_O``/``b_O``), ``blocks.{l}.mlp.W_in``/``b_in``/``W_out``/``b_out`` (+ ``W_gate``/
        ``b_gate``), ``blocks.{l}.ln1.w``/``b``, ``ln2.*``, ``ln_final.*`` (the final norm, ``fc_norm`` for
        pooled-feature models) while the norms are affine (gone after ``fold_ln``, as in TL), and
        ``unembed.W_U``/``b_U`` (single-vector heads). Views built on each call: ``state_dict`` and
        ``load_state_dict`` keep HookedViT's own names."""
        out = {"embed.W_E": self.W_E, "embed.b_E": self.b_E, "pos_embed.W_pos": self.W_pos}
        affine = self.cfg.normalization_type == "LN"
        for l, block in enumerate(self.blocks):
            for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
                out[f"blocks.{l}.attn.{name}"] = getattr(block.attn, name)
            mlp_names = ("W_gate", "b_gate", "W_in", "b_in", "W_out", "b_out") if self.cfg.gated_mlp else \
                ("W_in", "b_in", "W_out", "b_out")
            for name in mlp_names:
                out[f"blocks.{l}.mlp.{name}"] = getattr(block.mlp, name)
            if affine:
                for ln in ("ln1", "ln2"):
                    out[f"blocks.{l}.{ln}.w"], out[f"blocks.{l}.{ln}.b"] = getattr(block, ln).w, getattr(block, ln).b
        norm = self.final_norm_module()
        if norm is not None and affine:
            out["ln_final.w"], out["ln_final.b"] = norm.w, norm.b
        if self.cfg.pooling != "cls_mean":
            out["unembed.W_U"], out["unembed.b_U"] = self.W_U, self.b_U
        return out
