"""TransformerLens's ``HookedRootModule`` conventions for HookedViT (a mixin).

* Hook names: unknown names and hooks whose ``cfg.use_*`` flag is off are refused by name; TransformerLens 4
  (TransformerBridge) names resolve to TL 3 (``HookedTransformer``) ones, e.g. ``blocks.{l}.attn.hook_q_input``
  -> ``blocks.{l}.hook_q_input`` (:data:`TL4_HOOK_ALIASES`; the cache answers to both).
* ``run_with_cache`` as TL's: ``stop_at_layer`` (a forward keyword), ``incl_bwd=True`` (calls ``.backward()``
  on the output, which must be a scalar, e.g. ``return_type="loss", labels=...``; gradients cached as
  ``<name>_grad``; TL 4 refuses non-scalar outputs, ``stop_at_layer`` and disabled autograd, and so do we).
* TL's tools that read the input as tokens: an input form whose last axis is the token axis
  (:meth:`to_tokens`); TL's position-axis patching sweeps given images are refused (they would take the
  positions from the image width), and ``transformer_lens.tools.analysis.logit_lens(model, images)`` gets the
  per-position readout ``unembed(ln_final(resid_post))`` it checks against (see :meth:`run_with_cache`).
  Both TL callers are recognised on the call stack (:func:`find_caller`): their calls carry no option we
  could read instead.
"""
from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from vit_lens.cache import ViTActivationCache
from vit_lens.validation import check_finite

# hook-name suffix inside ``blocks.{l}.`` -> the cfg flag that makes it fire (off by default, as in TL)
GATED_HOOKS = {
    "attn.hook_result": "use_attn_result",
    "hook_attn_in": "use_attn_in",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_mlp_in": "use_hook_mlp_in",
}
# TransformerLens 4 block-level names (TransformerBridge) -> HookedViT's (TL 3 HookedTransformer's)
TL4_HOOK_ALIASES = {
    "attn.hook_q_input": "hook_q_input",
    "attn.hook_k_input": "hook_k_input",
    "attn.hook_v_input": "hook_v_input",
    "attn.hook_attn_in": "hook_attn_in",
    "hook_in": "hook_resid_pre",
    "ln2.hook_in": "hook_resid_mid",
    "hook_out": "hook_resid_post",
    "attn.hook_out": "hook_attn_out",
    "mlp.hook_out": "hook_mlp_out",
}
POSITION_AXES = ("pos", "src_pos", "dest_pos")
RETURN_TYPES = ("logits", "loss", "both", None)


def find_caller(function: str, module: str, max_depth: int = 40) -> FrameType | None:
    """The innermost running frame of ``module.function`` within ``max_depth`` callers, or None."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        if frame.f_code.co_name == function and frame.f_globals.get("__name__") == module:
            return frame
        frame = frame.f_back
    return None


def resolve_hook_name(name: Any) -> Any:
    """A TransformerLens 4 hook name's HookedViT name (other names and callables unchanged)."""
    if not isinstance(name, str) or not name.startswith("blocks."):
        return name
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[2] in TL4_HOOK_ALIASES:
        return f"blocks.{parts[1]}.{TL4_HOOK_ALIASES[parts[2]]}"
    return name


