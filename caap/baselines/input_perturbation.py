"""Input-level baselines Simple Insertion / Simple Deletion (CAAP paper, App. B.2).

Cost per image: K = n_patches masked forwards (:mod:`caap.masking`, batched by ``memory_budget_gb`` or
``chunk_size``); Simple Deletion adds one clean forward.
"""
from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caap.blanks import Blank, blank_image
from caap.masking import DEFAULT_MEMORY_BUDGET_GB, masked_scores
from caap.selection import Selection, all_neighbourhoods
from caap.targets import check_score, prepare_inputs
from caap.validation import check_flag, check_float, check_int


class _InputPerturbation:
    """Score K perturbed copies of each image (``chunk_size`` per forward, default: as many as fit in
    ``memory_budget_gb``)."""

    def __init__(self, model, *, selection: Selection = "box", radius: int = 1, blank: Blank = "white",
                 score: str = "logit", chunk_size: int | None = None,
                 memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, blank_seed: int = 0,
                 progress: bool | None = None):
        if not hasattr(model, "cfg"):  # a plain CNN: give it the patch grid/blank interface (224 px, 16-px patches)
            from caap.cnn_model import as_cnn_classifier

            model = as_cnn_classifier(model)
        self.model, self.score = model, check_score(score, "the output [k, n_out] to [k]")
        self.chunk_size = check_int(chunk_size, "chunk_size", low=1, none_ok=True)
        self.memory_budget_gb = check_float(memory_budget_gb, "memory_budget_gb", low=0, low_open=True)
        self.progress = check_flag(progress, "progress")
        cfg = model.cfg
        grid = torch.zeros(cfg.n_patches, cfg.n_patches)
        for i, patches in enumerate(all_neighbourhoods(cfg.grid_size, selection, radius)):
            grid[i, patches] = 1.0
        grid = rearrange(grid, "k (gh gw) -> k gh gw", gh=cfg.grid_size[0])
        ph, pw = cfg.patch_size
        self.masks = grid.repeat_interleave(ph, 1).repeat_interleave(pw, 2)[:, None]  # [K, 1, H, W]
        self.blank = blank_image(model, blank, check_int(blank_seed, "blank_seed", low=0))

    def scores(self, image: Float[Tensor, "chan h w"], blank: Float[Tensor, "chan h w"],
               masks: Float[Tensor, "k 1 h w"], target: Tensor) -> Float[Tensor, "k"]:
        """Per-patch scores of one image (K masked forwards through :func:`caap.masking.masked_scores`)."""
        raise NotImplementedError

    def _masked(self, image, reference, masks, target) -> Float[Tensor, "k"]:
        return masked_scores(self.model, image, masks, reference, target, kind=self.score,
                             memory_budget_gb=self.memory_budget_gb, batch_size=self.chunk_size)

    @torch.inference_mode()
    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        model = self.model
        images, targets = prepare_inputs(model, images, target)
        param = next(model.parameters())
        masks, blank = self.masks.to(param.device, param.dtype), self.blank.to(param.device, param.dtype)
        maps = []
        for b in tqdm(range(images.shape[0]), disable=not (self.progress or (self.progress is None and len(images) > 1)),
                      desc=type(self).__name__):
            maps.append(model.layout.to_grid(self.scores(images[b], blank[0], masks, targets[b])))
        return torch.stack(maps)


class SimpleInsertion(_InputPerturbation):
    """Score of the blank image with only the pixels of ``S(p_i)`` taken from the source."""

    def scores(self, image, blank, masks, target):
        return self._masked(image, blank, masks, target)


class SimpleDeletion(_InputPerturbation):
    """Drop of the score when the pixels of ``S(p_i)`` are replaced by the blank."""

    def scores(self, image, blank, masks, target):
        # image + m * (blank - image): the blank is the masked-in "image", the image the reference
        clean = masked_scores(self.model, image, torch.ones_like(masks[:1]), image, target, kind=self.score)
        return clean - self._masked(blank, image, masks, target)
