"""Reference engine: the patching experiment exactly as defined, with hooks on every block."""
from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens.patching.context import ContextCache
from vit_lens.patching.interventions import Intervention, pack_positions
from vit_lens.patching.readouts import Readout


@torch.inference_mode()
def run_loop(
    model,
    source: ContextCache,
    target: ContextCache,
    interventions: Sequence[Intervention],
    readout: Readout,
    *,
    freeze_context: bool = True,
    chunk_size: int = 16,
    progress: bool = False,
) -> Float[Tensor, "batch K"]:
    """For each intervention, rerun the target context with every block's ``hook_resid_pre`` edited:
    patch tokens outside ``S_k`` are set to the target run (if ``freeze_context``), tokens in ``S_k``
    to the source run for ``layer_start <= b <= layer_end``; prefix tokens are always recomputed.
    ``chunk_size`` interventions (times the source batch) share one forward."""
    cfg = model.cfg
    if source.n_blocks != cfg.n_layers or target.n_blocks != cfg.n_layers:
        raise ValueError(f"the loop engine reads every block of both caches ({cfg.n_layers}); got {source.n_blocks} "
                         f"source and {target.n_blocks} target blocks (build them without cache_context's up_to)")
    n_images, n_pos, device = source.batch, cfg.n_tokens, source.resid_pre.device
    packed = pack_positions(interventions, device=device)
    starts = torch.tensor([iv.layer_start for iv in interventions], device=device)
    ends = torch.tensor([iv.layer_end for iv in interventions], device=device)
    scores = []
    for lo in tqdm(range(0, len(interventions), chunk_size), disable=not progress, desc="patching (loop)"):
        hi = min(lo + chunk_size, len(interventions))
        n_iv = hi - lo
        in_set = torch.zeros(n_iv, n_pos, dtype=torch.bool, device=device)
        in_set.scatter_(1, packed.positions[lo:hi], True)
        frozen = ~in_set
        frozen[:, : cfg.n_prefix_tokens] = False

        def edit(resid: Tensor, hook, block: int) -> Tensor:
            resid = resid.view(n_images, n_iv, n_pos, -1)
            tgt = target.resid_pre[block][:, None]  # [batch or 1, 1, pos, d]
            if block == 0:  # the run starts from the target's block-0 input, whose hooks already fired
                resid = tgt.expand_as(resid)
            elif freeze_context:
                resid = torch.where(frozen[None, :, :, None], tgt, resid)
            active = (starts[lo:hi] <= block) & (block <= ends[lo:hi])
            patch = in_set & active[:, None]
            resid = torch.where(patch[None, :, :, None], source.resid_pre[block][:, None], resid)
            return resid.reshape(n_images * n_iv, n_pos, -1)

        hooks = [(f"blocks.{b}.hook_resid_pre", lambda r, hook, b=b: edit(r, hook, b)) for b in range(cfg.n_layers)]
        start = target.resid_pre[0].expand(n_images, -1, -1)
        start = start[:, None].expand(-1, n_iv, -1, -1).reshape(n_images * n_iv, n_pos, -1)
        with model.hooks(fwd_hooks=hooks):
            out = model.forward_from_resid(start, 0)
        scores.append(readout(out.view(n_images, n_iv, -1)))
    return torch.cat(scores, dim=1)
