"""Building blocks of HookedViT, one module each (TransformerLens 2.x ``components/`` style)."""
from vit_lens.components.attention import Attention
from vit_lens.components.block import TransformerBlock
from vit_lens.components.embed import PatchEmbed, PosEmbed
from vit_lens.components.layer_norm import LayerNorm, LayerNormPre
from vit_lens.components.mlp import MLP

__all__ = ["Attention", "TransformerBlock", "PatchEmbed", "PosEmbed", "LayerNorm", "LayerNormPre", "MLP"]
