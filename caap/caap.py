"""CAAP: per-patch activation patching of source activations into a blank context (paper Sec. 3)."""
from __future__ import annotations

import logging
import math
import numbers
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caap.blanks import Blank, blank_context
from caap.selection import Selection, all_neighbourhoods
from caap.targets import READOUTS, check_score, refuse_target_with_callable, resolve_targets
from vit_lens.patching import ENGINES, ClassScore, Intervention, cache_context, run_patching
from vit_lens.patching.atp import check_atp_supported, run_atp
from vit_lens.validation import check_int, check_positive_real

logger = logging.getLogger(__name__)

# attribution patching (vit_lens.patching.atp): first-order CAAP from one backward; "atp-star" recomputes the
# prefix queries' attention to the patched keys exactly (AtP*, Kramar et al. 2024)
ATP_ENGINES = ("atp", "atp-star")
CAAP_ENGINES = ENGINES + ATP_ENGINES

Score = str | Callable[[Float[Tensor, "batch K n_out"]], Float[Tensor, "batch K"]]


def default_layers(n_layers: int) -> tuple[int, int]:
    """Blocks ``0 .. ceil(2L/3)`` (0..8 for L = 12), capped at the last block."""
    return 0, min(math.ceil(2 * n_layers / 3), n_layers - 1)


def resolve_layers(layers, n_layers: int) -> tuple[int, int]:
    """Accept ``None``, ``(start, end)`` (inclusive) or a consecutive sequence/range of block indices."""
    if layers is None:
        return default_layers(n_layers)
    allowed = "None, (start, end) or a range/sequence of consecutive block indices"
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (Sequence, range)):
        hint = f" (for the single block {layers} use ({layers}, {layers}))" if isinstance(layers, int) else ""
        raise TypeError(f"layers must be {allowed}; got {layers!r} ({type(layers).__name__}){hint}")
    seq = list(layers)
    if len(seq) == 0:
        raise ValueError(f"layers must be {allowed}; got an empty {type(layers).__name__}")
    bad = [b for b in seq if isinstance(b, bool) or not isinstance(b, numbers.Integral)]
    if bad:
        raise TypeError(f"layers must be {allowed} (ints); got {layers!r} with non-int entries {bad!r}")
    seq = [int(b) for b in seq]
    start, end = (seq[0], seq[1]) if len(seq) == 2 and not isinstance(layers, range) else (seq[0], seq[-1])
    if len(seq) > 2 and seq != list(range(start, end + 1)):
        raise ValueError(f"layers must be consecutive block indices; got {seq}")
    if not 0 <= start <= end < n_layers:
        raise ValueError(f"layers ({start}, {end}) must satisfy 0 <= start <= end < n_layers={n_layers}")
    return start, end


def as_hooked_vit(model):
    """A HookedViT as is; a timm ``VisionTransformer`` ported with ``HookedViT.from_timm`` (a copy: later
    edits to the timm model are not seen, use ``caap.model``); anything else is refused."""
    from torch import nn

    from vit_lens import HookedViT

    if isinstance(model, HookedViT):
        return model
    if isinstance(model, nn.Module):  # from_timm refuses non-ViT modules naming their class
        logger.info("CAAP: porting the %s with HookedViT.from_timm", type(model).__name__)
        return HookedViT.from_timm(model)
    raise TypeError(f"model must be a vit_lens.HookedViT or a timm VisionTransformer; got "
                    f"{type(model).__name__}. Build one with HookedViT.from_timm(name_or_model) or "
                    f"HookedViT.from_checkpoint(path)")


