"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018).

Saliency of pixel λ = E[P(class | I ⊙ M) | M(λ) = 1], estimated with N random masks as
``Σ_i P(class | I ⊙ M_i) · M_i / (N · p)`` (the normalization of the reference code eclique/RISE).
Each mask is an s×s grid of independent Bernoulli(p) cells, upsampled bilinearly to
``(s + 1) · ceil(H / s)`` pixels and cropped at a random shift in ``[0, ceil(H / s))`` per axis.

Defaults: N = 4000, s = 7, p = 0.5 (the commonly used RISE setting, e.g. xplique's defaults; the
reference notebooks use N = 2000, s = 8, p = 0.5 (Keras) and N = 6000, s = 8, p = 0.1 (PyTorch); the
paper's own values could not be checked here), masked pixels take the dataset mean colour
(``blank="mean"``, i.e. 0 after normalization: the reference multiplies the normalized input by the mask). Deviation: the upsampling clamps at the border (torch's bilinear, ``align_corners=False``) where
the reference uses scikit-image's ``mode="reflect"``; this only changes the outermost half cell of the
upsampled grid, most of which the random crop discards.

Cost: N forwards per image (+1 per batch when the target is the predicted class). Masks are generated
chunk by chunk from N·s² random bits and N shifts, never all at full resolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caap.blanks import Blank, blank_image
from caap.baselines.base import PixelLevelMethod
from caap.masking import DEFAULT_MEMORY_BUDGET_GB, iter_masked_scores
from caap.targets import prepare_inputs
from caap.validation import check_flag, check_float, check_int


class RiseMasks:
    """N RISE masks for an ``image_size`` image, produced lazily: ``masks(lo, hi) -> [hi - lo, 1, H, W]``.
    Deterministic given ``seed`` (a CPU generator), whatever the chunking."""

    def __init__(self, n_masks: int, image_size: tuple[int, int], grid: int = 7, p_keep: float = 0.5, seed: int = 0):
        n_masks, grid = check_int(n_masks, "n_masks", low=1), check_int(grid, "grid (cells per side)", low=1)
        p_keep, seed = check_float(p_keep, "p_keep", low=0, high=1, low_open=True), check_int(seed, "seed", low=0)
        self.n_masks, self.image_size, self.grid, self.p_keep = n_masks, tuple(image_size), grid, p_keep
        h, w = self.image_size
        self.cell = (math.ceil(h / grid), math.ceil(w / grid))
        self.up_size = ((grid + 1) * self.cell[0], (grid + 1) * self.cell[1])
        g = torch.Generator().manual_seed(seed)
        self.cells = torch.rand(n_masks, 1, grid, grid, generator=g) < p_keep  # [N, 1, s, s]
        self.shifts = torch.stack([torch.randint(0, self.cell[0], (n_masks,), generator=g),
                                   torch.randint(0, self.cell[1], (n_masks,), generator=g)], 1)  # [N, 2]

    def __len__(self) -> int:
        return self.n_masks

    def __call__(self, lo: int, hi: int, device=None, dtype=torch.float32) -> Float[Tensor, "n 1 h w"]:
        if not 0 <= lo <= hi <= self.n_masks:
            raise ValueError(f"mask range must satisfy 0 <= lo <= hi <= {self.n_masks}; got ({lo}, {hi})")
        h, w = self.image_size
        up = F.interpolate(self.cells[lo:hi].to(device, dtype), size=self.up_size, mode="bilinear", align_corners=False)
        shifts = self.shifts[lo:hi].to(up.device)
        rows = (shifts[:, 0, None] + torch.arange(h, device=up.device))[:, :, None]  # [n, h, 1]
        cols = (shifts[:, 1, None] + torch.arange(w, device=up.device))[:, None, :]  # [n, 1, w]
        n = torch.arange(hi - lo, device=up.device)[:, None, None]
        return up[:, 0][n, rows, cols][:, None]


class RISE(PixelLevelMethod):
    """RISE saliency (see the module docstring). ``attribute_pixels`` gives the pixel map
    ``[batch, H, W]``; ``attribute`` its average over each patch cell ``[batch, grid_h, grid_w]``.
    The same N masks (from ``seed``) are used for every image."""

    def __init__(self, model, *, n_masks: int = 4000, grid: int = 7, p_keep: float = 0.5, blank: Blank = "mean",
                 seed: int = 0, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, batch_size: int | None = None,
                 progress: bool | None = None):
        self.model, self.n_masks, self.grid, self.p_keep, self.seed = model, n_masks, grid, p_keep, seed
        self.memory_budget_gb = check_float(memory_budget_gb, "memory_budget_gb", low=0, low_open=True)
        self.batch_size = check_int(batch_size, "batch_size", low=1, none_ok=True)
        self.progress = check_flag(progress, "progress")
        self.blank = blank_image(model, blank)
        RiseMasks(n_masks, model.cfg.image_size, grid, p_keep, seed)  # validate the options now

    @torch.inference_mode()
    def attribute_pixels(self, images: Float[Tensor, "batch chan height width"],
                         target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch height width"]:
        model = self.model
        images, targets = prepare_inputs(model, images, target)
        param = next(model.parameters())
        masks = RiseMasks(self.n_masks, model.cfg.image_size, self.grid, self.p_keep, self.seed)
        blank = self.blank.to(param.device, param.dtype)[0]
        chunk = lambda lo, hi: masks(lo, hi, param.device, param.dtype)  # noqa: E731
        maps = []
        show = self.progress or (self.progress is None and len(images) > 1)
        for b in tqdm(range(len(images)), disable=not show, desc="RISE"):
            sal = torch.zeros(*model.cfg.image_size, device=param.device, dtype=torch.float32)
            for _, _, m, scores in iter_masked_scores(model, images[b], chunk, blank, targets[b], kind="prob",
                                                      n_masks=self.n_masks, memory_budget_gb=self.memory_budget_gb,
                                                      batch_size=self.batch_size):
                sal += torch.einsum("n,nhw->hw", scores.float(), m[:, 0].float())
            maps.append(sal / (self.n_masks * self.p_keep))
        return torch.stack(maps)
