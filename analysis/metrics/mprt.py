"""Model Parameter Randomisation Test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"; Quantus
``MPRT`` with ``layer_order="top_down"`` / ``"independent"``).

Cascading (default): the blocks are randomized one more at a time from the last to the first, and the map
of the explained class on each randomized model is compared with the original map; independent: one block
at a time, the others kept. Randomizing a block replaces every parameter tensor of ``model.blocks[l]`` by
N(0, σ²) with σ the tensor's own standard deviation (its scale kept, its content destroyed; Adebayo et al.
re-initialize with the layer's initializer), drawn from a generator seeded per block, so cascading step 1
equals independent block L−1. Similarity per block: Spearman rank correlation of the maps (scipy) and SSIM
(Quantus' ``ssim``: max-abs normalized, flattened, scikit-image); both stored per block in the row
(``mprt_blocks``) for the figure. ``MPRT`` = mean Spearman over the blocks: lower = the map depends more on
the weights (a map that ignores them stays at 1 and fails the check). Cost: L explanations per map on
copies of the model (the method's own cost each), plus one model copy per image (the randomized copy is
shared by the image's methods).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from scipy.stats import ConstantInputWarning, spearmanr

from analysis.metrics.random_logit import similarity
from analysis.metrics.registry import Context, Metric

MODES = ("cascading", "independent")


@torch.no_grad()
def randomize_block(model, layer: int, seed: int) -> None:
    """Replace every parameter of ``model.blocks[layer]`` by N(0, std(tensor)²) in place (seeded)."""
    gen = torch.Generator().manual_seed(seed * 1009 + layer)
    for p in model.blocks[layer].parameters():
        std = float(p.float().std()) if p.numel() > 1 else float(p.float().abs().mean())
        p.copy_((torch.randn(p.shape, generator=gen) * std).to(p.device, p.dtype))


def block_similarities(ctx: Context, name: str, original, mode: str = "cascading") -> dict:
    """Per randomized block (last to first): Spearman and SSIM of the randomized model's map vs ``original``."""
    return _similarities(ctx, [name], [original], mode)[0]


def _similarities(ctx: Context, names, originals, mode: str) -> list[dict]:
    """:func:`block_similarities` of every method of one image, on one randomized copy of the model shared by all
    of them (each block is randomized once per image, not once per method: same seed, same weights)."""
    if mode not in MODES:
        raise ValueError(f"mprt mode must be one of {MODES}; got {mode!r}")
    if ctx.rebuild is None:
        raise ValueError(f"mprt needs to rebuild method {names[0]!r} on a randomized model (Context.rebuild); "
                         f"got None")
    blocks = getattr(ctx.model, "blocks", None)
    if blocks is None:
        raise ValueError(f"mprt randomizes transformer blocks (model.blocks); {type(ctx.model).__name__} has none")
    target = torch.tensor([ctx.target], device=ctx.image.device)
    refs = [original[0].detach().cpu().numpy().ravel() for original in originals]
    model = copy.deepcopy(ctx.model)
    outs = [{"block": [], "spearman": [], "ssim": []} for _ in names]
    for layer in reversed(range(len(blocks))):
        saved = None if mode == "cascading" else copy.deepcopy(model.blocks[layer].state_dict())
        randomize_block(model, layer, ctx.seed)
        for name, ref, out in zip(names, refs, outs):
            m = ctx.rebuild(name, model)(ctx.image, target).float()[0].detach().cpu().numpy().ravel()
            with warnings.catch_warnings():  # scipy warns on a constant map; its NaN is handled just below
                warnings.simplefilter("ignore", ConstantInputWarning)
                rho = spearmanr(ref, m).statistic
            out["block"].append(layer)
            out["spearman"].append(float(np.nan_to_num(rho)))  # a constant map has no ranks: 0 correlation
            out["ssim"].append(similarity(ref, m))
        if saved is not None:
            model.blocks[layer].load_state_dict(saved)
    return outs


def metric(mode: str = "cascading") -> Metric:
    if mode not in MODES:
        raise ValueError(f"mprt mode must be one of {MODES}; got {mode!r}")

    def score(ctx: Context, names, maps) -> list[dict]:
        return [{"mprt": float(np.mean(per["spearman"])), "mprt_blocks": per}
                for per in _similarities(ctx, list(names), list(maps), mode)]

    return Metric("mprt", {"mprt": "MPRT ↓"}, frozenset({"mprt"}), score=score,
                  settings={"mode": mode, "randomization": "N(0, std(tensor)^2) per block parameter, seeded",
                            "similarity": "spearman (summary), ssim stored", "order": "last block first"})