class CheckedScore:
    """Wrap a user score callable: it must return one score per image and intervention, ``[batch, K]``
    (a wrong shape would otherwise broadcast into a constant or scrambled map)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, output: Float[Tensor, "batch K n_out"]) -> Float[Tensor, "batch K"]:
        result = self.fn(output)
        expected = tuple(output.shape[:2])
        if not isinstance(result, Tensor) or tuple(result.shape) != expected:
            got = f"shape {tuple(result.shape)}" if isinstance(result, Tensor) else type(result).__name__
            raise ValueError(f"score callable {getattr(self.fn, '__name__', self.fn)!r} must return a tensor of "
                             f"shape [batch, K] = {list(expected)} (one score per image and intervention) for "
                             f"an output of shape {list(output.shape)}; got {got}")
        return result


def upsample(patch_map: Float[Tensor, "batch grid_h grid_w"], image_size: tuple[int, int]) -> Float[Tensor, "batch height width"]:
    """Bilinear upsampling of a patch-level map to pixels."""
    return F.interpolate(patch_map[:, None], size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0]


class CAAP:
    """Causal Attribution via Activation Patching.

    For patch ``i`` the source activations at ``S(p_i)`` are inserted into the blank context over blocks
    ``layers`` (default ``0..ceil(2L/3)``); CLS (and later ``S(p_i)``) are recomputed and the class score
    read. ``engine``: ``"parallel"`` (exact multi-CLS), ``"loop"`` (reference), ``"efficient"``
    (E-CAAP), ``"atp"`` (attribution patching: the first-order estimate from one backward) or ``"atp-star"``
    (AtP*: the prefix attention to the patched keys exact). ``score``: a class readout by name, ``"logit"``
    (the paper), ``"prob"``, ``"logit-diff"``
    (target logit minus the mean of the others), ``"logit-margin"`` (minus the highest other logit of the same
    forward) or ``"log-prob"`` (formulas: :mod:`vit_lens.patching.readouts`), or a callable on the output
    ``[batch, K, n_out]`` returning ``[batch, K]``. ``model``: a HookedViT, or a timm VisionTransformer, which
    is ported once with ``HookedViT.from_timm`` (``caap.model`` is the port). ``radius`` is capped at the grid
    size (same sets, bounded cost). Every option is checked here: one error naming the parameter and what is allowed.
    """

    def __init__(self, model, *, layers=None, selection: Selection = "box", radius: int = 1,
                 blank: Blank = "white", engine: str = "parallel", score: Score = "logit",
                 chunk_size: int | None = None, memory_budget_gb: float = 1.0, batch_size: int = 4,
                 blank_seed: int = 0, progress: bool | None = None, frozen_attention=None):
        model = as_hooked_vit(model)
        if not isinstance(engine, str) or engine not in CAAP_ENGINES:
            raise ValueError(f"engine must be one of {CAAP_ENGINES}; got {engine!r}")
        if engine in ATP_ENGINES:
            check_atp_supported(model, engine == "atp-star")
            if frozen_attention is not None:
                raise ValueError(f"frozen_attention applies to engine='parallel' or 'efficient'; engine={engine!r} "
                                 f"takes none (got {type(frozen_attention).__name__})")
        check_score(score, "the output [batch, K, n_out] to [batch, K]", READOUTS)
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        chunk_size = None if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)
        memory_budget_gb = check_positive_real(memory_budget_gb, "memory_budget_gb")
        blank_seed = check_int(blank_seed, "blank_seed", minimum=0)
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress must be None, True or False; got {progress!r}")
        self.model, self.engine, self.score = model, engine, score
        self.layers = resolve_layers(layers, model.cfg.n_layers)
        self.neighbourhoods = all_neighbourhoods(model.cfg.grid_size, selection, radius)
        self.blank, self.blank_seed = blank, blank_seed
        blank_context(model, blank, blank_seed)  # validate now, cache for every image
        self.chunk_size, self.memory_budget_gb, self.batch_size = chunk_size, memory_budget_gb, batch_size
        self.progress, self.frozen_attention = progress, frozen_attention
        start, end = self.layers
        self.interventions: Sequence[Intervention] = [
            Intervention.from_patches(model.layout, s, start, end) for s in self.neighbourhoods]

    def _readout(self, target: Int[Tensor, "batch"] | None):
        if callable(self.score):
            return CheckedScore(self.score)
        return ClassScore(target, kind=self.score)

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        """Patch-level attribution maps. ``target``: None (predicted class), an int, or one class per image
        (must be None when ``score`` is a callable). Empty batches and NaN/inf pixels are refused."""
        model = self.model
        model.check_images(images)
        if images.shape[0] == 0:
            raise ValueError(f"images must hold at least one image; got shape {tuple(images.shape)}")
        param = next(model.parameters())
        images = images.to(param.device, param.dtype)
        refuse_target_with_callable(self.score, target)
        targets = None if callable(self.score) else resolve_targets(model, images, target)
        blank = blank_context(model, self.blank, self.blank_seed)
        batches = range(0, images.shape[0], self.batch_size)
        show = self.progress if self.progress is not None else len(batches) > 1
        maps = []
        for lo in tqdm(batches, disable=not show, desc="CAAP", unit="batch"):
            batch = images[lo:lo + self.batch_size]
            readout = self._readout(None if targets is None else targets[lo:lo + self.batch_size])
            if self.engine in ATP_ENGINES:
                scores = run_atp(model, cache_context(model, batch), blank, self.interventions, readout,
                                 exact_prefix_attention=self.engine == "atp-star")
                maps.append(model.layout.to_grid(scores))
                continue
            # the parallel engines read the source up to the last patched block, and reuse its q/k/v there
            source = cache_context(model, batch) if self.engine == "loop" else \
                cache_context(model, batch, with_queries=True, up_to=self.layers[1])
            scores = run_patching(model, None, None, self.interventions, readout=readout, engine=self.engine,
                                  chunk_size=self.chunk_size, memory_budget_gb=self.memory_budget_gb,
                                  source_cache=source, target_cache=blank,
                                  frozen_attention=self.frozen_attention)
            maps.append(model.layout.to_grid(scores))
        return torch.cat(maps)

    def attribute_pixels(self, images: Float[Tensor, "batch chan height width"],
                         target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch height width"]:
        """The patch-level map upsampled (bilinear) to the input size."""
        return upsample(self.attribute(images, target), self.model.cfg.image_size)
