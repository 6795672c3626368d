"""analysis.grouping: intra / inter / background attention (paper Sec. 3.2, Eq. 5, Fig. 6)."""
import math

import numpy as np
import pytest
import torch

from analysis.grouping import Grouping, attention_grouping, grouping_transition, patch_labels, patch_membership
from tests.conftest import make_hooked, random_images

# dinov2_reg tiny model: 56 px, 14 px patches -> 4x4 grid, 5 prefix tokens (CLS + 4 registers), 3 heads, 3 blocks
OBJ_A = [0, 1, 4, 5]
OBJ_B = [10, 11, 14, 15]
BACKGROUND = [2, 3, 6, 7, 8, 9, 12, 13]
# per block: weight of one intra key, one inter key, one background key (head 0); 4u + 4v + 8w = 0.8
UVW = [(0.10, 0.05, 0.025), (0.15, 0.025, 0.0125), (0.05, 0.05, 0.05)]
PREFIX_SHARE = 0.2


def pixel_masks():
    a = torch.zeros(56, 56, dtype=torch.bool)
    a[:28, :28] = True  # patches 0, 1, 4, 5
    a[:14, 28:33] = True  # 5/14 of patch 2: below the 50% rule, stays background
    b = torch.zeros(56, 56, dtype=torch.bool)
    b[28:, 28:] = True  # patches 10, 11, 14, 15
    return torch.stack([a, b])


def hand_pattern(layer, n_heads=3, n_prefix=5, n=16):
    """Head 0: the UVW pattern for object queries; heads 1, 2: uniform over patches; 0.2 on the prefix."""
    t = n_prefix + n
    pattern = torch.full((n_heads, t, t), 1.0 / t)
    u, v, w = UVW[layer]
    for h in range(n_heads):
        for q in range(n):
            row = torch.zeros(t)
            row[:n_prefix] = PREFIX_SHARE / n_prefix
            for k in range(n):
                if h == 0 and q in OBJ_A + OBJ_B:
                    own = OBJ_A if q in OBJ_A else OBJ_B
                    row[n_prefix + k] = u if k in own else (w if k in BACKGROUND else v)
                else:
                    row[n_prefix + k] = (1 - PREFIX_SHARE) / n
            pattern[h, n_prefix + q] = row
    return pattern


def injected(model):
    def inject(pattern, hook, layer):
        return hand_pattern(layer)[None].expand_as(pattern).to(pattern.dtype).clone()

    return [(f"blocks.{l}.attn.hook_pattern", lambda p, hook, l=l: inject(p, hook, l)) for l in range(3)]


def test_patch_labels_rule():
    masks = pixel_masks()
    labels = patch_labels(masks, (14, 14))
    assert [i for i in range(16) if labels[i] == 0] == OBJ_A
    assert [i for i in range(16) if labels[i] == 1] == OBJ_B
    assert patch_membership(masks[0], (14, 14)).nonzero().flatten().tolist() == OBJ_A
    # overlap: a patch counted for two instances goes to the one covering most of it, ties to the lower index
    c = torch.zeros(2, 28, 28, dtype=torch.bool)
    c[0, :14, :10] = True  # 10/14 of patch 0
    c[1, :14, :] = True  # all of patches 0, 1
    c[0, :14, 14:28] = True  # all of patch 1 (tie with instance 1)
    assert patch_labels(c, (14, 14)).tolist() == [1, 0, -1, -1]
    assert patch_labels(c, (14, 14), threshold=1.0).tolist() == [1, 0, -1, -1]


def test_hand_built_pattern_gives_known_numbers():
    model = make_hooked("dinov2_reg")
    x = random_images(model, 2)
    masks = [pixel_masks(), pixel_masks()[:1]]  # image 1 has one instance: inter is undefined there
    with model.hooks(fwd_hooks=injected(model)):
        per_head = attention_grouping(model, x, masks, per_head=True)
        raw = attention_grouping(model, x, masks, per_head=True, renormalize=False)
        avg = attention_grouping(model, x, masks)
    uniform = 1.0 / 16  # heads 1, 2 after renormalization
    for layer, (u, v, w) in enumerate(UVW):
        s = 1 - PREFIX_SHARE
        got = {k: per_head.per_image[k][0, layer] for k in ("intra", "inter", "background", "extra", "score")}
        assert got["intra"].tolist() == pytest.approx([u / s, uniform, uniform], abs=1e-6)
        assert got["inter"].tolist() == pytest.approx([v / s, uniform, uniform], abs=1e-6)
        assert got["background"].tolist() == pytest.approx([w / s, uniform, uniform], abs=1e-6)
        extra = (4 * v + 8 * w) / 12 / s
        assert got["extra"][0].item() == pytest.approx(extra, abs=1e-6)
        assert got["score"][0].item() == pytest.approx(u / s - extra, abs=1e-6)
        # without renormalization the prefix share stays in the denominator
        assert raw.per_image["intra"][0, layer].tolist() == pytest.approx([u, s / 16, s / 16], abs=1e-6)
        assert raw.per_image["background"][0, layer, 0].item() == pytest.approx(w, abs=1e-6)
        # image 1: only instance A; B's patches count as background (4 B keys with v, 8 keys with w)
        assert math.isnan(per_head.per_image["inter"][1, layer, 0].item())
        assert per_head.per_image["background"][1, layer, 0].item() == pytest.approx((4 * v + 8 * w) / 12 / s, abs=1e-6)
        # head average, then mean over images; inter's mean only over the image where it is defined
        assert avg.per_image["intra"][0, layer].item() == pytest.approx((u / s + 2 * uniform) / 3, abs=1e-6)
        assert avg.mean("inter")[layer].item() == pytest.approx((v / s + 2 * uniform) / 3, abs=1e-6)
        assert avg.n("inter")[layer].item() == 1 and avg.n("intra")[layer].item() == 2
    assert avg.se("inter")[0].item() == 0.0
    summary = avg.summary()
    assert summary["n_images"] == 2 and len(summary["score"]["mean"]) == 3
    transition = grouping_transition(avg, n_layers=3)
    assert transition["peak_layer"] == 1  # u is largest in block 1
    assert transition["cutoff"] == 2 and transition["cutoff_minus_peak"] == 1


def explicit(pattern, labels, n_prefix, renormalize):
    """Slow reference: python loops over heads, queries and keys."""
    heads, t, _ = pattern.shape
    n = t - n_prefix
    out = {k: [] for k in ("intra", "inter", "background", "extra")}
    for h in range(heads):
        per_q = {k: [] for k in out}
        for i in range(n):
            if labels[i] < 0:
                continue
            row = [pattern[h, n_prefix + i, n_prefix + j].item() for j in range(n)]
            z = sum(row) if renormalize else 1.0
            row = [r / z for r in row]
            groups = {"intra": [j for j in range(n) if labels[j] == labels[i]],
                      "inter": [j for j in range(n) if labels[j] >= 0 and labels[j] != labels[i]],
                      "background": [j for j in range(n) if labels[j] < 0],
                      "extra": [j for j in range(n) if labels[j] != labels[i]]}
            for k, js in groups.items():
                per_q[k].append(np.mean([row[j] for j in js]) if js else np.nan)
        for k in out:
            vals = [v for v in per_q[k] if not np.isnan(v)]
            out[k].append(np.mean(vals) if vals else np.nan)
    return out


@pytest.mark.parametrize("renormalize", [True, False])
def test_matches_explicit_loops_on_a_random_model(renormalize):
    model = make_hooked("dinov2_reg", seed=3)
    x = random_images(model, 2, seed=4)
    masks = [pixel_masks(), pixel_masks()[1:]]
    result = attention_grouping(model, x, masks, per_head=True, renormalize=renormalize)
    _, cache = model.run_with_cache(x)
    for b in range(2):
        labels = patch_labels(masks[b], (14, 14)).tolist()
        for layer in range(3):
            ref = explicit(cache[f"blocks.{layer}.attn.hook_pattern"][b], labels, 5, renormalize)
            for k, vals in ref.items():
                np.testing.assert_allclose(result.per_image[k][b, layer].numpy(), vals, atol=1e-6)
    assert torch.allclose(result.per_image["score"], result.per_image["intra"] - result.per_image["extra"])


def test_se_is_population_sd_over_sqrt_n_and_concat():
    g = Grouping({"intra": torch.tensor([[1.0], [3.0], [float("nan")]]), "score": torch.tensor([[0.1], [0.3], [0.2]])})
    assert g.mean("intra").item() == 2.0 and g.n("intra").item() == 2
    assert g.se("intra").item() == pytest.approx(1.0 / math.sqrt(2))
    both = Grouping.concat([g, g])
    assert both.per_image["score"].shape == (6, 1) and both.n("intra").item() == 4


def test_bad_input_is_refused():
    model = make_hooked("dinov2_reg")
    x = random_images(model, 2)
    with pytest.raises(ValueError, match="one entry per image"):
        attention_grouping(model, x, [pixel_masks()])
    with pytest.raises(ValueError, match=r"instance_masks\[0\] must have shape"):
        attention_grouping(model, x, [torch.ones(1, 50, 50, dtype=torch.bool)] * 2)
    empty = torch.zeros(1, 56, 56, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"instance_masks\[1\] covers no patch"):
        attention_grouping(model, x, [pixel_masks(), empty])
    with pytest.raises(ValueError, match="threshold"):
        patch_labels(pixel_masks(), (14, 14), threshold=0)
