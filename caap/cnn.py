"""CAAP for CNNs (paper App. B.3, which gives no formula; this is the definition implemented here).

The CNN is seen as ``stem -> blocks[0..L-1] -> head`` (:class:`caap.cnn_model.CNNClassifier`); ``h^b(x)`` is
the input of block ``b`` (``h^0`` the stem output), the analogue of a ViT's ``blocks.{b}.hook_resid_pre``.
A *patch* ``p`` is a cell of the input patch grid (``patch_size`` px, default 16); ``S(p)`` its selection
neighbourhood (:func:`caap.selection.all_neighbourhoods`, default 3x3 box).

**Patch -> feature-map cells** (``M_b(S)``, named default ``"centre"``): a cell of ``h^b`` (``h_b x w_b``, cell
size ``H/h_b x W/w_b`` px) belongs to the patch whose pixel box holds the cell's centre; ``M_b(S)`` is every
cell belonging to a patch of ``S``, plus, for each patch of ``S``, the cell holding the patch's centre (so a
stage coarser than the patch grid still gets a cell). At stride 16 with 16-px patches it is one-to-one; at
stride 8 each patch owns 2x2 cells; at stride 32 each patch maps to the cell containing it.

**Definition.** With blank image ``x0`` and blocks ``layers = (l_s, l_e)`` (default ``0..ceil(2L/3)``, capped
at ``L-1``; ``(0, 3)`` for the four paper CNNs, whose ``h^3`` is at stride 16):

    h^b(c*) = M_b ⊙ h^b(x) + (1 - M_b) ⊙ h^b(x0)    for l_s <= b <= l_e,
    the blocks l_e..L-1 and the head run on from h^{l_e}(c*),   A(p) = f(c*)_y.

With ``freeze_context=True`` the cells outside ``M_b(S)`` also keep the blank's values at every later block
input ``b > l_e`` (the strict analogue of the ViT engine's frozen context); the default ``False`` lets the
rest of the network run on freely, as App. B.3 describes ("the rest of the network runs on").

Because the intervention overwrites *every* cell of ``h^b`` for ``b`` in the range (source inside ``M_b``,
blank outside), only ``h^{l_e}`` reaches the output: unlike a ViT, a CNN has no CLS token recomputed in
between, so ``l_s`` has no effect and the computation starts at block ``l_e``.

**Cost**: one partial forward (stem .. block ``l_e-1``) per image, the blank once per ``CNNCAAP``, and
``K = n_patches`` partial forwards (blocks ``l_e..L-1`` + head), batched ``chunk_size`` at a time (chosen from
``memory_budget_gb`` by a one-sample probe). No multi-CLS parallel trick exists for convolutions: every
intervention changes the whole downstream feature map (the receptive field grows at each layer), so the
K runs share nothing but their batch.
"""
from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from caap.blanks import Blank, blank_image
from caap.caap import Score, resolve_layers, upsample
from caap.cnn_model import CNNClassifier, as_cnn_classifier
from caap.selection import Selection, all_neighbourhoods
from caap.targets import check_score, refuse_target_with_callable, resolve_targets
from caap.validation import check_flag, check_float, check_int, check_method_images
from vit_lens.patching import ClassScore


