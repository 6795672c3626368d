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
    # what the head's outputs are: class "logits", or an "embedding" (CLIP projections: num_classes is then the
    # embedding width, whose dimensions are no classes; class targets and class metrics refuse it)
    head_output: Literal["logits", "embedding"] = "logits"
    act_fn: Activation = "gelu"  # TL spells "gelu_tanh" "gelu_pytorch_tanh" (= "gelu_new"); the others alike
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
    # "LN": ln1/ln2/ln_final/fc_norm are affine LayerNorms; "LNPre" after ``fold_ln`` (vit_lens.processing):
    # no affine, its weights folded into the readers (CLIP's ln_pre stays affine: it writes the stream)
    normalization_type: Literal["LN", "LNPre"] = "LN"
    original_architecture: str = "VisionTransformer"  # the source class the weights came from

    # ------------------------------------------------------------ TransformerLens field names
    # TL code (ActivationCache, patching, logit lens, SVDInterpreter) reads these HookedTransformerConfig
    # fields; each holds its ViT meaning. Left out, as they have none: tokenizer fields, default_prepend_bos
    # (no tokenizer; CLS and registers are parameters, not input tokens), rotary/NTK/yarn, init fields.
    attn_only = False
    final_rms = False
    uses_rms_norm = False
    parallel_attn_mlp = False
    positional_embedding_type = "standard"  # learned absolute position embedding
    n_key_value_heads = None  # no grouped-query attention
    ungroup_grouped_query_attention = False
    n_devices = 1
    attention_dir = "bidirectional"  # every token attends to every token (no causal mask)
    use_attn_scale = True  # scores are q.k / attn_scale
    use_local_attn = False
    window_size = None
    attn_types = None
    use_qk_norm = False
    scale_attn_by_inverse_layer_idx = False
    use_hook_tokens = False  # no token ids: the input is pixels
    tie_word_embeddings = False
    attn_scores_soft_cap = -1.0  # disabled
    output_logits_soft_cap = -1.0  # disabled
    rotary_dim = None
    num_experts = None
    experts_per_token = None

    @property
    def d_vocab(self) -> int:
        """TL's vocabulary size: there is no input vocabulary (pixels), so it is the readout's, ``d_vocab_out``
        (TL's default ties the two; ``SVDInterpreter`` reads it as ``W_U``'s width)."""
        return self.d_vocab_out

    @property
    def attn_scale(self) -> float:
        """``sqrt(d_head)``: attention scores are ``q . k / attn_scale``."""
        return self.d_head ** 0.5

    @property
    def post_embedding_ln(self) -> bool:
        """TL's flag for a LayerNorm right after the embedding: CLIP's ``ln_pre``."""
        return self.pre_norm

    @property
    def layer_norm_folding(self) -> bool:
        """TL's flag: the norms' weights were folded into their readers (``fold_ln``)."""
        return self.normalization_type == "LNPre"

    @property
    def n_params(self) -> int:
        """TL's count of hidden weights (attention and MLP matrices; no embeddings, biases or norms)."""
        mlp = (3 if self.gated_mlp else 2) * self.d_model * self.d_mlp
        return self.n_layers * (4 * self.d_model * self.n_heads * self.d_head + mlp)

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
