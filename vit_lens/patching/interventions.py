"""Interventions of the frozen-context patching experiment, validated and packed as padded tensors."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor


@dataclass(frozen=True)
class Intervention:
    """Take the source residual stream at ``positions`` for blocks ``layer_start..layer_end`` (inclusive,
    0-based, as in ``blocks.{b}.hook_resid_pre``). ``positions`` are residual-stream positions of patch
    tokens (``model.layout.token_position(patch_index)``)."""

    positions: tuple[int, ...]
    layer_start: int
    layer_end: int

    @classmethod
    def from_patches(cls, layout, patch_indices: Iterable[int], layer_start: int, layer_end: int) -> "Intervention":
        indices = [i.item() if isinstance(i, Tensor) and i.numel() == 1 else i for i in patch_indices]
        not_int = [i for i in indices if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
        if not_int:
            raise TypeError(f"patch_indices must be integer patch indices; got {not_int}")
        return cls(tuple(layout.token_position(int(i)) for i in indices), layer_start, layer_end)


def validate_interventions(cfg, interventions: Sequence[Intervention]) -> None:
    """Raise a clear ValueError for an empty list, a prefix or out-of-range position, a duplicate
    position or a bad layer range."""
    if len(interventions) == 0:
        raise ValueError("interventions must be a non-empty sequence of Intervention")
    lo, hi = cfg.n_prefix_tokens, cfg.n_tokens
    for k, iv in enumerate(interventions):
        if not isinstance(iv, Intervention):
            raise TypeError(f"interventions[{k}] must be an Intervention; got {type(iv).__name__}")
        for field_name in ("layer_start", "layer_end"):
            value = getattr(iv, field_name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"interventions[{k}].{field_name} must be an int; got {value!r}")
        if not isinstance(iv.positions, (tuple, list)):
            raise TypeError(f"interventions[{k}].positions must be a tuple of ints; got {type(iv.positions).__name__}")
        not_int = [p for p in iv.positions if isinstance(p, bool) or not isinstance(p, numbers.Integral)]
        if not_int:
            raise TypeError(f"interventions[{k}].positions must be ints; got {not_int}")
        if len(iv.positions) == 0:
            raise ValueError(f"interventions[{k}].positions is empty")
        bad = [p for p in iv.positions if not lo <= p < hi]
        if bad:
            raise ValueError(f"interventions[{k}].positions {bad} are not patch-token positions; allowed "
                             f"[{lo}, {hi}) (prefix tokens are never patched)")
        if len(set(iv.positions)) != len(iv.positions):
            raise ValueError(f"interventions[{k}].positions has duplicates: {iv.positions}")
        if not 0 <= iv.layer_start <= iv.layer_end < cfg.n_layers:
            raise ValueError(f"interventions[{k}] layers ({iv.layer_start}, {iv.layer_end}) must satisfy "
                             f"0 <= layer_start <= layer_end < n_layers={cfg.n_layers}")


@dataclass
class PackedPositions:
    """``positions`` ``[K, max_size]`` padded with a valid position of the same row; ``valid`` marks the
    real entries."""

    positions: Int[Tensor, "K max_size"]
    valid: Bool[Tensor, "K max_size"]

    def chunk(self, start: int, stop: int) -> "PackedPositions":
        return PackedPositions(self.positions[start:stop], self.valid[start:stop])


def pack_positions(interventions: Sequence[Intervention], device=None) -> PackedPositions:
    max_size = max(len(iv.positions) for iv in interventions)
    positions = torch.empty(len(interventions), max_size, dtype=torch.long)
    valid = torch.zeros(len(interventions), max_size, dtype=torch.bool)
    for k, iv in enumerate(interventions):
        n = len(iv.positions)
        positions[k, :n] = torch.tensor(iv.positions)
        positions[k, n:] = iv.positions[0]
        valid[k, :n] = True
    return PackedPositions(positions.to(device), valid.to(device))


def group_by_layers(interventions: Sequence[Intervention]) -> dict[tuple[int, int], list[int]]:
    """Indices of the interventions sharing each ``(layer_start, layer_end)``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, iv in enumerate(interventions):
        groups.setdefault((iv.layer_start, iv.layer_end), []).append(k)
    return groups
