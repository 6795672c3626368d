"""Hook names, shapes, caches, interventions, gradients and input validation."""
import pytest
import torch

from tests.conftest import make_hooked, random_images

# TransformerLens's optional hooks and the cfg flag that turns each on
FLAGS = ("use_attn_result", "use_attn_in", "use_split_qkv_input", "use_hook_mlp_in")


def enable_all(model, on=True):
    for flag in FLAGS:
        getattr(model, f"set_{flag}")(on)
    return model


def expected_shapes(cfg, batch, flags=False):
    """Every hook's shape; with ``flags`` also TL's optional hooks (then ``ln1`` sees a head axis)."""
    p, d, h, dh = cfg.n_tokens, cfg.d_model, cfg.n_heads, cfg.d_head
    shapes = {"hook_embed": (batch, p, d), "hook_pos_embed": (batch, p, d), "hook_pre_logits": (batch, d)}
    for l in range(cfg.n_layers):
        b = f"blocks.{l}."
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post",
                     "ln1.hook_normalized", "ln2.hook_normalized"):
            shapes[b + name] = (batch, p, d)
        shapes[b + "ln1.hook_scale"] = shapes[b + "ln2.hook_scale"] = (batch, p, 1)
        for name in ("q", "k", "v", "z"):
            shapes[f"{b}attn.hook_{name}"] = (batch, p, h, dh)
        shapes[b + "attn.hook_attn_scores"] = shapes[b + "attn.hook_pattern"] = (batch, h, p, p)
        shapes[b + "mlp.hook_pre"] = shapes[b + "mlp.hook_post"] = (batch, p, cfg.d_mlp)
        if flags:
            for name in ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "ln1.hook_normalized"):
                shapes[b + name] = (batch, p, h, d)
            shapes[b + "ln1.hook_scale"] = (batch, p, h, 1)
            shapes[b + "attn.hook_result"] = (batch, p, h, d)
            shapes[b + "hook_mlp_in"] = (batch, p, d)
    if cfg.final_norm:
        shapes["ln_final.hook_normalized"] = (batch, p, d)
        shapes["ln_final.hook_scale"] = (batch, p, 1)
    if cfg.pre_norm:
        shapes["ln_pre.hook_normalized"] = (batch, p, d)
        shapes["ln_pre.hook_scale"] = (batch, p, 1)
    if cfg.fc_norm:
        shapes["fc_norm.hook_normalized"] = (batch, d)
        shapes["fc_norm.hook_scale"] = (batch, 1)
    return shapes


