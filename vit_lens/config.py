"""The single configuration dataclass of a HookedViT."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Pooling = Literal["token", "avg", "cls_mean"]
Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "silu"]
MlpType = Literal["mlp", "swiglu"]


@dataclass
class ViTConfig:
    """Architecture and preprocessing of one Vision Transformer checkpoint.

    Token layout of the residual stream: positions ``[0, n_prefix_tokens)`` are CLS (if any) then
    registers; the ``grid_size[0] * grid_size[1]`` patch tokens follow in row-major order.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    patch_size: tuple[int, int]
    image_size: tuple[int, int]
    grid_size: tuple[int, int]
    has_cls_token: bool = True
    n_register_tokens: int = 0
    pos_embed_on_prefix: bool = True  # False for timm's ``no_embed_class`` (DeiT3, DINOv2-reg)
    pooling: Pooling = "token"  # "cls_mean": CLS ⊕ mean of the patch tokens (official DINOv2 linear heads)
    head_n_last_blocks: int = 1  # pooling="cls_mean": the CLS tokens of the last n blocks (1 or 4) come first
    num_classes: int = 0
    act_fn: Activation = "gelu"
    mlp_type: MlpType = "mlp"  # "swiglu": gated MLP (timm SwiGLUPacked/SwiGLU, DINOv2-G), act_fn is the gate's
    eps: float = 1e-6
    pre_norm: bool = False  # CLIP's ``norm_pre`` before the first block
    layer_scale: bool = False
    qkv_bias: bool = True
    final_norm: bool = True  # ``norm`` after the blocks (False when timm moves it to ``fc_norm``)
    fc_norm: bool = False  # LayerNorm on the pooled features (timm ``fc_norm``)
    in_chans: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    model_name: str = ""
    class_names: list[str] | None = field(default=None, repr=False)
    # TransformerLens switches (off by default, as in TL; see HookedViT.set_use_*). Components read them
    # at forward time, so setting them on ``model.cfg`` directly works too.
    use_attn_result: bool = False  # ``blocks.{l}.attn.hook_result`` [batch, pos, head, d_model]
    use_attn_in: bool = False  # ``blocks.{l}.hook_attn_in`` [batch, pos, head, d_model]
    use_split_qkv_input: bool = False  # ``blocks.{l}.hook_q_input/k_input/v_input`` [batch, pos, head, d_model]
    use_hook_mlp_in: bool = False  # ``blocks.{l}.hook_mlp_in`` [batch, pos, d_model]
    device: Any = None  # torch.device, kept equal to the parameters' device by HookedViT (``model.to``)
    dtype: Any = None  # the parameters' dtype, kept in sync like ``device``

    # ------------------------------------------------------------ TransformerLens field names
    # TL code (ActivationCache, patching, logit lens) reads these HookedTransformerConfig fields.
    normalization_type = "LN"  # every norm of a timm ViT is an affine LayerNorm, applied unfolded
    attn_only = False
    final_rms = False
    parallel_attn_mlp = False
    positional_embedding_type = "standard"  # learned absolute position embedding
    n_key_value_heads = None  # no grouped-query attention
    n_devices = 1
    d_vocab = -1  # no token vocabulary: the input is pixels (see ``d_vocab_out`` for the classes)

    @property
    def gated_mlp(self) -> bool:
        """TL's flag: the MLPs are gated (``mlp.hook_pre_linear``, ``W_gate``)."""
        return self.mlp_type == "swiglu"

    @property
    def d_pooled(self) -> int:
        """Width of ``hook_pre_logits``: ``d_model``, or ``(1 + head_n_last_blocks) * d_model`` for ``cls_mean``."""
        return (1 + self.head_n_last_blocks) * self.d_model if self.pooling == "cls_mean" else self.d_model

    @property
    def n_ctx(self) -> int:
        """TL's context length: every residual position (prefix tokens + patches), ``n_tokens``."""
        return self.n_tokens

    @property
    def d_vocab_out(self) -> int:
        """TL's output size: ``num_classes``; a headless model outputs its pooled ``d_model`` features."""
        return self.num_classes if self.num_classes > 0 else self.d_model

    @property
    def n_prefix_tokens(self) -> int:
        return int(self.has_cls_token) + self.n_register_tokens

    @property
    def n_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def n_tokens(self) -> int:
        return self.n_prefix_tokens + self.n_patches

    @property
    def data_config(self) -> dict:
        """timm's ``data_config`` dict, as accepted by ``timm.data.create_transform``."""
        return {
            "input_size": (self.in_chans, *self.image_size),
            "interpolation": self.interpolation,
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }
