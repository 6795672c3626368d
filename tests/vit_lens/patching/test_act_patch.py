"""Vectorized resid_pre / head-output patching sweeps against a plain one-forward-per-index hook loop and
against TransformerLens's own ``generic_activation_patch`` (explicit index, prefix positions included)."""
import pytest
import torch
from transformer_lens import patching as tl_patching

from tests.conftest import make_hooked, random_images
from vit_lens.patching import get_act_patch_attn_head_out_all_pos, get_act_patch_resid_pre, tl_index_df


def logit_diff(logits):  # TL signature: [batch, out] -> scalar
    return (logits[:, 2] - logits[:, 5]).mean()


def batched_logit_diff(logits):  # [n, batch, out] -> [n]
    return (logits[..., 2] - logits[..., 5]).mean(-1)


def setup():
    model = make_hooked("dinov2_reg")
    clean, corrupted = random_images(model, 2, seed=1), random_images(model, 2, seed=2)
    _, cache = model.run_with_cache(clean)
    return model, corrupted, cache


def plain_loop(model, corrupted, cache, indices, hook_suffix, copy_clean):
    """One forward per (layer, index); ``copy_clean(act, clean, index)`` patches in place."""
    expected = torch.empty(model.cfg.n_layers, len(indices))
    for layer in range(model.cfg.n_layers):
        for j, index in enumerate(indices):
            def hook(act, hook):
                act = act.clone()
                copy_clean(act, cache[hook.name], index)
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.{hook_suffix}", hook)])
            expected[layer, j] = logit_diff(logits)
    return expected


def copy_position(act, clean, p):
    act[:, p] = clean[:, p]


def test_resid_pre_sweep_matches_hook_loop_at_every_position():
    model, corrupted, cache = setup()
    fast = get_act_patch_resid_pre(model, corrupted, cache, logit_diff, chunk_size=7)
    expected = plain_loop(model, corrupted, cache, range(model.cfg.n_tokens), "hook_resid_pre", copy_position)
    assert fast.shape == (model.cfg.n_layers, model.cfg.n_tokens)
    assert expected[:, :model.cfg.n_prefix_tokens].std() > 1e-3  # the prefix positions matter too
    assert torch.allclose(fast, expected, atol=1e-5)
    batched = get_act_patch_resid_pre(model, corrupted, cache, batched_logit_diff, positions="patches",
                                      metric_mode="batched", chunk_size=5)
    assert batched.shape == (model.cfg.n_layers, model.cfg.n_patches)
    assert torch.allclose(batched, expected[:, model.cfg.n_prefix_tokens:], atol=1e-5)


def test_sweeps_match_transformer_lens_generic_activation_patch():
    model, corrupted, cache = setup()
    positions = [0, 1, 4, 5, 13, 20]  # CLS, registers, patches
    index_df = tl_index_df(model, ("layer", "pos"))
    index_df = index_df[index_df["pos"].isin(positions)].reset_index(drop=True)
    with torch.no_grad():
        expected = tl_patching.generic_activation_patch(
            model, corrupted, cache, logit_diff, tl_patching.layer_pos_patch_setter, "resid_pre", index_df=index_df)
    fast = get_act_patch_resid_pre(model, corrupted, cache, logit_diff, positions=positions, chunk_size=4)
    assert expected.std() > 1e-3
    assert torch.allclose(fast.flatten(), expected.to(fast.dtype), atol=1e-5)
    with torch.no_grad():  # TL's head sweep has no position axis, so it runs on a HookedViT as is
        expected_heads = tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, logit_diff)
    fast_heads = get_act_patch_attn_head_out_all_pos(model, corrupted, cache, logit_diff, chunk_size=4)
    assert expected_heads.std() > 1e-3
    assert torch.allclose(fast_heads, expected_heads.to(fast_heads.dtype), atol=1e-5)


def test_head_sweep_matches_hook_loop():
    model, corrupted, cache = setup()
    fast = get_act_patch_attn_head_out_all_pos(model, corrupted, cache, batched_logit_diff, metric_mode="batched",
                                               chunk_size=4)

    def copy_head(act, clean, head):
        act[:, :, head] = clean[:, :, head]

    expected = plain_loop(model, corrupted, cache, range(model.cfg.n_heads), "attn.hook_z", copy_head)
    assert fast.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert expected.std() > 1e-3
    assert torch.allclose(fast, expected, atol=1e-5)
    subset = get_act_patch_attn_head_out_all_pos(model, corrupted, cache, logit_diff, layers=[2, 0])
    assert torch.allclose(subset, expected[[2, 0]], atol=1e-5)


def test_bad_metric_and_positions_are_refused():
    model, corrupted, cache = setup()
    with pytest.raises(ValueError, match="must map logits \\[batch, n_out\\] to a scalar.*metric_mode='batched'"):
        get_act_patch_resid_pre(model, corrupted, cache, lambda logits: logits[:, 0], positions=[0])
    with pytest.raises(ValueError, match="metric_mode must be one of"):
        get_act_patch_resid_pre(model, corrupted, cache, logit_diff, metric_mode="vmap")
    with pytest.raises(ValueError, match="positions in \\[0, 21\\)"):
        get_act_patch_resid_pre(model, corrupted, cache, logit_diff, positions=[21])
    with pytest.raises(ValueError, match="layers must be block indices in \\[0, 3\\)"):
        get_act_patch_attn_head_out_all_pos(model, corrupted, cache, logit_diff, layers=[3])
    with pytest.raises(ValueError, match="axis_names must be among"):
        tl_index_df(model, ("layer", "patch"))