@pytest.mark.parametrize("flags", [False, True], ids=["default", "tl_flags_on"])
def test_cache_has_every_hook_with_transformerlens_shapes(family, flags):
    model = enable_all(make_hooked(family), flags)
    x = random_images(model, batch=2)
    logits, cache = model.run_with_cache(x)
    shapes = expected_shapes(model.cfg, 2, flags)
    assert set(cache.keys()) == set(shapes)
    assert set(model.hook_dict) - set(shapes) == (set() if flags else {
        f"blocks.{l}.{n}" for l in range(model.cfg.n_layers)
        for n in ("attn.hook_result", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in")})
    for name, shape in shapes.items():
        assert tuple(cache[name].shape) == shape, name
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
    # the TL switches change which hooks fire, not the output
    with torch.no_grad():
        assert (logits - enable_all(model, False)(x)).abs().max() <= 1e-5


def test_embed_hooks_sum_to_the_first_residual_stream(family):
    """hook_embed + hook_pos_embed is blocks.0.hook_resid_pre at every position; hook_embed holds CLS,
    registers, then the patch embeddings (before CLIP's ln_pre, written out here)."""
    model = make_hooked(family)
    x = random_images(model)
    _, cache = model.run_with_cache(x)
    cfg, n_pre = model.cfg, model.cfg.n_prefix_tokens
    total = cache["hook_embed"] + cache["hook_pos_embed"]
    assert (total - cache["blocks.0.hook_resid_pre"]).abs().max() <= 1e-5
    with torch.no_grad():
        patches = torch.nn.functional.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias,
                                             stride=cfg.patch_size).flatten(2).transpose(1, 2)
        prefix = [model.cls_token] if cfg.has_cls_token else []
        prefix += [model.reg_token] if cfg.n_register_tokens else []
        raw = torch.cat([t.expand(2, -1, -1) for t in prefix] + [patches], 1)
        raw_pos = torch.zeros(cfg.n_tokens, cfg.d_model)
        raw_pos[cfg.n_tokens - model.pos_embed.W_pos.shape[0]:] = model.pos_embed.W_pos
        if not cfg.pre_norm:
            assert (cache["hook_embed"] - raw).abs().max() <= 1e-5
            assert (cache["hook_pos_embed"] - raw_pos).abs().max() <= 1e-6
        else:  # shares of ln_pre(raw + raw_pos), by the stream's own scale
            ln = model.ln_pre
            std = ((raw + raw_pos).var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
            assert (cache["hook_embed"] - (raw - raw.mean(-1, keepdim=True)) / std * ln.w).abs().max() <= 1e-5
            assert (cache["hook_pos_embed"] - ((raw_pos - raw_pos.mean(-1, keepdim=True)) / std * ln.w + ln.b)).abs().max() <= 1e-5
    if not cfg.pos_embed_on_prefix:
        assert cache["hook_pos_embed"][:, :n_pre].abs().max() == 0


def test_gated_hook_requested_while_off_is_refused():
    model = make_hooked("dinov2")
    x = random_images(model)
    for name, flag in [("blocks.1.attn.hook_result", "use_attn_result"), ("blocks.0.hook_q_input", "use_split_qkv_input"),
                       ("blocks.2.hook_attn_in", "use_attn_in"), ("blocks.0.hook_mlp_in", "use_hook_mlp_in")]:
        match = f"only fires when model.cfg.{flag} is True.*model.set_{flag}\\(True\\)"
        with pytest.raises(ValueError, match=match):
            model.run_with_hooks(x, fwd_hooks=[(name, lambda a, hook: a)])
        with pytest.raises(ValueError, match=match):
            model.run_with_cache(x, names_filter=[name])
        with pytest.raises(ValueError, match=match):
            model.add_hook(name, lambda a, hook: a)
        getattr(model, f"set_{flag}")(True)
        _, cache = model.run_with_cache(x, names_filter=[name])
        assert list(cache.keys()) == [name]
    model.add_hook("blocks.1.attn.hook_result", lambda a, hook: a, is_permanent=True)
    with pytest.raises(ValueError, match="cannot turn use_attn_result off while hooks are attached"):
        model.set_use_attn_result(False)
    model.reset_hooks(including_permanent=True)
    model.set_use_attn_result(False)
    with pytest.raises(ValueError, match="Unknown hook name 'blocks.0'"):  # a module, not a hook point
        model.run_with_hooks(x, fwd_hooks=[("blocks.0", lambda a, hook: a)])


def test_every_hook_return_value_is_used(family):
    """Prisma silently drops some hook outputs; here every hook point must be able to change the logits
    (TL's optional hooks with their flags on)."""
    model = make_hooked(family)
    x = random_images(model)
    gated = set(model.hook_dict) - set(expected_shapes(model.cfg, 1))

    def perturb(act, hook):
        g = torch.Generator().manual_seed(0)
        return act + torch.randn(act.shape, generator=g)

    with torch.no_grad():
        for flags, names in ((False, set(model.hook_dict) - gated), (True, gated)):
            enable_all(model, flags)
            clean = model(x)
            for name in sorted(names):
                out = model.run_with_hooks(x, fwd_hooks=[(name, perturb)])
                assert (out - clean).abs().max() > 1e-4, f"hook {name} output is ignored"  # ignored: exactly 0


def test_names_filter_and_hooks_context():
    model = make_hooked("dinov2_reg")
    x = random_images(model)
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_pre"))
    assert sorted(cache.keys()) == [f"blocks.{l}.hook_resid_pre" for l in range(3)]
    _, cache = model.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern")
    assert list(cache.keys()) == ["blocks.1.attn.hook_pattern"]
    seen = []
    with model.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", lambda a, hook: seen.append(a.shape))]):
        model(x)
    model(x)  # hooks are removed on exit of the context
    assert seen == [torch.Size([2, model.cfg.n_tokens, 48])]


def test_run_with_hooks_intervention_matches_manual_edit():
    """Zero-ablating head 1 through hook_z equals zeroing its slice of the output projection input."""
    model = make_hooked("deit3")
    x = random_images(model)

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with torch.no_grad():
        hooked = model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
        w = model.blocks[1].attn.proj.weight
        w_saved = w.clone()
        w[:, 16:32] = 0
        manual = model(x)
        w.copy_(w_saved)
    assert torch.allclose(hooked, manual, atol=1e-5)
    assert not torch.allclose(hooked, model(x), atol=1e-3)


def test_backward_hooks_give_gradient_of_class_score():
    model = make_hooked("vit")
    x = random_images(model)
    grads, acts = {}, {}
    name = "blocks.1.hook_resid_pre"
    model.add_hook(name, lambda g, hook: grads.__setitem__(hook.name, g.detach().clone()), dir="bwd")
    model.add_hook(name, lambda a, hook: acts.__setitem__(hook.name, a))
    logits = model(x)
    expected = torch.autograd.grad(logits[:, 3].sum(), acts[name], retain_graph=True)[0]
    logits[:, 3].sum().backward()
    model.reset_hooks()
    assert grads[name].shape == expected.shape
    assert torch.allclose(grads[name], expected, atol=1e-6) and expected.abs().max() > 0


def test_fast_attention_path_matches_explicit(family):
    model = make_hooked(family)
    x = random_images(model)
    with torch.no_grad():
        fast = model(x)
        model.set_use_attn_explicit(True)
        explicit = model(x)
        model.set_use_attn_explicit(False)
    assert (fast - explicit).abs().max().item() <= 1e-5


def test_pattern_hook_switches_to_explicit_path():
    model = make_hooked("vit")
    x = random_images(model)

    def uniform(pattern, hook):
        return torch.full_like(pattern, 1.0 / pattern.shape[-1])

    with torch.no_grad():
        out = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)])
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith("blocks.0.attn.hook_v"))
        v = cache["blocks.0.attn.hook_v"]  # [batch, pos, head, d_head]
        z_uniform = v.mean(1, keepdim=True).expand_as(v)
        manual = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: z_uniform)])
    assert torch.allclose(out, manual, atol=1e-5)


