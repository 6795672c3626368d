"""TransformerLens's ActivationCache analysis and weight surface on HookedViT, checked for value on every
family against definitions written out here (explicit per-head loops, timm-style sums of the model's
parameters, the raw hooks)."""
import pytest
import torch
from einops import rearrange

from tests.conftest import make_hooked, random_images

REL = 1e-4


def close(a, b, rel=REL):
    """|a - b| <= rel * max|b| (and b is not trivially zero)."""
    scale = b.abs().max()
    assert scale > 0
    err = (a - b).abs().max()
    assert err <= rel * scale, f"max error {err.item():.3g} against scale {scale.item():.3g}"


def run(family, batch=2):
    model = make_hooked(family)
    x = random_images(model, batch)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    return model, x, logits, cache


def final_resid(model, cache):
    return cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]


def pool(model, per_position):
    """The model's pooling over the position axis (dim -1 of ``per_position`` [..., pos])."""
    if model.cfg.pooling == "token":
        return per_position[..., 0]
    return per_position[..., model.cfg.n_prefix_tokens:].mean(-1)


def classifier(model):
    """(weight [out, d], bias [out], final norm) from the model's own modules."""
    cfg = model.cfg
    norm = model.fc_norm if cfg.fc_norm else model.ln_final
    if model.head is None:
        return torch.eye(cfg.d_model), torch.zeros(cfg.d_model), norm
    return model.head.weight, model.head.bias, norm


# ---------------------------------------------------------------------------------------- per-head results
def head_outputs_by_loop(model, cache, layer):
    """Each head's contribution to the residual stream: project that head's z alone (the others zeroed)
    through proj without bias, then LayerScale."""
    block = model.blocks[layer]
    z = cache[f"blocks.{layer}.attn.hook_z"]
    outs = []
    for h in range(model.cfg.n_heads):
        only = torch.zeros_like(z)
        only[:, :, h] = z[:, :, h]
        out = torch.nn.functional.linear(only.flatten(2), block.attn.proj.weight)
        outs.append(block.ls1(out))
    return torch.stack(outs, dim=2)  # [batch, pos, head, d_model]


def test_head_results_include_layer_scale_and_sum_to_attn_out(family):
    model, x, _, cache = run(family)
    cache.compute_head_results()
    model.set_use_attn_result(True)
    with torch.no_grad():
        _, cache_on = model.run_with_cache(x)
    stack = cache.stack_head_results()
    cfg = model.cfg
    assert stack.shape == (cfg.n_layers * cfg.n_heads, 2, cfg.n_tokens, cfg.d_model)
    for layer in range(cfg.n_layers):
        result = cache[f"blocks.{layer}.attn.hook_result"]
        close(result, head_outputs_by_loop(model, cache, layer))
        close(cache_on[f"blocks.{layer}.attn.hook_result"], result)
        b_O = model.blocks[layer].ls1(model.blocks[layer].attn.proj.bias)
        close(result.sum(-2) + b_O, cache[f"blocks.{layer}.hook_attn_out"])
        close(cache_on[f"blocks.{layer}.hook_attn_out"], cache[f"blocks.{layer}.hook_attn_out"])
    assert torch.equal(stack[cfg.n_heads + 1], cache["blocks.1.attn.hook_result"][:, :, 1])


def test_neuron_results_include_layer_scale():
    for family in ("dinov2", "vit"):
        model, _, _, cache = run(family)
        block = model.blocks[1]
        neurons = cache.get_neuron_results(1)
        post = cache["blocks.1.mlp.hook_post"]
        assert neurons.shape == (*post.shape, model.cfg.d_model)
        by_loop = torch.stack([block.ls2(post[..., i, None] * block.mlp.fc2.weight[:, i]) for i in range(4)], -2)
        close(neurons[..., :4, :], by_loop)
        close(neurons.sum(-2) + block.ls2(block.mlp.fc2.bias), cache["blocks.1.hook_mlp_out"])


# ---------------------------------------------------------------------------------------- decompositions
def test_decompositions_sum_to_the_final_residual_stream(family):
    model, _, _, cache = run(family)
    cfg, final = model.cfg, final_resid(model, cache)
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels[:2] == ["embed", "pos_embed"] and len(labels) == 2 + 2 * cfg.n_layers
    close(stack.sum(0), final)
    for expand in (True, False):
        full, labels = cache.get_full_resid_decomposition(expand_neurons=expand, return_labels=True)
        n_mlp = cfg.n_layers * (cfg.d_mlp if expand else 1)
        assert full.shape == (cfg.n_layers * cfg.n_heads + n_mlp + 3, 2, cfg.n_tokens, cfg.d_model)
        assert labels[-3:] == ["embed", "pos_embed", "bias"]
        close(full.sum(0), final)
    # up to the input of block 1's MLP
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    close(mid.sum(0), cache["blocks.1.hook_resid_mid"])


