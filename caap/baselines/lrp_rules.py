"""Layer-wise relevance propagation rules of Chefer, Gur & Wolf (CVPR 2021), as closed-form functions.

Each rule maps the relevance of a layer's output to the relevance of its input(s), given the cached
forward activations; all are linear in the relevance and work on any leading (batch, token, head) dims.
They follow the authors' ``modules/layers_ours.py`` (hila-chefer/Transformer-Explainability):

* :func:`linear_alpha1_beta0` -- linear layers (their ``Linear.relprop`` with ``alpha=1``, the only value
  they use): the z+ rule split by the sign of the input, bias ignored. Conservative.
* :func:`matmul_rule` -- the product of two activations (``q k^T`` and ``attention @ v``): each operand
  receives ``operand * gradient`` of the normalized relevance, i.e. the full relevance; the caller halves
  both, as their ``Attention.relprop`` does. Conservative after halving.
* :func:`residual_add` -- a residual sum ``x0 + x1``: contributions ``x_i * R / (x0 + x1)``, rescaled so the
  two operands share the total relevance in proportion to the absolute sums of their contributions
  (their ``Add.relprop``; sums are per image here, theirs run over the whole batch of one). Conservative.
* :func:`diagonal_alpha1_beta0` -- LayerScale's per-channel product, the linear rule with a diagonal weight.
  Not conservative (channels whose output is negative lose their relevance).

LayerNorm, GELU, softmax and dropout pass relevance through unchanged (their ``RelProp`` base class);
a residual branch point (``Clone``) sums the relevance of its two uses.
"""
from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-9


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / (den + 1e-9)`` and 0 where ``den == 0`` (the authors' ``safe_divide``: the 1e-9 is added
    whatever the sign of ``den``)."""
    shifted = den + EPS
    shifted = torch.where(shifted == 0, torch.full_like(shifted, EPS), shifted)
    return num / shifted * (den != 0)


def linear_alpha1_beta0(x: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """z+ (alpha=1, beta=0) rule for ``y = x @ weight.T (+ bias)``.

    ``R_in = x+ * (S @ W+) + x- * (S @ W-)`` with ``S = R_out / (x+ @ W+^T + x- @ W-^T)``: only the
    positive contributions ``x_i w_ji > 0`` share each output's relevance; the bias gets none.
    Shapes: ``x [..., d_in]``, ``weight [d_out, d_in]``, ``relevance [..., d_out]`` -> ``[..., d_in]``.
    """
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    s = safe_divide(relevance, x_pos @ w_pos.T + x_neg @ w_neg.T)
    return x_pos * (s @ w_pos) + x_neg * (s @ w_neg)


def diagonal_alpha1_beta0(x: Tensor, gamma: Tensor, relevance: Tensor) -> Tensor:
    """:func:`linear_alpha1_beta0` for ``y = x * gamma`` (a diagonal weight): channel ``c`` keeps its
    relevance when ``x_c * gamma_c > 0`` and loses it otherwise."""
    z_pos = (x * gamma).clamp(min=0)
    return z_pos * safe_divide(relevance, z_pos)


def matmul_rule(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance of both operands of ``z = a @ b`` (``[..., n, m] @ [..., m, p]``).

    ``R_a = a * (S @ b^T)``, ``R_b = b * (a^T @ S)`` with ``S = R_z / z``: gradient times input of the
    normalized relevance for each operand separately, so each receives the full relevance (halve both to
    conserve it, as the authors do).
    """
    s = safe_divide(relevance, a @ b)
    return a * (s @ b.transpose(-1, -2)), b * (a.transpose(-1, -2) @ s)


def residual_add(x0: Tensor, x1: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance of the two operands of ``x0 + x1`` (shapes ``[batch, ...]``, sums per image).

    Contributions ``c_i = x_i * R / (x0 + x1)`` are rescaled so operand ``i`` receives
    ``|sum c_i| / (|sum c_0| + |sum c_1|) * sum R`` in total.
    """
    s = safe_divide(relevance, x0 + x1)
    c0, c1 = x0 * s, x1 * s
    dims = tuple(range(1, relevance.ndim))
    sum0, sum1 = c0.sum(dims, keepdim=True), c1.sum(dims, keepdim=True)
    total = relevance.sum(dims, keepdim=True)
    norm = sum0.abs() + sum1.abs()
    share0 = safe_divide(sum0.abs(), norm) * total
    share1 = safe_divide(sum1.abs(), norm) * total
    return c0 * safe_divide(share0, sum0), c1 * safe_divide(share1, sum1)
