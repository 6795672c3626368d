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
    return model, clean, corrupted, cache


def test_resid_pre_sweep_matches_hook_loop():
    model, _, corrupted, cache = setup()
    fast = get_act_patch_resid_pre(model, corrupted, cache, logit_diff, chunk_size=7)
    cfg = model.cfg
    expected = torch.empty(cfg.n_layers, cfg.n_patches)
    for layer in range(cfg.n_layers):
        for p in range(cfg.n_patches):
            pos = cfg.n_prefix_tokens + p

            def hook(resid, hook):
                resid = resid.clone()
                resid[:, pos] = cache[hook.name][:, pos]
                return resid

            with torch.no_grad():
                logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)])
            expected[layer, p] = logit_diff(logits[None])[0]
    assert fast.shape == (cfg.n_layers, cfg.n_patches)
    assert expected.std() > 1e-3
    assert torch.allclose(fast, expected, atol=1e-5)


def test_head_sweep_matches_hook_loop():
    model, _, corrupted, cache = setup()
    fast = get_act_patch_attn_head_out_all_pos(model, corrupted, cache, logit_diff, chunk_size=4)
    cfg = model.cfg
    expected = torch.empty(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            def hook(z, hook):
                z = z.clone()
                z[:, :, head] = cache[hook.name][:, :, head]
                return z

            with torch.no_grad():
                logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
            expected[layer, head] = logit_diff(logits[None])[0]
    assert expected.std() > 1e-3
    assert torch.allclose(fast, expected, atol=1e-5)