def test_accumulated_bias_matches_parameter_sum():
    model, _, _, _ = run("deit3")
    expected = torch.zeros(model.cfg.d_model)
    for block in model.blocks[:2]:
        expected += block.attn.proj.bias * block.ls1.gamma + block.mlp.fc2.bias * block.ls2.gamma
    close(model.accumulated_bias(2), expected)
    close(model.accumulated_bias(1, mlp_input=True, include_mlp_biases=False),
          model.blocks[0].attn.proj.bias * model.blocks[0].ls1.gamma + model.blocks[1].attn.proj.bias * model.blocks[1].ls1.gamma)
    with pytest.raises(ValueError, match="layer must be in"):
        model.accumulated_bias(4)


# ---------------------------------------------------------------------------------------- final norm, logits
def test_accumulated_resid_with_final_norm(family):
    model, _, _, cache = run(family)
    acc, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert acc.shape == (model.cfg.n_layers + 1, 2, model.cfg.n_tokens, model.cfg.d_model)
    assert labels[-1] == "final_post"
    if model.cfg.final_norm:
        close(acc[-1], cache["ln_final.hook_normalized"])
    else:  # fc_norm on the pooled features: pooling the normalized positions gives fc_norm's output
        close(pool(model, acc[-1].transpose(-1, -2)), cache["hook_pre_logits"])
        resid = cache["blocks.1.hook_resid_pre"]
        pooled = pool(model, resid.transpose(-1, -2))
        std = (pooled.var(-1, unbiased=False) + model.fc_norm.eps).sqrt()[:, None, None]
        centred = resid - resid.mean(-1, keepdim=True)
        close(acc[1], centred / std * model.fc_norm.w + model.fc_norm.b)


def test_logit_attrs_sum_to_the_logit_up_to_the_folded_bias(family):
    """sum over components of pool(logit_attrs) + (b_U + final-norm bias @ W_U)[c] == logit[c]."""
    model, _, logits, cache = run(family)
    weight, bias, norm = classifier(model)
    classes = torch.tensor([1, 3])
    constant = bias[classes] + weight[classes] @ norm.b
    close(model.folded_b_U[classes], constant)
    target = logits[torch.arange(2), classes]
    for stack in (cache.decompose_resid(), cache.get_full_resid_decomposition(expand_neurons=False)):
        # [batch, pos] class ids: one class per example at every position (TL 3.3 and 4.x agree on this form)
        attrs = cache.logit_attrs(stack, tokens=classes[:, None].expand(-1, model.cfg.n_tokens))
        assert attrs.shape == stack.shape[:-1]
        close(pool(model, attrs).sum(0) + constant, target)
    # a single class and a logit difference
    attrs = cache.logit_attrs(cache.decompose_resid(), tokens=2, incorrect_tokens=5)
    close(pool(model, attrs).sum(0) + bias[2] - bias[5] + (weight[2] - weight[5]) @ norm.b,
          logits[:, 2] - logits[:, 5])


def test_pooled_final_norm_with_slices():
    """avg pooling + fc_norm: the cached-scale path works on sliced stacks and batch-sliced caches; the
    recomputed path needs every position and says so."""
    model, _, logits, cache = run("vit_avg")
    stack = cache.decompose_resid()
    one_pos = cache.logit_attrs(stack[:, :, 5], tokens=torch.tensor([3, 3]), pos_slice=5)  # a pre-sliced stack
    assert torch.allclose(one_pos, cache.logit_attrs(stack, tokens=3)[:, :, 5], atol=1e-6)
    one = cache.apply_slice_to_batch_dim(1)
    assert type(one) is type(cache)
    attrs = one.logit_attrs(one.decompose_resid(), tokens=3)
    close(attrs[:, model.cfg.n_prefix_tokens:].mean(-1).sum(0) + model.folded_b_U[3], logits[1, 3])
    direction = model.tokens_to_residual_directions(3)
    projected = cache.get_full_resid_decomposition(apply_ln=True, project_output_onto=direction)  # fused path
    close(pool(model, projected).sum(0) + model.folded_b_U[3], logits[:, 3])
    with pytest.raises(ValueError, match="needs every position"):
        cache.accumulated_resid(apply_ln=True, pos_slice=0)


