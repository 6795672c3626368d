"""HookedViT: a timm Vision Transformer rebuilt with TransformerLens hook points."""
from __future__ import annotations

from functools import cached_property
from os import PathLike
from typing import Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule

from vit_lens.components import LayerNorm, PatchEmbed, PosEmbed, TransformerBlock
from vit_lens.components.hooks_util import HookPoint
from vit_lens.components.layer_norm import PooledFinalNorm, make_norm
from vit_lens.config import ViTConfig
from vit_lens.tl_compat import TransformerLensCompat
from vit_lens.tokens import TokenLayout
from vit_lens.validation import check_finite, check_int
from vit_lens.weights import TransformerLensWeights

class HookedViT(TransformerLensCompat, TransformerLensWeights, HookedRootModule):
    """A hookable, logit-exact port of timm's ``VisionTransformer``.

    Hook names follow TransformerLens (``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_pattern``,
    ...), plus ``hook_embed``/``hook_pos_embed`` (``[batch, n_tokens, d_model]``, see :meth:`embed`),
    ``ln_pre.*`` (CLIP), ``ln_final.*``, ``fc_norm.*`` and ``hook_pre_logits`` (the pooled features fed
    to the head, ``[batch, d_model]``). TL's optional hooks (``attn.hook_result``, ``hook_attn_in``,
    ``hook_q/k/v_input``, ``hook_mlp_in``) fire once enabled with the ``set_use_*`` methods. TL's weight
    surface (``W_Q`` ... ``OV``, ``W_U``, ``accumulated_bias``, ...) is documented in
    :mod:`vit_lens.weights`. Build it with :meth:`from_timm` or :meth:`from_checkpoint`.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.patch_embed = PatchEmbed(cfg.in_chans, d, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.has_cls_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.n_register_tokens, d)) if cfg.n_register_tokens else None
        n_pos = cfg.n_tokens if cfg.pos_embed_on_prefix else cfg.n_patches
        self.pos_embed = PosEmbed(n_pos, d, cfg.pos_embed_on_prefix, cfg.n_prefix_tokens)
        self.ln_pre = LayerNorm(d, cfg.eps) if cfg.pre_norm else None
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.fc_norm = make_norm(cfg) if cfg.fc_norm else None
        if cfg.final_norm:
            self.ln_final = make_norm(cfg)
        else:  # TL's ``ln_final`` for analysis only; the forward pass does not use it (see vit_lens.cache)
            self.ln_final = PooledFinalNorm(self.fc_norm, self.pool) if cfg.fc_norm else nn.Identity()
        self.head = nn.Linear(cfg.d_pooled, cfg.num_classes) if cfg.num_classes > 0 else None
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.hook_pre_logits = HookPoint()
        self.layout = TokenLayout(cfg)
        self.setup()
        self._sync_cfg_device()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_timm(
        cls,
        model_or_name: nn.Module | str,
        *,
        pretrained: bool = True,
        checkpoint_path: str | PathLike | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **timm_kwargs: Any,
    ) -> "HookedViT":
        """Port a timm ViT: an instantiated model, a timm name (timm downloads the weights), or a name
        plus a local ``checkpoint_path`` (``.safetensors``, or ``.pth``/``.bin`` read with
        ``weights_only=True``). TransformerLens's weight processing options (``fold_ln``,
        ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``,
        ``refactor_factored_attn_matrices``; all off by default) are applied after the port:
        :func:`vit_lens.processing.process_weights`."""
        from vit_lens.loading import hooked_vit_from_timm
        from vit_lens.processing import pop_processing_options, process_weights

        options = pop_processing_options(timm_kwargs)
        model = hooked_vit_from_timm(
            cls, model_or_name, pretrained=pretrained, checkpoint_path=checkpoint_path,
            device=device, dtype=dtype, **timm_kwargs,
        )
        return process_weights(model, **options)

    @classmethod
    def from_checkpoint(cls, path: str | PathLike, model_name: str | None = None, **kwargs: Any) -> "HookedViT":
        """Load a local timm checkpoint; a JSON sidecar beside it (``NAME.json`` with ``timm_model_name``,
        ``create_model_kwargs``, ``data_config``, ``class_names``) supplies what is not given. Takes the
        weight processing options of :meth:`from_timm`."""
        from vit_lens.loading import hooked_vit_from_checkpoint
        from vit_lens.processing import pop_processing_options, process_weights

        options = pop_processing_options(kwargs)
        return process_weights(hooked_vit_from_checkpoint(cls, path, model_name=model_name, **kwargs), **options)

    @classmethod
    def from_hf(cls, model_or_name_or_path: nn.Module | str | PathLike, **kwargs: Any) -> "HookedViT":
        """Port a HuggingFace ``transformers`` ViT / DeiT / DINOv2(-registers) / CLIP vision model: an
        instantiated model, a hub name, or a directory written by ``save_pretrained`` (offline). The saved
        image processor becomes ``model.transform``. Options (``image_processor``, ``image_size``, ``device``,
        ``dtype``, ``from_pretrained`` kwargs) and the output of each class: :mod:`vit_lens.loading.hf`.
        Takes the weight processing options of :meth:`from_timm`."""
        from vit_lens.loading import hooked_vit_from_hf
        from vit_lens.processing import pop_processing_options, process_weights

        options = pop_processing_options(kwargs)
        return process_weights(hooked_vit_from_hf(cls, model_or_name_or_path, **kwargs), **options)

    @classmethod
    def from_open_clip(cls, model_or_name: nn.Module | str, **kwargs: Any) -> "HookedViT":
        """Port an open_clip image tower (a CLIP / CustomTextCLIP, its ``.visual``, or a name with
        ``pretrained=`` tag, path or None): the output is ``encode_image(x)``, the transform open_clip's
        eval transform. Options: see :func:`vit_lens.loading.open_clip.hooked_vit_from_open_clip`. Takes the
        weight processing options of :meth:`from_timm`."""
        from vit_lens.loading import hooked_vit_from_open_clip
        from vit_lens.processing import pop_processing_options, process_weights

        options = pop_processing_options(kwargs)
        return process_weights(hooked_vit_from_open_clip(cls, model_or_name, **kwargs), **options)

    # ------------------------------------------------------------------ preprocessing
    @cached_property
    def transform(self) -> Callable:
        """timm's eval transform for this checkpoint: PIL image -> ``[chan, height, width]`` tensor."""
        from timm.data import create_transform

        return create_transform(**self.cfg.data_config, is_training=False)

    def check_images(self, images: Any, name: str = "images") -> None:
        """Raise a clear error unless ``images`` is a float ``[batch, chan, height, width]`` tensor of the
        model's channel count and image size."""
        cfg = self.cfg
        if not isinstance(images, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape [batch, {cfg.in_chans}, "
                            f"{cfg.image_size[0]}, {cfg.image_size[1]}]; got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"{name} must have rank 4 [batch, chan, height, width]; got shape "
                             f"{tuple(images.shape)}. Add a batch dimension with images[None] (or pass pixel tokens [batch, "
                             f"{cfg.in_chans * cfg.patch_size[0] * cfg.patch_size[1]}, {cfg.n_tokens}], "
                             f"model.to_tokens(images)).")
        if not images.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (normalized pixels); got dtype "
                            f"{images.dtype}. Use model.transform or convert with .float().")
        dtype = self.patch_embed.proj.weight.dtype
        if images.dtype != dtype:
            raise TypeError(f"{name} has dtype {images.dtype} but the model runs in {dtype}; convert with "
                            f".to({dtype})")
        if images.shape[1] != cfg.in_chans:
            raise ValueError(f"{name} must have {cfg.in_chans} channels; got {images.shape[1]} "
                             f"(shape {tuple(images.shape)})")
        if tuple(images.shape[2:]) != tuple(cfg.image_size):
            raise ValueError(f"{name} must be {cfg.image_size[0]}x{cfg.image_size[1]} pixels (the "
                             f"model's image_size); got {images.shape[2]}x{images.shape[3]}")
        check_finite(images, name)  # NaN/inf pixels would turn every score and map into NaN silently

    # ------------------------------------------------------------------ forward
    def embed(self, images: Float[Tensor, "batch chan height width"]) -> Float[Tensor, "batch pos d_model"]:
        """``resid_pre`` of block 0 = ``hook_embed + hook_pos_embed``, both ``[batch, n_tokens, d_model]``.

        ``hook_embed``: CLS, registers, then the patch embeddings (TL's token embedding);
        ``hook_pos_embed``: the position embedding at every position (zeros on the prefix under
        ``no_embed_class``). With CLIP's ``ln_pre`` the two hooks hold their shares of ``ln_pre``'s output
        (each centred and divided by the shared scale ``ln_pre.hook_scale``, times the weight; the bias
        goes to ``hook_pos_embed``), so in every family they sum to the residual stream, as TL's
        ``decompose_resid`` needs."""
        self.check_images(images)
        batch = images.shape[0]
        prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        tokens = torch.cat(prefix + [self.patch_embed(images)], dim=1)
        pos = self.pos_embed.full().expand(batch, -1, -1)
        if self.ln_pre is not None:
            return self.ln_pre.forward_split(tokens, pos, self.hook_embed, self.hook_pos_embed)
        return self.hook_embed(tokens) + self.hook_pos_embed(pos)

    def forward_features(self, images: Float[Tensor, "batch chan height width"]) -> Float[Tensor, "batch pos d_model"]:
        """All tokens after the last block and the final norm."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def final_norm(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """``ln_final`` when the model has one (timm moves it to ``fc_norm`` for avg pooling)."""
        return self.ln_final(resid) if self.cfg.final_norm else resid

    def pool(self, tokens: Float[Tensor, "batch pos d_model"],
             earlier_cls: tuple[Tensor, ...] = ()) -> Float[Tensor, "batch d_pooled"]:
        """``"token"``: CLS; ``"avg"``: mean of the patch tokens; ``"cls_mean"`` (official DINOv2 linear
        heads): the normed CLS of the last ``head_n_last_blocks`` blocks (``earlier_cls``, oldest first, then
        this one) ⊕ the mean of the patch tokens (registers excluded)."""
        cfg = self.cfg
        if cfg.pooling == "token":
            return tokens[:, 0]
        patches_mean = tokens[:, cfg.n_prefix_tokens:].mean(dim=1)
        if cfg.pooling == "avg":
            return patches_mean
        if len(earlier_cls) != cfg.head_n_last_blocks - 1:
            raise ValueError(f"pooling='cls_mean' with head_n_last_blocks={cfg.head_n_last_blocks} needs the CLS "
                             f"tokens of the {cfg.head_n_last_blocks - 1} blocks before the last; got "
                             f"{len(earlier_cls)} (run forward_from_resid, which collects them)")
        return torch.cat([*earlier_cls, tokens[:, 0], patches_mean], dim=-1)

    def forward_head(self, tokens: Float[Tensor, "batch pos d_model"],
                     earlier_cls: tuple[Tensor, ...] = ()) -> Float[Tensor, "batch out"]:
        """Pool, ``fc_norm``, ``hook_pre_logits``, classifier (if the model has one)."""
        pooled = self.pool(tokens, earlier_cls)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        pooled = self.hook_pre_logits(pooled)
        return self.head(pooled) if self.head is not None else pooled

    def forward_from_resid(self, resid: Float[Tensor, "batch pos d_model"], start_layer: int = 0) -> Float[Tensor, "batch out"]:
        """Resume the forward pass from ``blocks.{start_layer}.hook_resid_pre`` (all hooks fire). Any number
        of positions is accepted (token dropping), as long as CLS/registers come first."""
        check_int(start_layer, "start_layer", minimum=0)
        if start_layer > self.cfg.n_layers:
            raise ValueError(f"start_layer must be in [0, {self.cfg.n_layers}]; got {start_layer}")
        cfg = self.cfg
        allowed = f"a [batch, pos, d_model={cfg.d_model}] tensor (the residual stream)"
        if not isinstance(resid, Tensor):
            raise TypeError(f"resid must be {allowed}; got {type(resid).__name__}")
        if resid.ndim != 3 or resid.shape[-1] != cfg.d_model:
            raise ValueError(f"resid must be {allowed}; got shape {tuple(resid.shape)}")
        first_kept = cfg.n_layers - cfg.head_n_last_blocks if cfg.pooling == "cls_mean" else cfg.n_layers
        if start_layer > first_kept:
            raise ValueError(f"start_layer={start_layer}: the DINOv2 linear head reads the CLS token after block "
                             f"{first_kept}, so resume from start_layer <= {first_kept}")
        earlier_cls = []
        for b in range(start_layer, cfg.n_layers):
            resid = self.blocks[b](resid)
            if first_kept <= b < cfg.n_layers - 1:  # normed like the last block, without firing ln_final hooks
                earlier_cls.append(self.ln_final.normalize_unhooked(resid[:, 0]))
        return self.forward_head(self.final_norm(resid), tuple(earlier_cls))

    def forward(self, images: Float[Tensor, "batch chan height width"] | Float[Tensor, "batch d_patch n_tokens"], *,
                stop_at_layer: int | None = None, return_type: str | None = "logits", labels: Tensor | None = None):
        """Logits ``[batch, num_classes]`` (pooled features ``[batch, d_pooled]`` for a headless model).

        ``images`` may also be pixel tokens (:meth:`to_tokens`). TransformerLens's options: ``stop_at_layer=l``
        runs blocks ``[0, l)`` only (negative counts from the end) and returns the residual stream
        ``[batch, n_tokens, d_model]`` (``blocks.{l}.hook_resid_pre``'s value, not fired); ``return_type``
        ``"logits"``, ``"loss"`` (mean cross-entropy against ``labels`` ``[batch]``), ``"both"`` or None."""
        resid = self.embed(self.as_images(images))
        if stop_at_layer is not None:
            for block in self.blocks[:self._check_stop_at_layer(stop_at_layer)]:
                resid = block(resid)
            return resid
        return self._apply_return_type(self.forward_from_resid(resid, 0), return_type, labels)

    def set_cls_mean_head(self, weight: Float[Tensor, "n_classes d_pooled"], bias: Float[Tensor, "n_classes"],
                          n_last_blocks: int = 1) -> None:
        """Replace the head by a linear classifier on ``pooling="cls_mean"`` features (official DINOv2 linear
        heads, ``vit_lens.zoo``): CLS of the last ``n_last_blocks`` blocks ⊕ mean patch token, each after the
        final norm. The parallel engines refuse this pooling (use ``engine="loop"``)."""
        cfg = self.cfg
        if not cfg.has_cls_token or not cfg.final_norm or cfg.fc_norm:
            raise ValueError("a cls_mean head needs a CLS token and a final norm without fc_norm (DINOv2)")
        if not isinstance(n_last_blocks, int) or not 1 <= n_last_blocks <= cfg.n_layers:
            raise ValueError(f"n_last_blocks must be an int in [1, {cfg.n_layers}]; got {n_last_blocks!r}")
        d_in = (1 + n_last_blocks) * cfg.d_model
        if weight.ndim != 2 or weight.shape[1] != d_in or tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"head weight must be [n_classes, {d_in}] and bias [n_classes] for n_last_blocks="
                             f"{n_last_blocks}; got {tuple(weight.shape)} and {tuple(bias.shape)}")
        param = self.cls_token
        head = nn.Linear(d_in, weight.shape[0]).to(param.device, param.dtype)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        cfg.pooling, cfg.head_n_last_blocks, cfg.num_classes = "cls_mean", n_last_blocks, weight.shape[0]
        self.head = head
