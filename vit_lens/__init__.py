"""vit_lens: TransformerLens-style hooks, caches and activation patching for timm Vision Transformers."""
from vit_lens.config import ViTConfig
from vit_lens.hooked_vit import HookedViT
from vit_lens.loading import UnsupportedModelError
from vit_lens.tokens import TokenLayout

__all__ = ["HookedViT", "ViTConfig", "TokenLayout", "UnsupportedModelError"]