def test_logit_lens_shapes_and_final_entry():
    model, _, logits, cache = run("vit")
    if not hasattr(cache, "logit_lens"):
        pytest.skip("ActivationCache.logit_lens is TransformerLens >= 4")
    lens = cache.logit_lens(positions=0)  # the CLS position
    assert lens.readout.values.shape == (model.cfg.n_layers + 1, 2, model.cfg.d_vocab_out)
    close(lens.readout.values[-1], logits)
    model, _, logits, cache = run("vit_avg")
    values = cache.logit_lens(positions=None).readout.values  # every position; avg pooling averages patches
    assert values.shape == (model.cfg.n_layers + 1, 2, model.cfg.n_tokens, model.cfg.d_vocab_out)
    close(values[-1, :, model.cfg.n_prefix_tokens:].mean(1), logits)


def test_apply_ln_to_stack_uses_the_cached_block_scale():
    model, _, _, cache = run("dinov2_reg")
    stack = cache.decompose_resid(layer=2)
    scaled = cache.apply_ln_to_stack(stack, layer=2)
    scale = cache["blocks.2.ln1.hook_scale"]
    close(scaled, (stack - stack.mean(-1, keepdim=True)) / scale)
    # ln1's output is the sum of the scaled components times its weight, plus its bias
    close(scaled.sum(0) * model.blocks[2].ln1.w + model.blocks[2].ln1.b, cache["blocks.2.ln1.hook_normalized"])
    heads = cache.stack_head_results(layer=2, apply_ln=True)
    assert heads.shape == (2 * model.cfg.n_heads, 2, model.cfg.n_tokens, model.cfg.d_model)


# ---------------------------------------------------------------------------------------- weights and config
def test_weight_stacks_reproduce_the_hooks(family):
    model, x, _, cache = run(family)
    cfg = model.cfg
    L, H, d, dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    assert model.W_Q.shape == model.W_K.shape == model.W_V.shape == (L, H, d, dh)
    assert model.W_O.shape == (L, H, dh, d) and model.b_O.shape == (L, d) and model.b_Q.shape == (L, H, dh)
    assert model.W_in.shape == (L, d, cfg.d_mlp) and model.W_out.shape == (L, cfg.d_mlp, d)
    assert model.QK.shape == model.OV.shape == (L, H, d, d)
    assert model.W_U.shape == (d, cfg.d_vocab_out) and model.b_U.shape == (cfg.d_vocab_out,)
    assert model.W_pos.shape == (cfg.n_tokens, d)
    l = 1
    normalized = cache[f"blocks.{l}.ln1.hook_normalized"]
    for name in "QKV":
        act = torch.einsum("bpm,hmd->bphd", normalized, getattr(model, f"W_{name}")[l]) + getattr(model, f"b_{name}")[l]
        close(act, cache[f"blocks.{l}.attn.hook_{name.lower()}"])
    z = cache[f"blocks.{l}.attn.hook_z"]
    close(torch.einsum("bphd,hdm->bpm", z, model.W_O[l]) + model.b_O[l], cache[f"blocks.{l}.hook_attn_out"])
    close(cache[f"blocks.{l}.ln2.hook_normalized"] @ model.W_in[l] + model.b_in[l], cache[f"blocks.{l}.mlp.hook_pre"])
    close(cache[f"blocks.{l}.mlp.hook_post"] @ model.W_out[l] + model.b_out[l], cache[f"blocks.{l}.hook_mlp_out"])
    ov = model.OV[l, 0].AB
    close(ov, model.W_V[l, 0] @ model.W_O[l, 0])
    patches = rearrange(x, "b c (gh ph) (gw pw) -> b (gh gw) (c ph pw)", ph=cfg.patch_size[0], pw=cfg.patch_size[1])
    embedded = torch.nn.functional.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias,
                                          stride=cfg.patch_size).flatten(2).transpose(1, 2)
    close(patches @ model.W_E + model.b_E, embedded)
    if not cfg.pre_norm:
        close(model.W_pos.expand(2, -1, -1), cache["hook_pos_embed"])
    pooled = cache["hook_pre_logits"]
    close(pooled @ model.W_U + model.b_U, model.forward_head(model.final_norm(final_resid(model, cache))))


