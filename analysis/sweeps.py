"""Experiments over many samples: attention grouping per layer and cumulative layer sweeps (Figs. 6-7)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from analysis.data import Sample, load_image_and_mask
from analysis.evaluate import Method
from analysis.grouping import attention_grouping


def grouping_over_samples(model, samples: Sequence[Sample], progress: bool = True) -> dict[str, Float[Tensor, "sample layer"]]:
    """``intra``, ``extra`` and ``diff`` per sample and layer (samples whose mask covers no patch or every
    patch are skipped)."""
    rows: dict[str, list[Tensor]] = {"intra": [], "extra": [], "diff": []}
    for sample in tqdm(samples, disable=not progress, desc="attention grouping"):
        image, mask = load_image_and_mask(model, sample)
        try:
            result = attention_grouping(model, image, mask)
        except ValueError:
            continue
        for key in rows:
            rows[key].append(result[key])
    if not rows["diff"]:
        raise ValueError("no sample has a mask covering some but not all patches")
    return {key: torch.stack(values) for key, values in rows.items()}


def layer_sweep_methods(model, ends: Iterable[int], **caap_kwargs) -> dict[str, Method]:
    """CAAP patching blocks ``0..end`` for each ``end`` (the cumulative sweep of Fig. 7), keyed ``"0..end"``."""
    from caap import CAAP

    return {f"0..{end}": CAAP(model, layers=(0, end), progress=False, **caap_kwargs).attribute for end in ends}
