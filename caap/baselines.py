"""Baselines: input-level Simple Insertion / Simple Deletion (paper App. B.2) and Grad-CAM."""
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


class GradCAM:
    """Grad-CAM on the tokens entering the last block's attention (``blocks.{L-1}.ln1.hook_normalized``):
    channel weights are the patch-averaged gradients of the class score; one forward + one backward."""

    def __init__(self, model, layer: int | None = None):
        self.model = model
        self.hook_name = f"blocks.{model.cfg.n_layers - 1 if layer is None else layer}.ln1.hook_normalized"

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        with torch.inference_mode(False), torch.enable_grad():  # also works when called under inference_mode
            return self._attribute(images.clone(), target)

    def _attribute(self, images, target):
        model, n_pre = self.model, self.model.cfg.n_prefix_tokens
        targets = resolve_targets(model, images, target).clone()  # a normal tensor even if target was not
        stored = {}

        def keep(act, hook):  # a leaf when the weights are frozen, so the gradient always exists
            stored["a"] = act if act.requires_grad else act.detach().requires_grad_()
            return stored["a"]

        with model.hooks(fwd_hooks=[(self.hook_name, keep)]):
            logits = model(images)
            acts = stored["a"]
            grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)[0]
        acts, grads = acts[:, n_pre:].detach(), grads[:, n_pre:]
        cam = torch.relu((acts * grads.mean(1, keepdim=True)).sum(-1))
        return model.layout.to_grid(cam)