def patch_of_cells(n_cells: int, image_px: int, patch_px: int, n_patches: int) -> Int[Tensor, "n_cells"]:
    """Along one axis: the patch whose pixel span holds each cell's centre."""
    centres = (torch.arange(n_cells, dtype=torch.float64) + 0.5) * (image_px / n_cells)
    return (centres // patch_px).long().clamp(max=n_patches - 1)


def cell_of_patches(n_patches: int, patch_px: int, image_px: int, n_cells: int) -> Int[Tensor, "n_patches"]:
    """Along one axis: the cell holding each patch's centre."""
    centres = (torch.arange(n_patches, dtype=torch.float64) + 0.5) * patch_px
    return (centres * n_cells / image_px).floor().long().clamp(max=n_cells - 1)


def stage_masks(selected: Bool[Tensor, "K n_patches"], grid_size: tuple[int, int], patch_size: tuple[int, int],
                image_size: tuple[int, int], stage_size: tuple[int, int]) -> Bool[Tensor, "K h w"]:
    """``M_b(S_k)`` for every intervention ``k`` on a ``stage_size`` feature map (see the module docstring)."""
    (gh, gw), (ph, pw), (H, W), (h, w) = grid_size, patch_size, image_size, stage_size
    rows, cols = patch_of_cells(h, H, ph, gh), patch_of_cells(w, W, pw, gw)
    owner = (rows[:, None] * gw + cols[None, :]).flatten()  # [h*w] patch owning each cell
    masks = selected[:, owner]  # [K, h*w]
    centre_cell = (cell_of_patches(gh, ph, H, h)[:, None] * w + cell_of_patches(gw, pw, W, w)[None, :]).flatten()
    extra = torch.zeros(selected.shape[0], h * w, dtype=torch.float32)
    extra.index_add_(1, centre_cell, selected.float())
    return (masks | (extra > 0)).view(-1, h, w)


class CNNCAAP:
    """CAAP for a CNN classifier (definition in :mod:`caap.cnn`).

    ``model``: a :class:`CNNClassifier` or a raw timm/torchvision ResNet/DenseNet/VGG (wrapped with
    ``image_size``/``patch_size``/``mean``/``std`` from ``wrap_kwargs``). ``blank``: as :class:`caap.CAAP`
    (pixel space, normalized with the model's mean/std). ``score``: ``"logit"``, ``"prob"`` or a callable on
    the output ``[batch, K, n_out]``.
    """

    def __init__(self, model: nn.Module | CNNClassifier, *, layers=None, selection: Selection = "box",
                 radius: int = 1, blank: Blank = "white", score: Score = "logit", freeze_context: bool = False,
                 chunk_size: int | None = None, memory_budget_gb: float = 1.0, blank_seed: int = 0,
                 progress: bool | None = None, **wrap_kwargs):
        check_score(score, "the output [batch, K, n_out] to [batch, K]")
        chunk_size = check_int(chunk_size, "chunk_size", low=1, none_ok=True)
        memory_budget_gb = check_float(memory_budget_gb, "memory_budget_gb", low=0, low_open=True)
        freeze_context = check_flag(freeze_context, "freeze_context", none_ok=False)
        progress = check_flag(progress, "progress")
        blank_seed = check_int(blank_seed, "blank_seed", low=0)
        self.model = model = as_cnn_classifier(model, **wrap_kwargs)
        cfg = model.cfg
        self.layers = resolve_layers(layers, cfg.n_layers)
        self.score, self.freeze_context, self.progress = score, freeze_context, progress
        self.neighbourhoods = all_neighbourhoods(cfg.grid_size, selection, radius)
        selected = torch.zeros(len(self.neighbourhoods), cfg.n_patches, dtype=torch.bool)
        for k, patches in enumerate(self.neighbourhoods):
            selected[k, patches] = True
        with torch.inference_mode():
            self.blank_maps = model.block_inputs(blank_image(model, blank, blank_seed))  # h^b(x0), b = 0..L-1
        end = self.layers[1]
        device = self.blank_maps[0].device
        self.masks = {b: stage_masks(selected, cfg.grid_size, cfg.patch_size, cfg.image_size,
                                     tuple(self.blank_maps[b].shape[2:])).to(device)
                      for b in range(end, cfg.n_layers)}  # only h^{l_e} and later are read
        self.chunk_size = chunk_size or self._chunk_from_budget(memory_budget_gb)

    def _chunk_from_budget(self, memory_budget_gb: float) -> int:
        """Interventions per batch: the budget over one sample's activations from block ``l_e`` on (sum of
        every leaf module's output, an upper bound of what inference keeps alive)."""
        end, total = self.layers[1], [self.blank_maps[self.layers[1]].numel()]
        leaves = [m for m in self.model.model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(lambda mod, inp, out: total.append(out.numel() if isinstance(out, Tensor) else 0))
                   for m in leaves]
        try:
            with torch.inference_mode():
                self.model.run_from(self.blank_maps[end], end)
        finally:
            for h in handles:
                h.remove()
        per_sample = sum(total) * self.blank_maps[end].element_size()
        return max(1, int(memory_budget_gb * 2**30 // per_sample))

    def _edit(self, lo: int, hi: int) -> Callable[[int, Tensor], Tensor] | None:
        if not self.freeze_context:
            return None
        return lambda b, h: torch.where(self.masks[b][lo:hi, None], h, self.blank_maps[b])

    @torch.inference_mode()
    def attribute(self, images: Float[Tensor, "batch chan height width"],
                  target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch grid_h grid_w"]:
        """Patch-level maps ``[batch, grid_h, grid_w]`` for the predicted class (``target=None``), an int, or
        one class per image (must be None when ``score`` is a callable)."""
        model, end = self.model, self.layers[1]
        check_method_images(model, images)
        images = images.to(self.blank_maps[0].device)
        refuse_target_with_callable(self.score, target)
        targets = None if callable(self.score) else resolve_targets(model, images, target)
        source = model.block_inputs(images, upto=end)[end]  # h^{l_e}(x) [batch, C, h, w]
        blank, mask = self.blank_maps[end], self.masks[end]
        K = mask.shape[0]
        jobs = [(i, lo) for i in range(images.shape[0]) for lo in range(0, K, self.chunk_size)]
        show = self.progress if self.progress is not None else len(jobs) > 8
        scores = torch.empty(images.shape[0], K, device=source.device, dtype=source.dtype)
        for i, lo in tqdm(jobs, disable=not show, desc="CAAP (CNN)", unit="chunk"):
            hi = min(lo + self.chunk_size, K)
            patched = torch.where(mask[lo:hi, None], source[i:i + 1], blank)  # [k, C, h, w]
            out = model.run_from(patched, end, self._edit(lo, hi))[None]  # [1, k, n_out]
            readout = self.score if callable(self.score) else ClassScore(targets[i:i + 1], kind=self.score)
            scores[i, lo:hi] = readout(out)[0]
        return model.layout.to_grid(scores)

    def attribute_pixels(self, images: Float[Tensor, "batch chan height width"],
                         target: int | Int[Tensor, "batch"] | None = None) -> Float[Tensor, "batch height width"]:
        """The patch-level map upsampled (bilinear) to the input size."""
        return upsample(self.attribute(images, target), self.model.cfg.image_size)
