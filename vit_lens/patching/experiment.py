"""One entry point for the frozen-context patching experiment, whatever the engine."""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens.patching.context import ContextCache, cache_context
from vit_lens.patching.frozen_attention import ExactFrozenAttention, FrozenAttention, PrecomputedFrozenAttention
from vit_lens.patching.interventions import Intervention, validate_interventions
from vit_lens.patching.loop import run_loop
from vit_lens.patching.parallel import DEFAULT_MEMORY_BUDGET_GB, check_parallel_supported, run_parallel
from vit_lens.patching.readouts import ClassScore, Readout
from vit_lens.validation import check_int, check_positive_real

Engine = Literal["loop", "parallel", "efficient"]
ENGINES = ("loop", "parallel", "efficient")


def run_patching(
    model,
    source_images: Float[Tensor, "batch chan height width"] | None,
    target_images: Float[Tensor, "tgt chan height width"] | None,
    interventions: Sequence[Intervention],
    *,
    freeze_context: bool = True,
    readout: Readout | None = None,
    target_classes: Int[Tensor, "batch"] | None = None,
    engine: Engine = "parallel",
    chunk_size: int | None = None,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    progress: bool = False,
    source_cache: ContextCache | None = None,
    target_cache: ContextCache | None = None,
    frozen_attention: FrozenAttention | None = None,
) -> Float[Tensor, "batch K"]:
    """Score ``[batch, K]`` of each intervention on each source image (definition: README, "Activation patching").

    ``target_images`` has batch 1 (shared) or the source batch. The default readout is the logit of
    ``target_classes`` (default: the class the model predicts on each source image). Pass precomputed
    ``source_cache``/``target_cache`` (from :func:`cache_context`) to reuse them across calls.
    ``engine``: ``"loop"`` (reference), ``"parallel"`` (exact, frozen context only) or ``"efficient"``
    (E-CAAP approximation of the parallel engine). ``frozen_attention`` overrides how the parallel
    engines attend to frozen tokens (e.g. ``PrecomputedFrozenAttention(exact_patch_queries=False)``).
    """
    from vit_lens.hooked_vit import HookedViT

    if not isinstance(model, HookedViT):
        raise TypeError(f"model must be a HookedViT; got {type(model).__name__} (port a timm ViT with "
                        f"HookedViT.from_timm(model))")
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", minimum=1)
    check_positive_real(memory_budget_gb, "memory_budget_gb")
    validate_interventions(model.cfg, interventions)
    if engine != "loop":
        check_parallel_supported(model.cfg, freeze_context)
    for name, images, cache in (("source_images", source_images, source_cache),
                                ("target_images", target_images, target_cache)):
        if images is None and cache is None:
            raise ValueError(f"{name} is required when no precomputed cache is given")
        if images is not None:
            model.check_images(images, name)
            if images.shape[0] == 0:
                raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)}); pass at least one image")
    if source_cache is None:  # the parallel engines read a source only up to its last patched block
        source_cache = cache_context(model, source_images) if engine == "loop" or not interventions else \
            cache_context(model, source_images, with_queries=True, up_to=max(iv.layer_end for iv in interventions))
    if target_cache is None:
        target_cache = cache_context(model, target_images, with_queries=engine == "efficient")
    if target_cache.batch not in (1, source_cache.batch):
        raise ValueError(f"target_images must have batch 1 or {source_cache.batch} (the source batch); "
                         f"got {target_cache.batch}")
    if readout is None:
        if target_classes is None:
            with torch.inference_mode():
                logits = model.forward_from_resid(source_cache.resid_pre[0], 0)
            target_classes = logits.argmax(-1)
        readout = ClassScore(_check_target_classes(target_classes, source_cache.batch))
    if engine == "loop":
        return run_loop(model, source_cache, target_cache, interventions, readout,
                        freeze_context=freeze_context, chunk_size=chunk_size or 16, progress=progress)
    frozen = frozen_attention or (ExactFrozenAttention() if engine == "parallel" else PrecomputedFrozenAttention())
    return run_parallel(model, source_cache, target_cache, interventions, readout, frozen_attention=frozen,
                        chunk_size=chunk_size, memory_budget_gb=memory_budget_gb, progress=progress)


def _check_target_classes(target_classes, batch: int) -> Int[Tensor, "batch"]:
    """One integer class per source image (a tensor, list or int); floats and bools are refused."""
    classes = torch.as_tensor(target_classes)
    if classes.dtype == torch.bool or classes.is_floating_point() or classes.is_complex():
        raise TypeError(f"target_classes must hold integer class indices; got dtype {classes.dtype}")
    classes = classes.reshape(-1)
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.shape != (batch,):
        raise ValueError(f"target_classes must have one class per source image ({batch}); got {classes.numel()}")
    return classes
