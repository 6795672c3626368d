"""A tiny HookedViT whose output depends on ONE patch only, through attention: every block but the last
adds nothing to the residual stream (zero ``proj``/``fc2``) and attends uniformly (zero ``qkv`` weights);
in the last block every query attends to patch ``j`` alone (a position-embedding marker on channel 0
that only the keys read), whose value carries its pixels; the MLP branch is zero. The CLS output, hence
the logits, is a function of patch ``j``'s pixels (other patches only through ~exp(-40) attention)."""
import torch

from tests.conftest import make_hooked, random_images


def attention_toy(family: str = "vit", row: int = 2, col: int = 1):
    """``(model, patch, image)`` for a CLS-pooling family."""
    model = make_hooked(family, seed=4)
    cfg, layout = model.cfg, model.layout
    patch = layout.patch_index(row, col)
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.fc2.weight.zero_(), block.mlp.fc2.bias.zero_()
        for block in model.blocks[:-1]:
            block.attn.qkv.weight.zero_()
            block.attn.proj.weight.zero_(), block.attn.proj.bias.zero_()
        model.patch_embed.proj.weight[0].zero_(), model.patch_embed.proj.bias[0].zero_()
        model.pos_embed.W_pos[:, 0] = 0.0
        offset = cfg.n_prefix_tokens if model.pos_embed.on_prefix else 0
        model.pos_embed.W_pos[offset + patch, 0] = 10.0  # patch j's marker
        for token in (model.cls_token, model.reg_token):
            if token is not None:
                token[..., 0] = 0.0
        last = model.blocks[-1].attn
        hd = last.n_heads * last.d_head
        last.qkv.weight[: 2 * hd].zero_()  # queries: bias only; keys: read the marker channel
        last.qkv.bias[:hd] = 1.0
        last.qkv.bias[hd:2 * hd] = 0.0
        last.qkv.weight[hd:2 * hd, 0] = 40.0
        last.proj.weight.mul_(20.0)
    return model, patch, random_images(model, 1, seed=5)


def informative_target(model, image, patch) -> int:
    """The class whose logit grows most when attention moves to patch ``patch`` in the last block
    (head-averaged d logit / d A[CLS, patch], by plain autograd)."""
    kept = {}

    def keep(pattern, hook):
        kept["p"] = pattern.detach().requires_grad_(True)
        return kept["p"]

    with torch.enable_grad(), model.hooks(fwd_hooks=[(f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern", keep)]):
        logits = model(image)
        jac = torch.stack([torch.autograd.grad(logits[0, c], kept["p"], retain_graph=True)[0]
                           for c in range(logits.shape[-1])])
    return int(jac[:, 0, :, 0, model.layout.token_position(patch)].mean(1).argmax())
