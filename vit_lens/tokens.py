"""Token layout helpers: (row, col) <-> patch index <-> residual-stream position."""
from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor


class TokenLayout:
    """Positions ``[0, n_prefix_tokens)`` hold CLS then registers; patch ``i`` (row-major over the
    ``grid_size`` grid) sits at position ``n_prefix_tokens + i``."""

    def __init__(self, cfg):
        self.n_prefix_tokens = cfg.n_prefix_tokens
        self.grid_size = tuple(cfg.grid_size)
        self.n_patches = self.grid_size[0] * self.grid_size[1]

    def _check_patch(self, patch_index: int) -> None:
        if not 0 <= patch_index < self.n_patches:
            raise ValueError(f"patch_index must be in [0, {self.n_patches}); got {patch_index}")

    def patch_index(self, row: int, col: int) -> int:
        gh, gw = self.grid_size
        if not (0 <= row < gh and 0 <= col < gw):
            raise ValueError(f"(row, col) must lie in the {gh}x{gw} patch grid; got ({row}, {col})")
        return row * gw + col

    def row_col(self, patch_index: int) -> tuple[int, int]:
        self._check_patch(patch_index)
        return divmod(patch_index, self.grid_size[1])

    def token_position(self, patch_index: int) -> int:
        self._check_patch(patch_index)
        return self.n_prefix_tokens + patch_index

    def patch_index_of_position(self, position: int) -> int:
        if not self.n_prefix_tokens <= position < self.n_prefix_tokens + self.n_patches:
            raise ValueError(f"position {position} is not a patch token (patch tokens occupy "
                             f"[{self.n_prefix_tokens}, {self.n_prefix_tokens + self.n_patches}))")
        return position - self.n_prefix_tokens

    def patch_positions(self, device=None) -> Tensor:
        """Residual-stream positions of all patch tokens, in row-major order."""
        return torch.arange(self.n_prefix_tokens, self.n_prefix_tokens + self.n_patches, device=device)

    def to_grid(self, values: Float[Tensor, "... n_patches"]) -> Float[Tensor, "... grid_h grid_w"]:
        """Reshape per-patch values into the spatial grid."""
        if values.shape[-1] != self.n_patches:
            raise ValueError(f"values must end with n_patches={self.n_patches}; got shape {tuple(values.shape)}")
        return rearrange(values, "... (gh gw) -> ... gh gw", gh=self.grid_size[0])
