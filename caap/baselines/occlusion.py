"""Occlusion (Zeiler & Fergus, ECCV 2014): slide a window over the image, replace it by a baseline and
record the drop of the class score.

Same definition as captum's ``Occlusion`` (tested equal): windows of ``window`` pixels (all channels)
start at every multiple of ``stride`` up to ``H - window`` (plus one truncated window at the border
when the stride does not divide ``H - window``); each pixel gets the mean score drop
``f(x) - f(x with the window set to the baseline)`` over the windows that cover it.

Defaults: one-patch window and stride (the map is then exactly one value per patch), baseline 0 in
normalized input space (the dataset mean colour, the Deletion metric's reference), logit score as in
captum on a logit model. Cost: ``ceil((H - wh) / sh + 1) · ceil((W - ww) / sw + 1)`` forwards + 1 per
image (n_patches + 1 with the defaults).
"""
from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caap.baselines.base import PixelLevelMethod
from caap.masking import DEFAULT_MEMORY_BUDGET_GB, iter_masked_scores, masked_scores
from caap.targets import check_score, prepare_inputs
from caap.validation import check_finite_tensor, check_flag, check_float, check_int, check_int_pair


class Occlusion(PixelLevelMethod):
    """Sliding-window occlusion (see the module docstring). ``attribute_pixels`` gives ``[batch, H, W]``;
    ``attribute`` the mean over each patch cell ``[batch, grid_h, grid_w]``."""

    def __init__(self, model, *, window: int | tuple[int, int] | None = None,
                 stride: int | tuple[int, int] | None = None, baseline: float | Tensor = 0.0, score: str = "logit",
                 memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, batch_size: int | None = None,
                 progress: bool | None = None):
        cfg = model.cfg
        self.model, self.score = model, check_score(score, "the output [k, n_out] to [k]")
        self.progress = check_flag(progress, "progress")
        self.memory_budget_gb = check_float(memory_budget_gb, "memory_budget_gb", low=0, low_open=True)
        self.batch_size = check_int(batch_size, "batch_size", low=1, none_ok=True)
        self.window = check_int_pair(cfg.patch_size if window is None else window, "window (pixels)")
        self.stride = check_int_pair(self.window if stride is None else stride, "stride (pixels)")
        h, w = cfg.image_size
        if self.window[0] > h or self.window[1] > w:
            raise ValueError(f"window {self.window} exceeds the image size {(h, w)}")
        if any(s > k for s, k, n in zip(self.stride, self.window, (h, w)) if k < n):
            raise ValueError(f"stride {self.stride} must not exceed the window {self.window} (pixels would be "
                             "left out)")
        self.starts = [[k * s for k in range(math.ceil((n - win) / s) + 1)]
                       for n, win, s in zip((h, w), self.window, self.stride)]
        if isinstance(baseline, Tensor):
            if baseline.shape not in ((), (cfg.in_chans, h, w)):
                raise ValueError(f"baseline must be a float or a [{cfg.in_chans}, {h}, {w}] tensor (normalized "
                                 f"input); got shape {tuple(baseline.shape)}")
            check_finite_tensor(baseline, "baseline")
        else:
            baseline = check_float(baseline, "baseline (normalized input value)")
        self.baseline = baseline

    @property
    def n_windows(self) -> int:
        return len(self.starts[0]) * len(self.starts[1])

    def windows(self, lo: int, hi: int) -> Float[Tensor, "n h w"]:
        """Indicator of windows ``lo..hi-1`` (row-major over window positions), truncated at the border."""
        h, w = self.model.cfg.image_size
        out = torch.zeros(hi - lo, h, w)
        n_cols = len(self.starts[1])
        for i, k in enumerate(range(lo, hi)):
            r, c = self.starts[0][k // n_cols], self.starts[1][k % n_cols]
            out[i, r:r + self.window[0], c:c + self.window[1]] = 1.0
        return out

    @torch.inference_mode()
    def attribute_pixels(self, images: Float[Tensor, "batch chan height width"],
                         target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch height width"]:
        model = self.model
        images, targets = prepare_inputs(model, images, target)
        param = next(model.parameters())
        baseline = torch.as_tensor(self.baseline, dtype=param.dtype, device=param.device).expand_as(images[0])
        n = self.n_windows
        chunk = lambda lo, hi: self.windows(lo, hi).to(param.device)  # noqa: E731  (lazy window masks)
        count = sum(self.windows(lo, min(lo + 256, n)).sum(0) for lo in range(0, n, 256)).to(param.device)
        maps = []
        for b in tqdm(range(len(images)), disable=not (self.progress or (self.progress is None and len(images) > 1)),
                      desc="Occlusion"):
            clean = masked_scores(model, images[b], torch.ones(1, *images.shape[2:]), images[b], targets[b],
                                  kind=self.score)
            total = torch.zeros(images.shape[2:], device=param.device)
            # mask 1 = baseline inside the window: the baseline is the masked-in "image", the image the reference
            for _, _, window, scores in iter_masked_scores(model, baseline, chunk, images[b], targets[b],
                                                           kind=self.score, n_masks=n, batch_size=self.batch_size,
                                                           memory_budget_gb=self.memory_budget_gb):
                total += torch.einsum("n,nhw->hw", clean - scores.float(), window[:, 0].float())
            maps.append(total / count)
        return torch.stack(maps)
