"""MDA: Metric-Driven Attributions for Vision Transformers (Walker, Jha & Ewetz, ICLR 2025; reference code
chasewalker26/MDA-Metric-Driven-Attributions-for-ViT, ``util/attribution_methods/MDAFunctions.py``).

The attribution is optimized for the insertion/deletion metrics themselves, in two steps over the patches:

1. Patch order (greedy search). *Insertion*: starting from the blurred image, repeatedly reveal the patch
   that raises the target probability most, among the ``c = min(2⌊√n⌋, 28)`` highest-ranked unrevealed
   patches of a prior attribution, until the normalized response ``(P − P_blur) / |P_x − P_blur|``
   reaches ``cutoff``. *Deletion*: build the worst insertion from the mean-colour image (``0`` after
   normalization): the revealed patches of step 1, in reverse, are inserted last; before them, repeatedly
   insert the patch that raises the probability least among the ``c`` lowest-ranked free patches. Its
   reverse is the deletion order (most important first).
2. Patch magnitude. The deletion curve of that order, normalized ``(P − P_0) / |P_x − P_0|``, clipped to
   [0, 1] and made monotone (running minimum), is projected onto convex curves (least squares with both
   ends fixed, values in [0, 1]: the reference's quadratic program); the patch at deletion rank i gets
   ``a_i = Δ_i / |patch| + Δ_i (n − i) / n`` with ``Δ_i = y_{i−1} − y_i``. The insertion and deletion
   curves of that map are measured, combined into ``(1 − ins + del) / 2`` (monotone-normalized like the
   reference's MAS metric), projected again, and the magnitudes recomputed from the new curve.
   ``gamma`` mixes this sparse map with a dense one (``(n − i) / n`` where ``a_i ≥ kappa``, rescaled to
   the same maximum): ``(1 − gamma) · sparse + gamma · dense``.

Defaults as in the reference evaluation (``MDA_results/evaluations/MDATest.py``): ``cutoff=0.9``,
``kappa=0.005``, ``gamma=0`` (the map its scripts report as plain "MDA") and the reference's insertion
blur, ``gkern(31, 31)`` of ``util/test_methods/MASTestFunctions.py``: a unit impulse at the centre of a
31×31 array smoothed by ``scipy.ndimage.gaussian_filter`` with sigma 31 (reflecting boundary, truncated at
4 sigma), which folds the wide Gaussian back into the array: nearly a flat 31×31 box (largest/smallest
weight 1.0002, sum 1), applied per channel with zero padding (:func:`reference_blur`; ``blur_size`` and
``blur_sigma`` are its two arguments).

What still differs from the reference, and why:

* Prior: ``prior="tam"`` (Transition Attention Maps); the reference orders candidates by Bi-Attn, which
  this library does not have (any registered name or callable works).
* Segments: the model's patches; the reference runs SLIC with ``n_segments`` = number of patches and
  compactness 10000, an almost regular grid whose cells need not fall on the patch borders. Patches make
  the map the model's own token grid and need no segmentation dependency.
* Blur size per image: the reference's script enlarges kernel and sigma by 2 until ``P_blur ≤ 1 %`` (up
  to 101, dropping images that never get there), which selects its evaluation images; here the blur is a
  fixed setting so every image gets a map under the same settings.
* Target: any class (``target``); the reference always explains the predicted class (``target=None``).
* Curves: the deletion curve is ``[P_x, …, P_0]`` with n + 1 points (the reference's array repeats P_x
  and omits P_0); the MAS curves are measured per patch (the reference measures them every 224 pixels and
  interpolates to n + 1 points), which is exact for a patch-level map and cheaper.

Cost per image: about ``L·c + (n − L)·c`` forwards for the greedy search (L = patches revealed before the
cutoff; at most ``n·c``, e.g. ≈ 7,000 for a 16×16 grid), plus ``L + 2n`` for the curves, plus the prior.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from caap.masking import DEFAULT_MEMORY_BUDGET_GB, masked_scores
from caap.targets import prepare_inputs
from caap.validation import check_flag, check_float, check_int


def convex_projection(curve: np.ndarray) -> np.ndarray:
    """Least-squares projection of ``curve`` onto convex sequences in [0, 1] with both ends kept (the
    reference's cvxopt QP), solved with scipy's SLSQP."""
    from scipy.optimize import minimize

    r = np.asarray(curve, dtype=np.float64)
    n = len(r)
    if n <= 2:
        return r.copy()
    second = np.zeros((n - 2, n))
    idx = np.arange(n - 2)
    second[idx, idx], second[idx, idx + 1], second[idx, idx + 2] = 1.0, -2.0, 1.0
    ends = np.zeros((2, n))
    ends[0, 0] = ends[1, -1] = 1.0
    constraints = [{"type": "ineq", "fun": lambda y: second @ y, "jac": lambda y: second},
                   {"type": "eq", "fun": lambda y: ends @ y - r[[0, -1]], "jac": lambda y: ends}]
    start = np.linspace(r[0], r[-1], n)  # feasible: a straight line between the kept ends
    result = minimize(lambda y: float(((y - r) ** 2).sum()), start, jac=lambda y: 2 * (y - r), method="SLSQP",
                      bounds=[(0.0, 1.0)] * n, constraints=constraints, options={"maxiter": 500, "ftol": 1e-12})
    return np.clip(result.x, 0.0, 1.0)


def monotone_normalized(scores: np.ndarray, low: float, high: float, decreasing: bool) -> np.ndarray:
    """``(P − low) / |high − low|`` clipped to [0, 1], then running min (deletion) or max (insertion)."""
    span = abs(high - low)
    norm = np.clip((np.asarray(scores, dtype=np.float64) - low) / (span if span > 0 else 1.0), 0.0, 1.0)
    return np.minimum.accumulate(norm) if decreasing else np.maximum.accumulate(norm)


def magnitudes(curve: np.ndarray, patch_pixels: int) -> np.ndarray:
    """``a_i = Δ_i / |patch| + Δ_i (n − i) / n`` for deletion ranks i = 1..n of a convex curve."""
    n = len(curve) - 1
    delta = curve[:-1] - curve[1:]
    rank = np.arange(1, n + 1)
    return delta / patch_pixels + delta * (n - rank) / n


def reference_kernel_1d(size: int, sigma: float) -> Float[Tensor, "size"]:
    """One axis of the reference's ``gkern(size, sigma)``: ``scipy.ndimage.gaussian_filter`` of a unit
    impulse at ``size // 2`` (mode ``"reflect"``, truncate 4). Output ``i`` collects the normalized Gaussian
    weights ``w_t ∝ exp(−t² / 2σ²)``, ``|t| ≤ ⌊4σ + 0.5⌋``, of every offset ``t`` whose half-sample reflection
    of ``i + t`` (period ``2·size``) lands on the impulse. Float64."""
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-t ** 2 / (2 * sigma ** 2))
    w = w / w.sum()
    m = (torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)[None, :]) % (2 * size)
    source = torch.where(m < size, m, 2 * size - 1 - m)  # ... c b a | a b c ... c | c b a ...
    return torch.where(source == size // 2, w, 0.0).sum(1)


def reference_blur(images: Float[Tensor, "b c h w"], size: int = 31, sigma: float = 31.0) -> Float[Tensor, "b c h w"]:
    """The reference's insertion blur: each channel correlated with ``gkern(size, sigma)`` (the outer
    product of :func:`reference_kernel_1d`; no renormalization) with zero padding ``size // 2``, as its
    ``conv2d(x, kern, padding=klen // 2)``. ``size`` must be odd to keep the image size."""
    k1 = reference_kernel_1d(size, sigma)
    kernel = (k1[:, None] * k1[None, :]).to(images.dtype).to(images.device)
    c = images.shape[1]
    return F.conv2d(images, kernel.expand(c, 1, size, size), padding=size // 2, groups=c)


class MDA:
    """Metric-Driven Attribution (see the module docstring). ``attribute(images, target)`` returns
    ``[batch, grid_h, grid_w]``. ``last_history`` keeps, per image, the greedy responses, the curves and
    the order, for inspection."""

    def __init__(self, model, *, prior: str | Callable = "tam", cutoff: float = 0.9, kappa: float = 0.005,
                 gamma: float = 0.0, max_candidates: int = 28, blur_size: int = 31, blur_sigma: float = 31.0,
                 memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, batch_size: int | None = None,
                 progress: bool | None = None):
        cutoff = check_float(cutoff, "cutoff", low=0, high=1, low_open=True)
        kappa = check_float(kappa, "kappa", low=0)
        gamma = check_float(gamma, "gamma", low=0, high=1)
        max_candidates = check_int(max_candidates, "max_candidates", low=1)
        blur_size = check_int(blur_size, "blur_size")
        if blur_size < 1 or blur_size % 2 == 0:  # the blur pads blur_size // 2 per side: even would change the size
            raise ValueError(f"blur_size must be an odd int >= 1 (pixels); got {blur_size!r}")
        blur_sigma = check_float(blur_sigma, "blur_sigma", low=0, low_open=True)
        memory_budget_gb = check_float(memory_budget_gb, "memory_budget_gb", low=0, low_open=True)
        batch_size = check_int(batch_size, "batch_size", low=1, none_ok=True)
        progress = check_flag(progress, "progress")
        self.model, self.cutoff, self.kappa, self.gamma = model, cutoff, kappa, gamma
        n = model.cfg.n_patches
        self.n_candidates = max(1, min(2 * int(math.isqrt(n)), max_candidates))
        self.blur_size, self.blur_sigma = blur_size, blur_sigma
        self.memory_budget_gb, self.batch_size, self.progress = memory_budget_gb, batch_size, progress
        if isinstance(prior, str):
            from caap.registry import get_method

            prior = get_method(prior, model).attribute
        if not callable(prior):
            raise TypeError(f"prior must be a registered method name or a callable(images, target); got {prior!r}")
        self.prior = prior
        ph, pw = model.cfg.patch_size
        self.patch_pixels = ph * pw
        self.last_history: list[dict] = []

    # -- masks: a set of patches -> a pixel mask ---------------------------------------------------
    def _mask(self, patch_sets: list[list[int]]) -> Float[Tensor, "k h w"]:
        cfg = self.model.cfg
        grid = torch.zeros(len(patch_sets), cfg.n_patches)
        for i, patches in enumerate(patch_sets):
            grid[i, list(patches)] = 1.0
        grid = grid.view(-1, *cfg.grid_size)
        return grid.repeat_interleave(cfg.patch_size[0], 1).repeat_interleave(cfg.patch_size[1], 2)

    def _scores(self, image, reference, patch_sets, target) -> np.ndarray:
        """Target probability with the patches of each set taken from ``image``, the rest from ``reference``."""
        s = masked_scores(self.model, image, self._mask(patch_sets), reference, target, kind="prob",
                          memory_budget_gb=self.memory_budget_gb, batch_size=self.batch_size)
        return s.double().cpu().numpy()

    def greedy(self, image, reference, target, ranking: list[int], *, maximize: bool, n_steps: int,
               fixed: list[int] = (), stop: Callable[[float], bool] | None = None) -> tuple[list[int], list[float]]:
        """Reveal ``n_steps`` patches one at a time on ``reference``, each the best (``maximize``) or worst
        of the first ``c`` free patches of ``ranking`` (patches in ``fixed`` are never candidates)."""
        chosen, responses = [], []
        taken = set(fixed)
        for _ in range(n_steps):
            candidates = [p for p in ranking if p not in taken][: self.n_candidates]
            if not candidates:
                break
            scores = self._scores(image, reference, [chosen + [p] for p in candidates], target)
            best = int(np.argmax(scores) if maximize else np.argmin(scores))
            chosen.append(candidates[best])
            taken.add(candidates[best])
            responses.append(float(scores[best]))
            if stop is not None and stop(responses[-1]):
                break
        return chosen, responses

    def _curve(self, image, reference, order, target) -> np.ndarray:
        """Probabilities as the patches of ``order`` are revealed one by one on ``reference`` (n + 1 points)."""
        return self._scores(image, reference, [order[:k] for k in range(len(order) + 1)], target)

    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        model = self.model
        images, targets = prepare_inputs(model, images, target)
        param = next(model.parameters())
        with torch.inference_mode(False), torch.enable_grad():  # gradient priors also under inference-mode callers
            prior = self.prior(images.clone(), targets.clone()).detach().float().reshape(len(images), -1).cpu()
        maps, self.last_history = [], []
        show = self.progress or (self.progress is None and len(images) > 1)
        for b in tqdm(range(len(images)), disable=not show, desc="MDA"):
            maps.append(self._one(images[b], int(targets[b]), prior[b]))
        return torch.stack(maps).to(param.device)

    @torch.inference_mode()
    def _one(self, image, target, prior) -> Float[Tensor, "grid_h grid_w"]:
        n = self.model.cfg.n_patches
        zero = torch.zeros_like(image)
        blurred = reference_blur(image[None], self.blur_size, self.blur_sigma)[0]
        p_x, p_blur = self._scores(image, blurred, [list(range(n)), []], target).tolist()
        p_zero = float(self._scores(image, zero, [[]], target)[0])
        high_first = torch.argsort(prior, descending=True, stable=True).tolist()
        # 1a. insertion on the blurred image, stopped at the cutoff
        reach = lambda p: (p - p_blur) / max(abs(p_x - p_blur), 1e-12) >= self.cutoff  # noqa: E731
        inserted, ins_resp = self.greedy(image, blurred, target, high_first, maximize=True, n_steps=n, stop=reach)
        # 1b. worst insertion from the mean colour; the inserted patches come last, most important at the end
        tail = inserted[::-1]
        head, del_resp = self.greedy(image, zero, target, high_first[::-1], maximize=False, n_steps=n - len(tail),
                                     fixed=tail)
        worst = head + [p for p in high_first[::-1] if p not in set(head) | set(tail)] + tail
        order = worst[::-1]  # deletion order, most important first
        # 2. magnitudes from the convex deletion curve
        deletion = self._curve(zero, image, order, target)  # reveal the mean colour patch by patch = delete
        y = convex_projection(monotone_normalized(deletion, p_zero, p_x, decreasing=True))
        values = self._place(order, magnitudes(y, self.patch_pixels))
        mas_order = torch.argsort(values, descending=True, stable=True).tolist()
        ins = monotone_normalized(self._curve(image, blurred, mas_order, target), p_blur, p_x, decreasing=False)
        dele = monotone_normalized(self._curve(zero, image, mas_order, target), p_zero, p_x, decreasing=True)
        y2 = convex_projection(1 - (ins + 1 - dele) / 2)
        sparse = magnitudes(y2, self.patch_pixels)
        rank = np.arange(1, n + 1)
        dense = np.where(sparse >= self.kappa, (n - rank) / n, sparse)
        if dense.max() > 0:
            dense = dense / dense.max() * sparse.max()
        final = self._place(mas_order, (1 - self.gamma) * sparse + self.gamma * dense)
        self.last_history.append({"inserted": inserted, "insertion_responses": ins_resp, "order": order,
                                  "worst_insertion_responses": del_resp, "deletion_curve": deletion,
                                  "convex_curve": y, "mas_curve": y2, "p_x": p_x, "p_blur": p_blur,
                                  "p_zero": p_zero})
        return final.view(*self.model.cfg.grid_size)

    def _place(self, order: list[int], values: np.ndarray) -> Tensor:
        out = torch.zeros(self.model.cfg.n_patches, dtype=torch.float32)
        out[torch.as_tensor(order)] = torch.as_tensor(values, dtype=torch.float32)
        return out
