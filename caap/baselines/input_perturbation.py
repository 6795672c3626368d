"""Input-level baselines Simple Insertion / Simple Deletion (CAAP paper, App. B.2).

Cost: one forward per image plus one per patch (K = n_patches perturbed copies), ``chunk_size`` per batch.
"""
from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caap.blanks import Blank, blank_image
from caap.selection import Selection, all_neighbourhoods
from caap.targets import resolve_targets
from vit_lens.patching import ClassScore


class _InputPerturbation:
    """Score K perturbed copies of each image, ``chunk_size`` per forward."""

    def __init__(self, model, *, selection: Selection = "box", radius: int = 1, blank: Blank = "white",
                 score: str = "logit", chunk_size: int = 64, blank_seed: int = 0, progress: bool | None = None):
        self.model, self.score, self.chunk_size, self.progress = model, score, chunk_size, progress
        cfg = model.cfg
        grid = torch.zeros(cfg.n_patches, cfg.n_patches)
        for i, patches in enumerate(all_neighbourhoods(cfg.grid_size, selection, radius)):
            grid[i, patches] = 1.0
        grid = rearrange(grid, "k (gh gw) -> k gh gw", gh=cfg.grid_size[0])
        ph, pw = cfg.patch_size
        self.masks = grid.repeat_interleave(ph, 1).repeat_interleave(pw, 2)[:, None]  # [K, 1, H, W]
        self.blank = blank_image(model, blank, blank_seed)

    def perturb(self, image: Float[Tensor, "chan h w"], masks: Float[Tensor, "k 1 h w"]) -> Float[Tensor, "k chan h w"]:
        raise NotImplementedError

    def finish(self, scores: Float[Tensor, "K"], clean_score: Tensor) -> Float[Tensor, "K"]:
        return scores

    @torch.inference_mode()
    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        model = self.model
        model.check_images(images)
        param = next(model.parameters())
        images = images.to(param.device, param.dtype)
        targets = resolve_targets(model, images, target)
        masks, blank = self.masks.to(param.device, param.dtype), self.blank.to(param.device, param.dtype)
        maps = []
        for b in tqdm(range(images.shape[0]), disable=not (self.progress or (self.progress is None and len(images) > 1)),
                      desc=type(self).__name__):
            readout = ClassScore(targets[b:b + 1], kind=self.score)
            clean = readout(model(images[b:b + 1])[None])[0]
            scores = torch.cat([
                readout(model(self.perturb(images[b], blank[0], masks[lo:lo + self.chunk_size]))[None])[0]
                for lo in range(0, len(masks), self.chunk_size)])
            maps.append(model.layout.to_grid(self.finish(scores, clean)))
        return torch.stack(maps)


class SimpleInsertion(_InputPerturbation):
    """Score of the blank image with only the pixels of ``S(p_i)`` taken from the source."""

    def perturb(self, image, blank, masks):
        return blank + masks * (image - blank)


class SimpleDeletion(_InputPerturbation):
    """Drop of the score when the pixels of ``S(p_i)`` are replaced by the blank."""

    def perturb(self, image, blank, masks):
        return image + masks * (blank - image)

    def finish(self, scores, clean_score):
        return clean_score - scores