@pytest.mark.parametrize("images,error,match", [
    (torch.randn(3, 64, 64), ValueError, "rank 4"),
    (torch.randn(1, 1, 64, 64), ValueError, "3 channels; got 1"),
    (torch.randn(1, 3, 32, 64), ValueError, "64x64 pixels"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point"),
    ([[1.0]], TypeError, "torch.Tensor"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.float64), TypeError, "dtype torch.float64 but the model runs in torch.float32"),
])
def test_bad_images_are_refused(images, error, match):
    model = make_hooked("vit")
    with pytest.raises(error, match=match):
        model(images)


def test_unknown_hook_name_is_refused():
    model = make_hooked("vit")
    x = random_images(model)
    with pytest.raises(ValueError, match="Unknown hook name 'blocks.0.hook_resid_pr'.*Did you mean"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_pr", lambda a, hook: a)])
    with pytest.raises(ValueError, match="Unknown hook name"):
        model.run_with_cache(x, names_filter=["blocks.9.hook_resid_pre"])


def test_token_layout_helpers():
    model = make_hooked("dinov2_reg")  # 5 prefix tokens, 4x4 grid
    layout = model.layout
    assert layout.patch_index(2, 3) == 11 and layout.row_col(11) == (2, 3)
    assert layout.token_position(11) == 16 and layout.patch_index_of_position(16) == 11
    assert layout.patch_positions().tolist() == list(range(5, 21))
    assert layout.to_grid(torch.arange(16.0))[2, 3] == 11
    with pytest.raises(ValueError, match="patch grid"):
        layout.patch_index(4, 0)
    with pytest.raises(ValueError, match="not a patch token"):
        layout.patch_index_of_position(2)
    # the patch embedding of patch (r, c) sees exactly pixels [r*14:(r+1)*14, c*14:(c+1)*14]
    x = random_images(model, batch=1)
    _, c0 = model.run_with_cache(x, names_filter="hook_embed")
    x2 = x.clone()
    x2[..., 28:42, 42:56] += 1
    _, c1 = model.run_with_cache(x2, names_filter="hook_embed")
    changed = (c0["hook_embed"] - c1["hook_embed"]).abs().amax(-1)[0].nonzero().flatten().tolist()
    assert changed == [layout.token_position(layout.patch_index(2, 3))]


def test_backward_hooks_fire_at_every_hook_point(family):
    """A class score's gradient reaches every hook point, with the activation's shape."""
    model = enable_all(make_hooked(family))
    x = random_images(model)
    _, cache = model.run_with_cache(x)
    grads = {}
    for name in model.hook_dict:
        model.add_hook(name, lambda g, hook: grads.__setitem__(hook.name, g.shape), dir="bwd")
    model(x)[:, 0].sum().backward()
    model.reset_hooks()
    assert grads == {name: cache[name].shape for name in model.hook_dict}
