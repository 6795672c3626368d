"""Vectorized resid_pre / head-output patching sweeps against a plain one-forward-per-index hook loop."""
import torch

from tests.conftest import make_hooked, random_images
from vit_lens.patching import get_act_patch_attn_head_out_all_pos, get_act_patch_resid_pre


def logit_diff(logits):  # [n, batch, out] -> [n]
    return (logits[..., 2] - logits[..., 5]).mean(-1)


def setup():
    model = make_hooked("dinov2_reg")
    clean, corrupted = random_images(model, 2, seed=1), random_images(model, 2, seed=2)
    _, cache = model.run_with_cache(clean)
    return model, corrupted, cache


def plain_loop(model, corrupted, cache, n_index, hook_suffix, copy_clean):
    """One forward per (layer, index); ``copy_clean(act, clean, index)`` patches in place."""
    expected = torch.empty(model.cfg.n_layers, n_index)
    for layer in range(model.cfg.n_layers):
        for index in range(n_index):
            def hook(act, hook):
                act = act.clone()
                copy_clean(act, cache[hook.name], index)
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.{hook_suffix}", hook)])
            expected[layer, index] = logit_diff(logits[None])[0]
    return expected


def test_resid_pre_sweep_matches_hook_loop():
    model, corrupted, cache = setup()
    n_pre = model.cfg.n_prefix_tokens
    fast = get_act_patch_resid_pre(model, corrupted, cache, logit_diff, chunk_size=7)

    def copy_position(act, clean, p):
        act[:, n_pre + p] = clean[:, n_pre + p]

    expected = plain_loop(model, corrupted, cache, model.cfg.n_patches, "hook_resid_pre", copy_position)
    assert fast.shape == (model.cfg.n_layers, model.cfg.n_patches)
    assert expected.std() > 1e-3
    assert torch.allclose(fast, expected, atol=1e-5)


def test_head_sweep_matches_hook_loop():
    model, corrupted, cache = setup()
    fast = get_act_patch_attn_head_out_all_pos(model, corrupted, cache, logit_diff, chunk_size=4)

    def copy_head(act, clean, head):
        act[:, :, head] = clean[:, :, head]

    expected = plain_loop(model, corrupted, cache, model.cfg.n_heads, "attn.hook_z", copy_head)
    assert fast.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert expected.std() > 1e-3
    assert torch.allclose(fast, expected, atol=1e-5)
