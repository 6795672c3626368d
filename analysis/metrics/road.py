"""ROAD, RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022), noisy linear imputation.

Follows the authors' code (tleemann/road_evaluation):

* ``road/imputations.py`` ``NoisyLinearImputer(noise=0.01)``: every removed pixel equals the weighted mean of
  its in-image 8 neighbours (1/6 side, 1/12 diagonal, renormalized at the border), removed neighbours being
  unknowns too (one sparse linear system, the same matrix for every channel), plus N(0, 0.01²) noise on the
  removed pixels only;
* in [0, 1] pixel space: ``run_road`` normalizes *after* imputing (``transform_test``; ``ToTensor`` before,
  ``Normalize`` after in ``experiments/cifar10/NoRetrainingMethod.py``), so the image is un-normalized with the
  model's mean / std, imputed and normalized again (the noise is 0.01 in pixel units);
* percentages 10, 20, 30, 40, 50, 70, 90 % (``noretrain_params.json``, ``RoadBenchmarkDemo.ipynb``);
  ``road/imputed_dataset.py``: MoRF removes the ``int(H·W·p)`` most relevant pixels, LeRF (``remove=False``)
  removes all but the ``int(H·W·p)`` most relevant;
* read-out: top-1 accuracy (``road/retraining.py`` ``road_eval``; Quantus ``ROAD`` likewise), here top-1 ==
  the explained class (``caap bench --target label`` gives their accuracy). For one image ``ROAD-MoRF`` /
  ``ROAD-LeRF`` = the mean over the 7 percentages (lower / higher is better); the per-percentage hits and the
  class's softmax probabilities are kept in ``road_curves``.

Deviations: ties keep raster order (``pixel_ranks``, as every metric of the suite) instead of the authors' fixed
1e-4 Gaussian jitter; the noise is seeded per image (the same draws for every method of that image).
Written here for speed (the authors build a ``lil_matrix`` and call ``spsolve`` per image): the system is built
vectorized, ordered by geometric nested dissection and factorized once by SuperLU for all channels; a test
keeps it equal to Quantus' ``noisy_linear_imputation``. Cost per map: 14 forwards (batched by the memory
budget) and 14 sparse solves of up to 0.9·H·W unknowns.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Bool, Float
from scipy.sparse.linalg import splu
from torch import Tensor

from analysis.metrics.pixels import pixel_ranks
from analysis.metrics.random_logit import image_seed
from analysis.metrics.registry import Context, Metric
from caap.masking import iter_batched_outputs

PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
NOISE = 0.01
# (row offset, column offset, weight) of road/imputations.py ``neighbors_weights``
NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6),
              (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))


def _dissection(r: np.ndarray, c: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Geometric nested dissection of the grid points (r, c) inside ``box`` (r0, r1, c0, c1): both halves of
    the longer side, then the separating line (one line separates the 8-neighbour stencil). SuperLU factorizes
    these systems 1.2-2x slower with its own MMD / COLAMD orderings (70-90 % of 224 x 224 removed)."""
    out: list[np.ndarray] = []

    def split(ids: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> None:
        if len(ids) <= 64:
            out.append(ids)
            return
        if r1 - r0 >= c1 - c0:
            mid = (r0 + r1) // 2
            key, first, second = r[ids], (r0, mid, c0, c1), (mid + 1, r1, c0, c1)
        else:
            mid = (c0 + c1) // 2
            key, first, second = c[ids], (r0, r1, c0, mid), (r0, r1, mid + 1, c1)
        split(ids[key < mid], *first)
        split(ids[key > mid], *second)
        out.append(ids[key == mid])

    split(np.arange(len(r)), *box)
    return np.concatenate(out)


def noisy_linear_imputation(image: Float[Tensor, "chan H W"], keep: Bool[Tensor, "H W"], noise: float = NOISE,
                            seed: int | Sequence[int] = 0) -> Float[Tensor, "chan H W"]:
    """The authors' ``NoisyLinearImputer``: pixels where ``keep`` is False are replaced by the solution of
    ``x_i = Σ_j w_j v_j / Σ_j w_j`` over the in-image 8 neighbours j (``v_j`` the image where kept, the unknown
    otherwise), plus ``noise`` × N(0, 1) drawn from ``numpy.random.default_rng(seed)`` (one ``[chan, H, W]``
    field, used at the removed pixels). Kept pixels are returned unchanged. Solved in float64."""
    if image.ndim != 3 or keep.shape != image.shape[1:] or keep.dtype != torch.bool:
        raise ValueError(f"image must be [chan, H, W] and keep a bool [H, W] of the same size; got image "
                         f"{tuple(image.shape)}, keep {tuple(keep.shape)} {keep.dtype}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0 (the std of the added Gaussian noise); got {noise!r}")
    if not bool(keep.any()):
        raise ValueError("keep must keep at least one pixel; with none the imputation system is singular")
    c, h, w = image.shape
    known = keep.cpu().numpy().ravel()
    values = image.detach().cpu().double().numpy().reshape(c, -1)
    removed = np.flatnonzero(~known)
    n = len(removed)
    out = values.copy()
    if n:
        r, col = np.divmod(removed, w)
        pos = np.empty(n, dtype=np.int64)
        pos[_dissection(r, col, (0, h, 0, w))] = np.arange(n)  # the unknown of removed[k] sits at pos[k]
        var = np.full(h * w, -1, dtype=np.int64)
        var[removed] = pos
        diag = np.zeros(n)
        a_parts, b_parts = [], []  # (rows, columns, values) of the system matrix and of the kept neighbours
        for dr, dc, weight in NEIGHBOURS:
            rr, cc = r + dr, col + dc
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            i, j = pos[inside], rr[inside] * w + cc[inside]
            diag[i] += weight
            kept = known[j]
            a_parts.append((i[~kept], var[j[~kept]], np.full(int((~kept).sum()), -weight)))
            b_parts.append((i[kept], j[kept], np.full(int(kept.sum()), weight)))
        a_parts.append((np.arange(n), np.arange(n), diag))
        a_rows, a_cols, a_vals = (np.concatenate(x) for x in zip(*a_parts))
        b_rows, b_cols, b_vals = (np.concatenate(x) for x in zip(*b_parts))
        # Σ_j w_j · x_i − Σ_{j removed} w_j x_j = Σ_{j kept} w_j v_j: symmetric, diagonally dominant: no pivoting
        a = sp.csc_matrix((a_vals, (a_rows, a_cols)), shape=(n, n))
        b = sp.csr_matrix((b_vals, (b_rows, b_cols)), shape=(n, h * w)) @ values.T
        solved = splu(a, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True}).solve(b)
        out[:, removed] = solved[pos].T
        if noise > 0:
            out[:, removed] += noise * np.random.default_rng(seed).standard_normal((c, h * w))[:, removed]
    return torch.from_numpy(out.reshape(c, h, w)).to(image.dtype)