def test_residual_directions_and_class_names():
    model, _, _, _ = run("vit")
    w = model.ln_final.w
    assert torch.equal(model.tokens_to_residual_directions(3), w * model.head.weight[3])
    assert model.tokens_to_residual_directions(torch.tensor([1, 2])).shape == (2, model.cfg.d_model)
    assert model.tokens_to_residual_directions(torch.tensor([[1, 2, 3]])).shape == (1, 3, model.cfg.d_model)
    model.cfg.class_names = [f"class{i}" for i in range(7)]
    assert model.to_single_token("class4") == 4
    assert torch.equal(model.tokens_to_residual_directions("class4"), model.tokens_to_residual_directions(4))
    with pytest.raises(ValueError, match="unknown class name 'dog'"):
        model.to_single_token("dog")
    with pytest.raises(ValueError, match=r"class indices in \[0, 7\)"):
        model.tokens_to_residual_directions(7)


def test_config_carries_transformer_lens_fields():
    model = make_hooked("dinov2_reg")
    cfg = model.cfg
    assert cfg.n_ctx == cfg.n_tokens == 21 and cfg.d_vocab_out == 7
    assert cfg.normalization_type == "LN" and cfg.attn_only is False and cfg.n_key_value_heads is None
    assert not (cfg.use_attn_result or cfg.use_split_qkv_input or cfg.use_attn_in or cfg.use_hook_mlp_in)
    assert torch.device(cfg.device) == torch.device("cpu") and cfg.dtype == torch.float32
    model.double()
    assert cfg.dtype == torch.float64
    assert make_hooked("clip_headless").cfg.d_vocab_out == 48  # headless: the pooled features


def test_split_qkv_input_hooks_edit_one_head():
    """Editing head 1's key input changes only head 1's keys; the forward is unchanged without edits."""
    model, x, logits, cache = run("deit3")
    model.set_use_split_qkv_input(True)
    model.set_use_attn_in(True)
    model.set_use_hook_mlp_in(True)

    def shift(act, hook):
        act = act.clone()
        act[:, :, 1] += torch.linspace(-1, 1, act.shape[-1])  # not constant: ln1 would remove it
        return act

    with torch.no_grad():
        out, split = model.run_with_cache(x)
        close(out, logits)
        close(split["blocks.0.hook_attn_in"][:, :, 2], cache["blocks.0.hook_resid_pre"])
        close(split["blocks.1.hook_mlp_in"], cache["blocks.1.hook_resid_mid"])
        with model.hooks(fwd_hooks=[("blocks.0.hook_k_input", shift)]):
            _, edited = model.run_with_cache(x, names_filter=["blocks.0.attn.hook_k", "blocks.0.attn.hook_q"])
    k0, k1 = cache["blocks.0.attn.hook_k"], edited["blocks.0.attn.hook_k"]
    assert torch.allclose(k1[:, :, [0, 2]], k0[:, :, [0, 2]], atol=1e-5)
    assert (k1[:, :, 1] - k0[:, :, 1]).abs().max() > 1e-2
    assert torch.allclose(edited["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_q"], atol=1e-5)


# ---------------------------------------------------------------------------------------- TL entry points
def timm_resid(source, x, n_blocks):
    """The residual stream after ``n_blocks`` blocks, by timm's own modules."""
    with torch.no_grad():
        t = source.norm_pre(source._pos_embed(source.patch_embed(x)))
        for block in source.blocks[:n_blocks]:
            t = block(t)
    return t


def test_stop_at_layer_returns_timm_residual_stream(family):
    from tests.conftest import make_timm
    from vit_lens import HookedViT

    source = make_timm(family)
    model = HookedViT.from_timm(source)
    x = random_images(model)
    n = model.cfg.n_layers
    for stop in (0, 1, n, -1, -n):
        expected = timm_resid(source, x, stop % n if stop < 0 else stop)
        with torch.no_grad():
            close(model(x, stop_at_layer=stop), expected)
            out, cache = model.run_with_cache(x, stop_at_layer=stop)
        close(out, expected)
        last = (stop % n if stop < 0 else stop)
        assert not any(k.startswith(f"blocks.{last}.") for k in cache.keys())
        if last:
            close(cache[f"blocks.{last - 1}.hook_resid_post"], expected)
    for bad in (n + 1, -n - 1, 1.0, True):
        with pytest.raises(ValueError, match=r"stop_at_layer must be an int in \[-3, 3\]"):
            model(x, stop_at_layer=bad)