class TransformerLensCompat:
    """Mixin for HookedViT (before ``HookedRootModule`` in the bases)."""

    def setup(self) -> None:
        """TL's ``setup`` (names, ``hook_dict``, ``mod_dict``) plus the TL 4 names in ``mod_dict`` (not in
        ``hook_dict``, so a hook point is cached or hooked once whatever the filter)."""
        super().setup()
        for l in range(self.cfg.n_layers):
            for alias, name in TL4_HOOK_ALIASES.items():
                self.mod_dict[f"blocks.{l}.{alias}"] = self.mod_dict[f"blocks.{l}.{name}"]

    # ------------------------------------------------------------------ input forms
    def to_tokens(self, images: Float[Tensor, "batch chan height width"]) -> Float[Tensor, "batch d_patch n_tokens"]:
        """Images as *pixel tokens*: each residual position's pixels as a column, ``[batch, in_chans * ph *
        pw, n_tokens]`` in ``W_E``'s (chan, row, col) order, zeros at the prefix positions (CLS, registers).
        The last axis is the token axis, as for TL's token ids, so TL's patching functions sweep all
        ``n_tokens`` positions; the model takes either form and gives the same outputs."""
        self.check_images(images)
        ph, pw = self.cfg.patch_size
        patches = rearrange(images, "b c (gh ph) (gw pw) -> b (c ph pw) (gh gw)", ph=ph, pw=pw)
        prefix = patches.new_zeros(patches.shape[0], patches.shape[1], self.cfg.n_prefix_tokens)
        return torch.cat([prefix, patches], dim=-1)

    def as_images(self, input: Any, name: str = "images") -> Tensor:
        """``input`` as ``[batch, chan, height, width]`` images: images pass through, pixel tokens
        (:meth:`to_tokens`) are folded back (exact: a reindexing)."""
        if not isinstance(input, Tensor) or input.ndim != 3:
            return input  # check_images names what is wrong
        cfg = self.cfg
        d_patch = cfg.in_chans * cfg.patch_size[0] * cfg.patch_size[1]
        if tuple(input.shape[1:]) != (d_patch, cfg.n_tokens):
            return input  # check_images: rank 4 needed (or pixel tokens)
        if input.is_floating_point():
            check_finite(input, name)
            if bool(input[..., :cfg.n_prefix_tokens].any()):
                raise ValueError(f"{name}: pixel tokens hold zeros at the {cfg.n_prefix_tokens} prefix positions (CLS, "
                                 f"registers have no pixels); got non-zero values there")
        ph, pw = cfg.patch_size
        return rearrange(input[..., cfg.n_prefix_tokens:], "b (c ph pw) (gh gw) -> b c (gh ph) (gw pw)",
                         c=cfg.in_chans, ph=ph, pw=pw, gh=cfg.grid_size[0])

    def _check_stop_at_layer(self, stop_at_layer: Any) -> int:
        """TL's ``stop_at_layer`` as the number of blocks to run (negative counts from the end)."""
        n = self.cfg.n_layers
        if isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int) or not -n <= stop_at_layer <= n:
            raise ValueError(f"stop_at_layer must be an int in [{-n}, {n}] (TransformerLens's: run blocks "
                             f"[0, stop_at_layer) and return the residual stream; negative counts from the end); "
                             f"got {stop_at_layer!r}")
        return stop_at_layer % n if stop_at_layer < 0 else stop_at_layer

    def _apply_return_type(self, logits: Tensor, return_type: Any, labels: Any) -> Any:
        """TL's ``return_type``: ``"logits"``, ``"loss"`` (mean cross-entropy against ``labels``), ``"both"``
        (``(logits, loss)``) or None."""
        if return_type not in RETURN_TYPES:
            raise ValueError(f"return_type must be one of {RETURN_TYPES}; got {return_type!r}")
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if self.head is None:
            raise ValueError(f"return_type={return_type!r} needs a classifier; this model is headless (its output is "
                             f"the pooled {self.cfg.d_model} features)")
        n = self.cfg.num_classes
        if (not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32)
                or tuple(labels.shape) != (logits.shape[0],) or bool((labels < 0).any()) or bool((labels >= n).any())):
            got = f"shape {tuple(labels.shape)}, {labels.dtype}" if isinstance(labels, Tensor) else repr(labels)
            raise ValueError(f"return_type={return_type!r} needs labels=<integer tensor [batch={logits.shape[0]}] of "
                             f"classes in [0, {n})>; got {got}")
        loss = torch.nn.functional.cross_entropy(logits, labels.to(logits.device).long())
        return loss if return_type == "loss" else (logits, loss)

    # ------------------------------------------------------------------ hooks
    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:
        self._check_hook_names([name])
        return super().add_hook(resolve_hook_name(name), hook, dir=dir, is_permanent=is_permanent, level=level,
                                prepend=prepend)

    def _check_hook_names(self, names) -> None:
        """Raise for any string name that is not a hook point, or whose ``cfg`` flag is off (callable
        filters pass through)."""
        for name in names:
            if not isinstance(name, str):
                continue
            if resolve_hook_name(name) not in self.hook_dict:
                self._raise_unknown_hook(name)
            flag = self._inactive_flag(name)
            if flag is not None:
                raise ValueError(
                    f"hook {name!r} only fires when model.cfg.{flag} is True (off by default, as in "
                    f"TransformerLens, to keep the forward pass fast); enable it with model.set_{flag}(True)")

    def _inactive_flag(self, name: str) -> str | None:
        """The off ``cfg`` flag gating hook ``name``, or None when the hook fires."""
        parts = resolve_hook_name(name).split(".", 2)
        if len(parts) < 3 or parts[0] != "blocks":
            return None
        flag = GATED_HOOKS.get(parts[2])
        return flag if flag is not None and not getattr(self.cfg, flag) else None

    def _check_hook_list(self, hook_list) -> list:
        hook_list = list(hook_list or ())
        self._check_hook_names(name for name, _ in hook_list)
        return [(resolve_hook_name(name), fn) for name, fn in hook_list]

    def run_with_hooks(self, *model_args: Any, fwd_hooks=(), bwd_hooks=(), **kwargs: Any):
        fwd_hooks, bwd_hooks = self._check_hook_list(fwd_hooks), self._check_hook_list(bwd_hooks)
        self._refuse_tl_position_sweep_on_images(model_args)
        return super().run_with_hooks(*model_args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, **kwargs)

    def hooks(self, fwd_hooks=(), bwd_hooks=(), *args: Any, **kwargs: Any):
        return super().hooks(self._check_hook_list(fwd_hooks), self._check_hook_list(bwd_hooks), *args, **kwargs)

    def _raise_unknown_hook(self, name: str) -> None:
        import difflib

        close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"Unknown hook name {name!r}; this model has {len(self.hook_dict)} hook points "
                         f"(see model.hook_dict), e.g. 'blocks.0.hook_resid_pre'.{hint}")

    def _refuse_tl_position_sweep_on_images(self, model_args: tuple) -> None:
        """TL's ``generic_activation_patch`` infers its ``pos`` axes from the input's last dimension: the
        image width for images (an IndexError past ``n_tokens``, a silent partial sweep below it)."""
        if not model_args or not isinstance(model_args[0], Tensor) or model_args[0].ndim != 4:
            return
        frame = find_caller("generic_activation_patch", "transformer_lens.patching")
        if frame is None:
            return
        axes = [a for a in (frame.f_locals.get("index_axis_names") or ()) if a in POSITION_AXES]
        if axes:
            cfg = self.cfg
            raise ValueError(
                f"TransformerLens's patching takes the {axes[0]!r} axis from the input's last dimension: for images "
                f"that is the width ({model_args[0].shape[-1]} px), not the {cfg.n_tokens} token positions, so it "
                f"would sweep the wrong positions. Pass model.to_tokens(images) (pixel tokens, last axis = the "
                f"{cfg.n_tokens} positions) instead of the images, or index_df=vit_lens.patching.tl_index_df(model, "
                f"{tuple(frame.f_locals.get('index_axis_names'))})")

    def run_with_cache(self, *model_args: Any, names_filter=None, device=None, remove_batch_dim: bool = False,
                       incl_bwd: bool = False, reset_hooks_end: bool = True, clear_contexts: bool = False,
                       pos_slice=None, **model_kwargs: Any) -> tuple[Any, ViTActivationCache]:
        """Run the model and return ``(output, ActivationCache)``; ``names_filter`` selects hook names (TL 3
        or TL 4 spellings). Without a filter (or with a callable one) hooks whose ``cfg`` flag is off are
        left out. ``stop_at_layer=l`` returns the residual stream before block ``l`` and caches the hooks
        that ran. ``incl_bwd=True`` backpropagates the output (a scalar: ``return_type="loss",
        labels=...``), caches ``<name>_grad`` and, as in TL, leaves the parameters' ``.grad`` filled."""
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(names, (list, tuple)):
            self._check_hook_names(names)
            names_filter = [resolve_hook_name(name) for name in names]
        else:
            keep = names if callable(names) else (lambda name: True)
            names_filter = lambda name: keep(name) and self._inactive_flag(name) is None
        if remove_batch_dim and model_args and isinstance(model_args[0], Tensor) and model_args[0].shape[0] != 1:
            raise ValueError(f"remove_batch_dim=True needs a batch of 1; got {model_args[0].shape[0]}")
        if incl_bwd and model_kwargs.get("stop_at_layer") is not None:
            raise ValueError("incl_bwd=True cannot be combined with stop_at_layer: the run returns the residual "
                             "stream at that layer, not a scalar to call backward() on")
        if incl_bwd and not torch.is_grad_enabled():
            raise ValueError("incl_bwd=True needs autograd, but gradient tracking is off (torch.no_grad(), "
                             "inference mode); run the call with gradients enabled")
        lens_call = find_caller("logit_lens", "transformer_lens.tools.analysis.logit_lens") is not None
        if lens_call:
            self._check_per_position_readout()
        cache_dict, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device,
                                                      remove_batch_dim=remove_batch_dim, pos_slice=pos_slice)
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                if not isinstance(out, Tensor) or out.numel() != 1:
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(f"incl_bwd=True needs a scalar output to call backward() on (as TransformerLens); "
                                     f"got {shape}. Pass return_type='loss', labels=<[batch] classes>, or hook the "
                                     f"backward pass of your own score with run_with_hooks(bwd_hooks=...)")
                if not out.requires_grad:
                    raise ValueError("incl_bwd=True got an output without grad_fn: the parameters have "
                                     "requires_grad=False, so there is nothing to differentiate")
                out.backward()
        cache = ViTActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        if lens_call and isinstance(out, Tensor) and model_kwargs.get("stop_at_layer") is None:
            out = self._per_position_readout(cache, out)
        return out, cache

    # ------------------------------------------------------------------ TL's logit lens
    def _check_per_position_readout(self) -> None:
        cfg = self.cfg
        if cfg.pooling == "cls_mean" or cfg.fc_norm:
            feature = ("the cls_mean head (CLS of several blocks + patch mean)" if cfg.pooling == "cls_mean"
                       else "fc_norm on the pooled features")
            raise ValueError(
                f"transformer_lens.tools.analysis.logit_lens(model, images) reads every position through ln_final "
                f"alone, which does not reproduce this model's head ({feature}). Use the cache: _, cache = "
                f"model.run_with_cache(images); logit_lens(cache, positions=None) (fc_norm: every position is "
                f"normalized by the pooled vector's scale; average the patch positions to get the logits)")

    def _per_position_readout(self, cache, logits: Tensor) -> Float[Tensor, "batch pos d_vocab_out"]:
        """``unembed(ln_final(resid_post))`` at every position: what TL's logit lens checks against (an LM's
        per-position logits). Pooling it as the model pools reproduces ``logits`` (checked here)."""
        cfg = self.cfg
        with torch.no_grad():
            resid = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
            per_position = self.unembed(self.final_norm(resid))
            pooled = per_position[:, 0] if cfg.pooling == "token" else per_position[:, cfg.n_prefix_tokens:].mean(1)
            spread = (logits - logits.mean(-1, keepdim=True)).abs().max()
            if (pooled - logits).abs().max() > 1e-4 * max(float(spread), 1e-12):
                raise ValueError("transformer_lens's logit_lens: unembed(ln_final(last hook_resid_post)) does not give "
                                 "this model's logits (a hook edits the head's input?); remove such hooks")
        return per_position

    def process_weights_(self, **options: bool):
        """TransformerLens's weight processing in place (``fold_ln``, ``center_writing_weights``,
        ``center_unembed``, ``fold_value_biases``, ``refactor_factored_attn_matrices``): see
        :mod:`vit_lens.processing`. Returns the model."""
        from vit_lens.processing import process_weights

        return process_weights(self, **options)

    # ------------------------------------------------------------------ TransformerLens switches
    def set_use_attn_explicit(self, explicit: bool = True) -> None:
        """Force the explicit softmax attention path everywhere (the fast SDPA path is the default)."""
        for block in self.blocks:
            block.attn.force_explicit = explicit

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute each head's output ``blocks.{l}.attn.hook_result`` ``[batch, pos, head, d_model]``
        (LayerScale included); costs that tensor per layer."""
        self._set_flag("use_attn_result", use_attn_result)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Give each head its own copy of the residual stream, ``blocks.{l}.hook_attn_in``."""
        self._set_flag("use_attn_in", use_attn_in)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Separate per-head query/key/value inputs ``blocks.{l}.hook_q_input/k_input/v_input``."""
        self._set_flag("use_split_qkv_input", use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Expose the MLP input (before ``ln2``) as ``blocks.{l}.hook_mlp_in``."""
        self._set_flag("use_hook_mlp_in", use_hook_mlp_in)

    def _set_flag(self, flag: str, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool; got {value!r}")
        if not value:  # a hook left on a point that stops firing would be silently ignored
            hooked = [name for name, point in self.hook_dict.items()
                      if (point._forward_hooks or point._backward_hooks) and name.split(".", 2)[-1] in GATED_HOOKS
                      and GATED_HOOKS[name.split(".", 2)[-1]] == flag]
            if hooked:
                raise ValueError(f"cannot turn {flag} off while hooks are attached to {hooked[:3]}, which would "
                                 f"stop firing; remove them first (model.reset_hooks(including_permanent=True))")
        setattr(self.cfg, flag, value)

    def _sync_cfg_device(self) -> None:
        weight = self.patch_embed.proj.weight
        self.cfg.device, self.cfg.dtype = weight.device, weight.dtype

    def _apply(self, fn, *args: Any, **kwargs: Any):
        """Keep ``cfg.device``/``cfg.dtype`` (read by TL's patching and cache code) on ``to``/``cuda``/..."""
        out = super()._apply(fn, *args, **kwargs)
        self._sync_cfg_device()
        return out
