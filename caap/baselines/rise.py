"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018).

Saliency of pixel λ = E[P(class | I ⊙ M) | M(λ) = 1], estimated with N random masks as
``Σ_i P(class | I ⊙ M_i) · M_i / (N · p)`` (the normalization of the reference code eclique/RISE).
Each mask is an s×s grid of independent Bernoulli(p) cells, upsampled bilinearly to
``(s + 1) · ceil(H / s)`` pixels and cropped at a random shift in ``[0, ceil(H / s))`` per axis. The
upsampling is the reference's ``skimage.transform.resize(grid, up_size, order=1, mode="reflect",
anti_aliasing=False)`` written in torch (:func:`reflect_bilinear_matrix`): pixel centres map to
``(o + 0.5) · s / up − 0.5`` in cell units, and the half cell beyond the border reflects without repeating
the edge cell (``c b | a b c | b a``), so a border pixel mixes the edge cell with its inner neighbour.

Defaults: N = 4000, s = 7, p = 0.5 (the commonly used RISE setting, e.g. xplique's defaults; the
reference notebooks use N = 2000, s = 8, p = 0.5 (Keras) and N = 6000, s = 8, p = 0.1 (PyTorch); the
paper's own values could not be checked here), masked pixels take the dataset mean colour
(``blank="mean"``, i.e. 0 after normalization: the reference multiplies the normalized input by the mask).
What still differs from the reference, and why: the cells and shifts are drawn from a seeded torch
generator (``seed``, reproducible whatever the chunking; the reference draws them from numpy's global
state), so reproducing one of its runs takes its draws (set ``RiseMasks.cells`` and ``.shifts``); masks are
computed in float64 and cast to the model's dtype chunk by chunk instead of stored as an N·H·W array
(the reference: float32 values, same up to rounding); ``blank`` offers fills other than the mean colour.

Cost: N forwards per image (+1 per batch when the target is the predicted class). Masks are generated
chunk by chunk from N·s² random bits and N shifts, never all at full resolution.
"""
from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caap.blanks import Blank, blank_image
from caap.baselines.base import PixelLevelMethod
from caap.masking import DEFAULT_MEMORY_BUDGET_GB, iter_masked_scores
from caap.targets import prepare_inputs
from caap.validation import check_flag, check_float, check_int


def reflect_bilinear_matrix(n_in: int, n_out: int) -> Float[Tensor, "n_out n_in"]:
    """Linear interpolation from ``n_in`` cells to ``n_out`` pixels as scikit-image's ``resize(order=1,
    mode="reflect")`` does it (scipy's ``zoom(grid_mode=True, mode="mirror")``): output ``o`` sits at
    ``x = (o + 0.5) · n_in / n_out − 0.5``; it takes ``1 − f`` of cell ``⌊x⌋`` and ``f = x − ⌊x⌋`` of the next,
    indices outside ``[0, n_in)`` reflected about the edge cells' centres. Float64."""
    x = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    lo = torch.floor(x)
    frac = x - lo
    lo = lo.long()

    def mirror(i: Tensor) -> Tensor:
        if n_in == 1:
            return torch.zeros_like(i)
        period = 2 * (n_in - 1)
        i = i.abs() % period
        return torch.where(i < n_in, i, period - i)

    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    matrix.index_put_((rows, mirror(lo)), 1 - frac, accumulate=True)
    matrix.index_put_((rows, mirror(lo + 1)), frac, accumulate=True)
    return matrix


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
        self.rows = reflect_bilinear_matrix(grid, self.up_size[0])  # [up_h, s]
        self.cols = reflect_bilinear_matrix(grid, self.up_size[1])  # [up_w, s]

    def __len__(self) -> int:
        return self.n_masks

    def __call__(self, lo: int, hi: int, device=None, dtype=torch.float32) -> Float[Tensor, "n 1 h w"]:
        if not 0 <= lo <= hi <= self.n_masks:
            raise ValueError(f"mask range must satisfy 0 <= lo <= hi <= {self.n_masks}; got ({lo}, {hi})")
        h, w = self.image_size
        shifts = self.shifts[lo:hi]
        rows = self.rows[shifts[:, 0, None] + torch.arange(h)]  # [n, h, s]: the cropped rows' weights
        cols = self.cols[shifts[:, 1, None] + torch.arange(w)]  # [n, w, s]
        masks = torch.einsum("nhs,nst,nwt->nhw", rows, self.cells[lo:hi, 0].double(), cols)  # float64 on CPU
        return masks[:, None].to(device, dtype)


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