def test_incl_bwd_caches_the_gradients_of_the_loss():
    from tests.conftest import make_timm
    from vit_lens import HookedViT

    source = make_timm("deit3")
    model = HookedViT.from_timm(source)
    x, labels = random_images(model), torch.tensor([1, 4])
    loss, cache = model.run_with_cache(x, return_type="loss", labels=labels, incl_bwd=True)
    timm_loss = torch.nn.functional.cross_entropy(source(x), labels)
    timm_loss.backward()
    close(loss.detach(), timm_loss.detach())
    close(model.head.weight.grad, source.head.weight.grad)  # TL leaves the parameter gradients, as here
    resid = cache["blocks.1.hook_resid_pre"].clone().requires_grad_()
    grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(model.forward_from_resid(resid, 1), labels), resid)
    close(cache["blocks.1.hook_resid_pre_grad"], grad)
    assert cache["blocks.0.attn.hook_out_grad"] is cache["blocks.0.hook_attn_out_grad"]  # TL 4 name
    with pytest.raises(ValueError, match="needs a scalar output"):
        model.run_with_cache(x, incl_bwd=True)
    with pytest.raises(ValueError, match="cannot be combined with stop_at_layer"):
        model.run_with_cache(x, incl_bwd=True, stop_at_layer=1)
    with torch.no_grad(), pytest.raises(ValueError, match="gradient tracking is off"):
        model.run_with_cache(x, return_type="loss", labels=labels, incl_bwd=True)
    with pytest.raises(ValueError, match=r"labels=<integer tensor \[batch=2\]"):
        model(x, return_type="loss", labels=torch.tensor([1, 7]))


def test_transformer_lens_logit_lens_on_images():
    from transformer_lens.tools.analysis import logit_lens

    from tests.conftest import make_timm
    from vit_lens import HookedViT

    source = make_timm("dinov2")
    model = HookedViT.from_timm(source)
    x = random_images(model)
    result = logit_lens(model, x, positions=0)
    n = model.cfg.n_layers
    assert result.labels[-1] == "final_post" and result.values.shape == (n + 1, 2, 7)
    with torch.no_grad():
        for layer in range(n + 1):  # timm's norm and head on timm's CLS after `layer` blocks
            close(result.values[layer], source.head(source.norm(timm_resid(source, x, layer))[:, 0]))
        close(result.values[-1], source(x))
    targets = logit_lens(model, x, positions=0, targets=[3]).rank_trajectory(3)
    assert targets.shape == (n + 1, 2)
    with pytest.raises(ValueError, match=r"fc_norm on the pooled features.*logit_lens\(cache, positions=None\)"):
        avg = make_hooked("vit_avg")
        logit_lens(avg, random_images(avg))


def test_svd_interpreter_reads_tl_parameters_with_layer_scale():
    from transformer_lens import SVDInterpreter

    model = make_hooked("dinov2")
    keys = set(model.state_dict())
    svd = SVDInterpreter(model)
    assert set(model.state_dict()) == keys and "blocks.1.attn.W_V" not in keys  # state dict untouched
    block = model.blocks[1]
    dh = model.cfg.d_head
    w_v = block.attn.qkv.weight[2 * model.cfg.d_model:][dh:2 * dh].T  # head 1, timm layout
    w_o = block.attn.proj.weight[:, dh:2 * dh].T * block.ls1.gamma
    _, _, vh = torch.linalg.svd(w_v @ w_o)
    expected = (model.head.weight @ vh[:4].T)[:, None]
    got = svd.get_singular_vectors("OV", layer_index=1, head_index=1, num_vectors=4)
    assert got.shape == (7, 1, 4)
    close(got.abs(), expected.abs())  # singular vectors up to sign
    w_out = block.mlp.fc2.weight.T * block.ls2.gamma
    _, _, vh = torch.linalg.svd(w_out)
    close(svd.get_singular_vectors("w_out", layer_index=1, num_vectors=3).abs(), (model.head.weight @ vh[:3].T)[:, None].abs())