def curves(ctx: Context, maps) -> tuple[Tensor, Tensor]:
    """Top-1 hits (== ``ctx.target``) and softmax probabilities of ``ctx.target``, each
    ``[maps, 2 (MoRF, LeRF), 7 percentages]``, on the noisy-linearly imputed images."""
    h, w = ctx.image.shape[-2:]
    mean = torch.tensor(ctx.model.cfg.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(ctx.model.cfg.std, dtype=torch.float64).view(-1, 1, 1)
    pixels = ctx.image[0].detach().cpu().double() * std + mean  # the authors' [0, 1] space
    ranks = [pixel_ranks(m, (h, w), device="cpu") for m in maps]
    counts = [int(h * w * p) for p in PERCENTAGES]
    seed = image_seed(ctx.seed, ctx.sample)
    n_p = len(PERCENTAGES)

    def imputed(k: int) -> Tensor:
        m, order, p = k // (2 * n_p), k // n_p % 2, k % n_p
        keep = ranks[m] >= counts[p] if order == 0 else ranks[m] < counts[p]  # MoRF removes / LeRF keeps top p
        return (noisy_linear_imputation(pixels, keep, NOISE, (seed, order, p)) - mean) / std

    param = next(ctx.model.parameters())
    target = ctx.target
    hits = torch.empty(len(maps) * 2 * n_p, dtype=torch.float64)
    probs = torch.empty_like(hits)

    def inputs(lo: int, hi: int) -> Tensor:
        return torch.stack([imputed(k) for k in range(lo, hi)]).to(param.device, param.dtype)

    for lo, hi, out in iter_batched_outputs(ctx.model, hits.numel(), inputs, memory_budget_gb=ctx.memory_budget_gb,
                                            batch_size=ctx.batch_size):
        hits[lo:hi] = (out.argmax(-1) == target).float().cpu()
        probs[lo:hi] = out.float().softmax(-1)[:, target].cpu()
    return hits.view(len(maps), 2, n_p), probs.view(len(maps), 2, n_p)


def score(ctx: Context, names, maps) -> list[dict]:
    hits, probs = curves(ctx, maps)
    return [{"road_morf": float(hits[k, 0].mean()), "road_lerf": float(hits[k, 1].mean()),
             "road_curves": {"morf": hits[k, 0].tolist(), "lerf": hits[k, 1].tolist(),
                             "morf_prob": probs[k, 0].tolist(), "lerf_prob": probs[k, 1].tolist()}}
            for k in range(len(maps))]


def metric() -> Metric:
    return Metric("road", {"road_morf": "ROAD-MoRF ↓", "road_lerf": "ROAD-LeRF ↑"}, frozenset({"road_morf"}),
                  score=score, settings={"percentages": list(PERCENTAGES), "noise": NOISE,
                                         "imputation": "noisy linear, 8 neighbours 1/6 side 1/12 diagonal, "
                                                       "in [0, 1] pixel space",
                                         "orders": "MoRF removes the top p; LeRF keeps the top p",
                                         "read": "top-1 == explained class, mean over percentages",
                                         "ties": "raster order", "seed": "per image"})
