"""E-CAAP Eq. 8-9 (UniformFrozenAttention) against the equations written out with loops."""
import math

import torch

from caap import CAAP, get_method
from tests.conftest import make_hooked, random_images
from vit_lens.patching import cache_context
from vit_lens.patching.uniform_frozen_attention import UniformFrozenAttention


def test_partial_equals_equations_8_and_9():
    model = make_hooked("dinov2_reg")  # 4x4 patches, 5 prefix tokens
    target = cache_context(model, random_images(model, 1, seed=4), with_queries=True)
    n_pre, n_patch, d_head = 5, 16, model.cfg.d_head
    scale = 1 / math.sqrt(d_head)
    positions = torch.tensor([[n_pre + 0, n_pre + 1, n_pre + 4], [n_pre + 10, n_pre + 10, n_pre + 10]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    frozen = torch.ones(2, n_patch, dtype=torch.bool)
    frozen.scatter_(1, positions - n_pre, False)
    query_pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 9], [0, 1, 2, 3, 4, 15, 15, 15]])
    q = torch.randn(1, 2, 8, model.cfg.n_heads, d_head)  # ignored: Eq. 8 scores with the blank's queries
    block = 1
    f_max, z0, numer = UniformFrozenAttention().partial(target, block, q, query_pos, positions, valid, frozen, scale)
    k, v, qb = target.k[block][0], target.v[block][0], target.q[block][0]
    for g in range(2):
        in_set = {int(p) - n_pre for p, ok in zip(positions[g], valid[g]) if ok}
        for h in range(model.cfg.n_heads):
            v_bar = sum(v[n_pre + j, h] for j in range(n_patch)) / n_patch  # Eq. 9: uniform mean over B
            for i in range(8):
                p = int(query_pos[g, i])
                s = [float(qb[p, h] @ k[n_pre + j, h]) * scale for j in range(n_patch)]
                m = max(s)
                z = sum(math.exp(s[j] - m) for j in range(n_patch) if j not in in_set)  # Eq. 8
                assert abs(f_max[0, g, h, i].item() - m) < 1e-5
                assert abs(z0[0, g, h, i].item() - z) < 1e-4 * max(1.0, z)
                assert torch.allclose(numer[0, g, h, i], z * v_bar, atol=1e-4)


def test_registered_variant_runs_and_differs_from_e_caap():
    model = make_hooked("vit")
    x = random_images(model, 1)
    eq9 = get_method("e-caap-eq9", model).attribute(x, 2)
    default = CAAP(model, engine="efficient").attribute(x, 2)
    assert eq9.shape == default.shape == (1, 4, 4) and torch.isfinite(eq9).all()
    assert not torch.allclose(eq9, default)