def test_direct_path_patching_with_tl4_hook_names():
    from transformer_lens import patching

    model = make_hooked("deit3")
    clean, corrupted = random_images(model, 2, seed=5), random_images(model, 2, seed=6)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
    metric = lambda logits: (logits[:, 1] - logits[:, 2]).mean()
    result = patching.get_act_patch_direct_path(model, corrupted, clean_cache, corrupted_cache, metric, 0, 1,
                                                component="k", verbose=False)
    assert not model.cfg.use_split_qkv_input  # restored
    z = "blocks.0.attn.hook_z"
    delta = (clean_cache[z][:, :, 1] - corrupted_cache[z][:, :, 1]) @ model.W_O[0, 1]
    for layer, head in ((1, 0), (2, 2)):
        block = model.blocks[layer]

        def edit_k(k, hook):  # recompute this head's keys from its own shifted input, by hand
            k = k.clone()
            shifted = block.ln1(corrupted_cache[f"blocks.{layer}.hook_resid_pre"] + delta)
            k[:, :, head] = shifted @ model.W_K[layer, head] + model.b_K[layer, head]
            return k

        with torch.no_grad():
            expected = metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_k", edit_k)]))
        assert result[layer, head].item() == pytest.approx(expected.item(), abs=1e-5)
    assert result[0].abs().max() == 0 and result[1:].std() > 0
    model.set_use_split_qkv_input(True)  # TL 4 names for the split inputs resolve everywhere
    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=["blocks.1.attn.hook_q_input"])
    close(cache["blocks.1.attn.hook_q_input"][:, :, 0], clean_cache["blocks.1.hook_resid_pre"])
    model.set_use_split_qkv_input(False)
    with pytest.raises(ValueError, match="use_split_qkv_input"):
        model.add_hook("blocks.1.attn.hook_q_input", lambda a, hook: None)


def tiny_many_tokens():
    """65 tokens at 32 px: TL would sweep only 32 positions from the image width."""
    import timm

    from vit_lens import HookedViT

    torch.manual_seed(0)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=2,
                               embed_dim=24, num_heads=2, num_classes=5).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return HookedViT.from_timm(source)


def test_tl_position_sweeps_cover_every_token_or_refuse():
    from transformer_lens import patching

    from vit_lens.patching import get_act_patch_resid_pre

    metric = lambda logits: (logits[:, 1] - logits[:, 2]).mean()
    for model in (tiny_many_tokens(), make_hooked("vit")):  # width 32 < 65 tokens (silent before), 64 > 17
        clean, corrupted = random_images(model, 2, seed=1), random_images(model, 2, seed=2)
        with torch.no_grad():
            _, cache = model.run_with_cache(clean)
        for sweep in (patching.get_act_patch_resid_pre, patching.get_act_patch_block_every,
                      patching.get_act_patch_attn_head_pattern_dest_src_pos):
            with pytest.raises(ValueError, match=r"model.to_tokens\(images\).*tl_index_df"):
                sweep(model, corrupted, cache, metric)
        tokens = model.to_tokens(corrupted)
        with torch.no_grad():
            assert torch.equal(model(tokens), model(corrupted))
        tl = patching.get_act_patch_resid_pre(model, tokens, cache, metric)
        assert tl.shape == (model.cfg.n_layers, model.cfg.n_tokens)
        close(tl, get_act_patch_resid_pre(model, corrupted, cache, metric))
    every = patching.get_act_patch_block_every(model, tokens, cache, metric)
    assert every.shape == (3, model.cfg.n_layers, model.cfg.n_tokens)
    close(every[0], tl)
    bad = tokens.clone()
    bad[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="zeros at the 1 prefix positions"):
        model(bad)


def test_config_fields_have_their_vit_meaning():
    from tests.conftest import make_timm

    source = make_timm("dinov2")
    cfg = make_hooked("dinov2").cfg
    assert cfg.d_vocab == cfg.d_vocab_out == 7 and cfg.attention_dir == "bidirectional"
    assert cfg.attn_scale == source.blocks[0].attn.scale ** -1
    assert cfg.post_embedding_ln is False and make_hooked("clip_quickgelu").cfg.post_embedding_ln is True
    hidden = sum(b.attn.qkv.weight.numel() + b.attn.proj.weight.numel() + b.mlp.fc1.weight.numel()
                 + b.mlp.fc2.weight.numel() for b in source.blocks)
    assert cfg.n_params == hidden and cfg.normalization_type == "LN" and not cfg.layer_norm_folding


def test_logit_readout_of_loose_vectors_is_refused_under_pooled_final_norm():
    """TL's logit_readout stacks vectors as rows of one sequence; fc_norm's pooled statistics would mix them."""
    from transformer_lens.tools.analysis.logit_lens import logit_readout

    model, _, _, cache = run("vit_avg")
    with pytest.raises(ValueError, match="needs whole residual streams"):
        logit_readout(model, cache["blocks.1.hook_resid_pre"][:, 3])
    assert logit_readout(model, cache["blocks.1.hook_resid_pre"][:, 3], apply_ln=False).values.shape == (2, 7)
