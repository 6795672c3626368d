"""Attribution patching (AtP) of the frozen-context experiment: every intervention's score to first order
around the target (blank) context, from one backward (Nanda 2023; AtP*: Kramár et al. 2024, Sec. 3.1).

The exact engines evaluate, for intervention ``k`` with set ``S_k`` and blocks ``l_s..l_e``,
``f_k(x) = score`` when ``blocks.{l}.hook_resid_pre[S_k] := x_l`` for ``l_s <= l <= l_e``, patch tokens
outside ``S_k`` frozen at the target's values and the prefix recomputed. Every overwrite replaces the whole
residual, so ``x_l`` (``l < l_e``) acts only through block ``l``'s keys/values read by the prefix queries,
and ``x_{l_e}`` also through ``S_k``'s own computation from ``l_e`` on. AtP evaluates

    f_k(target) + sum_{l, t in S_k} (source - target)^l_t . G^l_t,

``G^l = d score / d x_l`` in ONE graph: the target run with every patch token's ``hook_resid_pre`` at
``l_s..l_e`` replaced by a leaf (so a token's own blocks inside the range carry no gradient, as the
overwrites cut them) and every token computed normally after ``l_e``. This is exactly
``d/de f_k(target + e (source - target))`` at ``e = 0`` whenever nothing after ``l_e`` reads a patch token
outside ``S_k`` (``l_e`` the last block, or ``S_k`` the whole grid: tested against finite differences of
the loop engine); otherwise the paths through the tokens CAAP freezes after ``l_e`` are linearized too.

``exact_prefix_attention`` (AtP*'s fix for attention saturation): the first attention hop of every block
in the range — the prefix queries reading ``S_k``'s patched keys/values — is recomputed exactly per
intervention (softmax renormalized with the source's keys, from the target's log-sum-exp) and only its
effect downstream is linearized. Exact when that hop is the only nonlinearity (tested).

Cost: the target run from ``l_s`` and its backward, once per readout row; for a :class:`ClassScore` on a
shared target the gradients are cached on the target context per class, so each further image costs only
its source forward (the cached context) and ``O(K |S| d)``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor

from vit_lens.patching.context import ContextCache
from vit_lens.patching.interventions import Intervention, PackedPositions, group_by_layers, pack_positions
from vit_lens.patching.readouts import ClassScore, Readout

CACHED_CLASSES = 32  # gradient sets kept per target context (each ~ (l_e - l_s + 1) * n_patches * d_model)


@dataclass
class BlankGradients:
    """One readout row's gradients at the target context, for blocks ``l_s..l_e`` (list index ``l - l_s``).

    ``score`` ``[rows]``; ``resid[i]`` ``[rows, n_patches, d_model]`` = ``G^l``; with the exact prefix hop,
    ``z[i]`` ``[rows, n_prefix, head, d_head]`` = d score / d ``attn.hook_z`` at the prefix and ``hop[i]``
    ``[rows, n_patches, d_model]`` = the part of ``G^l`` that passes through that hop."""

    score: Tensor
    resid: list[Tensor]
    z: list[Tensor] | None = None
    hop: list[Tensor] | None = None

    def rows(self, index: Tensor) -> "BlankGradients":
        pick = lambda ts: None if ts is None else [t[index] for t in ts]  # noqa: E731
        return BlankGradients(self.score[index], pick(self.resid), pick(self.z), pick(self.hop))

    @staticmethod
    def cat(parts: Sequence["BlankGradients"]) -> "BlankGradients":
        join = lambda name: None if getattr(parts[0], name) is None else [  # noqa: E731
            torch.cat(ts) for ts in zip(*(getattr(p, name) for p in parts))]
        return BlankGradients(torch.cat([p.score for p in parts]), join("resid"), join("z"), join("hop"))


def check_atp_supported(model, exact_prefix_attention: bool) -> None:
    cfg = model.cfg
    if cfg.pooling != "token":
        raise ValueError(f"attribution patching linearizes around a frozen context read through the CLS token; "
                         f"this model pools with pooling={cfg.pooling!r}, where every frozen token feeds the head "
                         f"directly; use engine='loop'")
    if exact_prefix_attention:
        hooked = [name for name, point in model.hook_dict.items() if point._forward_hooks]
        if hooked:
            raise ValueError(f"the exact prefix-attention hop (AtP*) recomputes attention outside the hook points, "
                             f"so it cannot honour hooks on {hooked[:4]}; remove them or use engine='atp'/'loop'")


def run_atp(
    model,
    source: ContextCache,
    target: ContextCache,
    interventions: Sequence[Intervention],
    readout: Readout,
    *,
    exact_prefix_attention: bool = False,
) -> Float[Tensor, "batch K"]:
    """AtP estimates ``[batch, K]`` of :func:`run_loop`'s scores (``freeze_context=True``), see the module
    docstring. ``readout`` must give one score per image (``[batch, 1]`` for an output ``[batch, 1, n_out]``)
    and act on each image independently. Cost: one target run from ``l_s`` plus its backward per readout
    row (cached per class for a :class:`ClassScore` on a batch-1 target), then ``O(K |S| d)`` per image."""
    check_atp_supported(model, exact_prefix_attention)
    if target.batch not in (1, source.batch):
        raise ValueError(f"target batch must be 1 or the source batch {source.batch}; got {target.batch}")
    device = source.resid_pre.device
    scores = None
    for (start, end), index in group_by_layers(interventions).items():
        grads = _gradients(model, source, target, readout, start, end, exact_prefix_attention)
        packed = pack_positions([interventions[i] for i in index], device=device)
        values = _estimate(model, source, target, grads, packed, start, end)
        if scores is None:
            scores = values.new_empty(source.batch, len(interventions))
        scores[:, index] = values
    return scores


def _estimate(model, source: ContextCache, target: ContextCache, grads: BlankGradients, packed: PackedPositions,
              start: int, end: int) -> Float[Tensor, "batch K"]:
    """``score(target) + sum_{l, t in S_k} delta^l_t . G^l_t`` (plus the exact-hop correction)."""
    n_pre = model.cfg.n_prefix_tokens
    per_token = 0
    for i, b in enumerate(range(start, end + 1)):
        delta = (source.resid_pre[b] - target.resid_pre[b])[:, n_pre:]
        gradient = grads.resid[i] if grads.hop is None else grads.resid[i] - grads.hop[i]
        per_token = per_token + (delta * gradient).sum(-1)  # [batch, n_patches]
    index = (packed.positions - n_pre)[None].expand(per_token.shape[0], -1, -1)  # [batch, K, set]
    gathered = per_token[:, None].expand(-1, index.shape[1], -1).gather(2, index)
    result = grads.score[:, None] + (gathered * packed.valid).sum(-1)
    if grads.z is not None:
        for i, b in enumerate(range(start, end + 1)):
            result = result + _exact_prefix_hop(model, source, target, b, packed, grads.z[i])
    return result


def _class_rows(readout) -> tuple[Tensor, str] | None:
    """``(classes, kind)`` when the readout is a plain :class:`ClassScore` (its gradients can be cached)."""
    if type(readout) is ClassScore and set(vars(readout)) == {"target", "kind"}:
        return readout.target, readout.kind
    return None


def _gradients(model, source, target, readout, start, end, exact) -> BlankGradients:
    """Per image: cached per (class, kind) for a class readout on a shared target, else one backward."""
    rows = _class_rows(readout) if target.batch == 1 else None
    if rows is None:
        return _backward(model, target, readout, source.batch, start, end, exact)
    classes, kind = rows
    classes = classes.reshape(-1).expand(source.batch) if classes.numel() == 1 else classes.reshape(-1)
    cache: OrderedDict = target.derived.setdefault("atp", OrderedDict())
    fingerprint = (tuple(p._version for p in model.parameters()),
                   tuple((name, tuple(point._forward_hooks)) for name, point in model.hook_dict.items()
                         if point._forward_hooks))
    parts = []
    for c in classes.tolist():
        key = (start, end, exact, kind, int(c), fingerprint)
        if key not in cache:
            one = ClassScore(torch.tensor([int(c)], device=source.resid_pre.device), kind)
            cache[key] = vars(_backward(model, target, one, 1, start, end, exact))  # plain dict: sized by caap
            while len(cache) > CACHED_CLASSES:
                cache.popitem(last=False)
        cache.move_to_end(key)
        parts.append(BlankGradients(**cache[key]))
    return BlankGradients.cat(parts)


def _backward(model, target: ContextCache, readout, n_rows: int, start: int, end: int, exact: bool) -> BlankGradients:
    """The target run from ``start`` with leaves at the patch tokens of blocks ``start..end`` (``n_rows``
    copies, one per readout row) and one backward of the summed scores."""
    n_pre = model.cfg.n_prefix_tokens
    # contexts are inference tensors: normal copies may enter the autograd graph
    with torch.inference_mode(False), torch.enable_grad():
        rows = lambda t: t.expand(n_rows, *t.shape[1:]).clone()  # noqa: E731
        leaves = [rows(target.resid_pre[b][:, n_pre:]).requires_grad_(True) for b in range(start, end + 1)]
        kept_z: dict[int, Tensor] = {}

        def overwrite(resid, hook, b):
            return torch.cat([resid[:, :n_pre], leaves[b - start]], dim=1)

        def keep_z(z, hook, b):
            kept_z[b] = z

        hooks = [(f"blocks.{b}.hook_resid_pre", lambda r, hook, b=b: overwrite(r, hook, b)) for b in range(start, end + 1)]
        if exact:
            hooks += [(f"blocks.{b}.attn.hook_z", lambda z, hook, b=b: keep_z(z, hook, b)) for b in range(start, end + 1)]
        with model.hooks(fwd_hooks=hooks):
            output = model.forward_from_resid(rows(target.resid_pre[start]), start)
        score = readout(output[:, None])
        if not isinstance(score, Tensor) or tuple(score.shape) != (n_rows, 1):
            got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise ValueError(f"attribution patching needs one score per image: the readout must map an output "
                             f"[{n_rows}, 1, n_out] to [{n_rows}, 1]; got {got}")
        inputs = leaves + ([kept_z[b] for b in range(start, end + 1)] if exact else [])
        grads = torch.autograd.grad(score.sum(), inputs, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
        n = end - start + 1
        resid = [g.detach() for g in grads[:n]]
        if not exact:
            return BlankGradients(score.detach()[:, 0], resid)
        z = [g[:, :n_pre].detach() for g in grads[n:]]
        hop = [_hop_gradient(model, target, b, z[i]) for i, b in enumerate(range(start, end + 1))]
        return BlankGradients(score.detach()[:, 0], resid, z, hop)


def _prefix_attention(model, resid: Tensor, b: int):
    """Block ``b``'s prefix queries attending to every key of ``resid`` ``[rows, pos, d_model]``: returns
    ``q`` ``[rows, pre, head, d_head]``, ``k``/``v`` ``[rows, pos, head, d_head]``, log-sum-exp
    ``[rows, head, pre]`` and ``z`` ``[rows, pre, head, d_head]``."""
    block, n_pre = model.blocks[b], model.cfg.n_prefix_tokens
    q, k, v = block.attn.compute_qkv(block.ln1(resid))
    q = q[:, :n_pre]
    logits = einsum(q, k, "r q h d, r k h d -> r h q k") * block.attn.scale
    lse = logits.logsumexp(-1)
    z = einsum((logits - lse[..., None]).exp(), v, "r h q k, r k h d -> r q h d")
    return q, k, v, lse, z


def _hop_gradient(model, target: ContextCache, b: int, z_grad: Tensor) -> Tensor:
    """The part of ``G^b`` through the prefix queries' attention at block ``b``: the VJP of
    ``patch residuals -> prefix hook_z`` with cotangent ``z_grad``, ``[rows, n_patches, d_model]``."""
    n_pre, rows = model.cfg.n_prefix_tokens, z_grad.shape[0]
    resid = target.resid_pre[b].expand(rows, -1, -1).clone()
    patches = resid[:, n_pre:].clone().requires_grad_(True)
    z = _prefix_attention(model, torch.cat([resid[:, :n_pre], patches], 1), b)[-1]
    return torch.autograd.grad(z, patches, grad_outputs=z_grad)[0].detach()


@torch.inference_mode()
def _exact_prefix_hop(model, source: ContextCache, target: ContextCache, b: int, packed: PackedPositions,
                      z_grad: Float[Tensor, "batch pre head d_head"]) -> Float[Tensor, "batch K"]:
    """``(z'_k - z) . z_grad``: the prefix queries' attention output at block ``b`` recomputed with ``S_k``'s
    keys/values from the source (softmax renormalized from the target's log-sum-exp, stabilized by the
    larger of it and the new logits), times the gradient at ``hook_z``. ``O(K |S| n_pre d_model)``."""
    n_pre, scale = model.cfg.n_prefix_tokens, model.blocks[b].attn.scale
    n = source.batch
    q, k, v, lse, z = (t.expand(n, *t.shape[1:]) for t in _prefix_attention(model, target.resid_pre[b], b))
    pos, valid = packed.positions, packed.valid  # [K, set]
    p_old = (einsum(q, k[:, pos], "r q h d, r K s h d -> r K s h q") * scale - lse[:, None, None]).exp()
    v_old = v[:, pos]  # [r, K, s, h, d]
    new_logits = einsum(q, source.k[b][:, pos], "r q h d, r K s h d -> r K s h q") * scale
    mask = valid[None, :, :, None, None]
    new_logits = new_logits.masked_fill(~mask, float("-inf"))
    lse_b = rearrange(lse, "r h q -> r 1 h q")
    m = torch.maximum(new_logits.amax(2), lse_b)  # [r, K, h, q]
    a = (lse_b - m).exp()
    e_new = (new_logits - m[:, :, None]).exp()  # 0 where masked
    p_old = p_old * mask
    removed_mass = p_old.sum(2)  # [r, K, h, q]
    removed = einsum(p_old, v_old, "r K s h q, r K s h d -> r K q h d")
    added = einsum(e_new, source.v[b][:, pos], "r K s h q, r K s h d -> r K q h d")
    z0 = z[:, None]  # [r, 1, q, h, d]
    numer = rearrange(a, "r K h q -> r K q h 1") * (z0 - removed) + added
    denom = rearrange(a * (1 - removed_mass) + e_new.sum(2), "r K h q -> r K q h 1")
    return einsum(numer / denom - z0, z_grad, "r K q h d, r q h d -> r K")
