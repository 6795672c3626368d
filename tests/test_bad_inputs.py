"""One clear error for every bad input (issue 13, items 3-6): the error names the parameter, what was given
and what is allowed. The CLI cases live in tests/caap/test_cli_errors.py.

To add a case, append ``Case(id, fn, error, regex)`` to CASES: ``fn(tmp_path)`` must raise ``error`` with a
message matching ``regex`` (``re.search``). Build models with the cached helpers below (tiny, random weights).
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from caap import CAAP, all_neighbourhoods
from vit_lens import HookedViT, UnsupportedModelError
from tests.conftest import FAMILIES, make_hooked, make_timm, random_images


class Case(NamedTuple):
    id: str
    fn: Callable[[Path], object]
    error: type[BaseException]
    match: str


@functools.lru_cache(maxsize=None)
def vit() -> HookedViT:
    """Shared tiny ViT (3 blocks, 4x4 grid, 7 classes); do not modify it in a case."""
    return make_hooked("vit")


def images(batch: int = 2) -> torch.Tensor:
    return random_images(vit(), batch)


def with_value(value: float) -> torch.Tensor:
    x = images()
    x[1, 0, 3, 5] = value
    return x


def attribute(target=None, x=None, **kwargs):
    return CAAP(vit(), **kwargs).attribute(images() if x is None else x, target)


def tiny_checkpoint(tmp: Path, sidecar: str | None = None, suffix: str = ".safetensors", cut: bool = False) -> Path:
    """The tiny ViT's timm weights at ``tmp/tiny<suffix>``, optionally truncated, with a raw sidecar text."""
    path = tmp / f"tiny{suffix}"
    state = make_timm("vit").state_dict()
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    if cut:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if sidecar is not None:
        path.with_suffix(".json").write_text(sidecar)
    return path


def sidecar(name: str = FAMILIES["vit"][0], **extra) -> str:
    return json.dumps({"timm_model_name": name, "create_model_kwargs": FAMILIES["vit"][1], **extra})


def square(row, col, grid):
    return [(row, col), (row, col + 1)]


CASES = [
    # ---- item 4: silent acceptance
    Case("caap: NaN pixels", lambda t: attribute(x=with_value(float("nan"))), ValueError,
         r"images must hold finite values; got 1 NaN and 0 infinite"),
    Case("caap: inf pixels", lambda t: attribute(x=with_value(float("inf"))), ValueError,
         r"images must hold finite values; got 0 NaN and 1 infinite"),
    Case("caap: score callable returns [batch]", lambda t: attribute(score=lambda out: out[..., 0].mean(1)),
         ValueError, r"score callable .* must return a tensor of shape \[batch, K\] = \[2, \d+\] .*got shape \(2,\)"),
    Case("caap: score callable returns [batch, K, 1]", lambda t: attribute(score=lambda out: out[..., :1]),
         ValueError, r"shape \[batch, K\].*got shape \(2, \d+, 1\)"),
    Case("caap: score callable returns a float", lambda t: attribute(score=lambda out: 1.0), ValueError,
         r"shape \[batch, K\].*got float"),
    Case("caap: score callable and a target", lambda t: attribute(3, score=lambda out: out[..., 0]), ValueError,
         r"target must be None when score is a callable .*; got target=3"),
    Case("target: float 3.7", lambda t: attribute(3.7), TypeError, r"target must be .*int.*got 3\.7 \(float\)"),
    Case("target: True", lambda t: attribute(True), TypeError, r"target must be .*got True \(bool\)"),
    Case("target: float tensor", lambda t: attribute(torch.tensor([1.0, 2.5])), TypeError,
         r"target must hold integer class indices; got dtype torch\.float32 \(\[1\.0, 2\.5\]\)"),
    Case("layers: (True, 5)", lambda t: CAAP(vit(), layers=(True, 2)), TypeError,
         r"layers must be .* non-int entries \[True\]"),
    Case("layers: floats", lambda t: CAAP(vit(), layers=(0.0, 2)), TypeError, r"non-int entries \[0\.0\]"),
    # ---- item 5: unclear crashes
    Case("caap: empty batch", lambda t: attribute(x=images()[:0]), ValueError,
         r"images must hold at least one image; got shape \(0, 3, 64, 64\)"),
    Case("chunk_size: 0", lambda t: CAAP(vit(), chunk_size=0), ValueError, r"chunk_size must be an int >= 1; got 0"),
    Case("chunk_size: negative", lambda t: CAAP(vit(), chunk_size=-3), ValueError, r"chunk_size .*>= 1; got -3"),
    Case("chunk_size: float", lambda t: CAAP(vit(), chunk_size=2.5), TypeError, r"chunk_size must be an int .*2\.5"),
    Case("memory_budget_gb: NaN", lambda t: CAAP(vit(), memory_budget_gb=float("nan")), ValueError,
         r"memory_budget_gb must be a finite number > 0; got nan"),
    Case("memory_budget_gb: inf", lambda t: CAAP(vit(), memory_budget_gb=float("inf")), ValueError,
         r"memory_budget_gb .*got inf"),
    Case("memory_budget_gb: negative", lambda t: CAAP(vit(), memory_budget_gb=-1), ValueError,
         r"memory_budget_gb .*> 0; got -1"),
    Case("memory_budget_gb: str", lambda t: CAAP(vit(), memory_budget_gb="1"), TypeError,
         r"memory_budget_gb .*got '1' \(str\)"),
    Case("batch_size: bool", lambda t: CAAP(vit(), batch_size=True), TypeError,
         r"batch_size must be an int >= 1; got True \(bool\)"),
    Case("batch_size: float", lambda t: CAAP(vit(), batch_size=2.0), TypeError, r"batch_size .*got 2\.0 \(float\)"),
    Case("blank_seed: 'a'", lambda t: CAAP(vit(), blank_seed="a"), TypeError,
         r"blank_seed must be an int >= 0; got 'a' \(str\)"),
    Case("layers: 5", lambda t: CAAP(vit(), layers=2), TypeError,
         r"layers must be None, \(start, end\) or .*got 2 \(int\) \(for the single block 2 use \(2, 2\)\)"),
    Case("layers: empty", lambda t: CAAP(vit(), layers=()), ValueError, r"layers must be .*got an empty tuple"),
    Case("radius: float", lambda t: CAAP(vit(), radius=1.5), TypeError, r"radius must be an int >= 0; got 1\.5"),
    Case("radius: bool", lambda t: CAAP(vit(), radius=True), TypeError, r"radius .*got True \(bool\)"),
    Case("selection callable returns None", lambda t: CAAP(vit(), selection=lambda r, c, g: None), TypeError,
         r"selection callable .* must return a list of \(row, col\) pairs of ints; for patch \(0, 0\) it returned None"),
    Case("selection callable returns ints", lambda t: CAAP(vit(), selection=lambda r, c, g: [r * 4 + c]),
         TypeError, r"selection callable .* returned the element 0"),
    Case("selection callable returns float cells", lambda t: CAAP(vit(), selection=lambda r, c, g: [(r, c), (0.5, 1)]),
         TypeError, r"returned the cell \(0\.5, 1\)"),
    Case("selection callable omits the patch", lambda t: CAAP(vit(), selection=lambda r, c, g: [(3, 3)] if r + c else [(0, 1)]),
         ValueError, r"must include the patch itself \(0, 0\)"),
    Case("target: '3'", lambda t: attribute("3"), TypeError, r"target must be .*got '3' \(str\)"),
    Case("target: NaN", lambda t: attribute(float("nan")), TypeError, r"target must be .*got nan \(float\)"),
    Case("CAAP(str)", lambda t: CAAP("vit_base_patch16_224"), TypeError,
         r"model must be a vit_lens\.HookedViT or a timm VisionTransformer; got str\. Build one with HookedViT\.from_timm"),
    Case("CAAP(object)", lambda t: CAAP(object()), TypeError, r"model must be .*; got object"),
    Case("CAAP(non-ViT module)", lambda t: CAAP(torch.nn.Linear(2, 2)), UnsupportedModelError,
         r"unsupported model class Linear"),
    Case("from_checkpoint: missing file", lambda t: HookedViT.from_checkpoint(t / "none.safetensors"),
         FileNotFoundError, r"file not found: '.*none\.safetensors'"),
    Case("from_checkpoint: sidecar is not JSON", lambda t: HookedViT.from_checkpoint(tiny_checkpoint(t, "{name: 1")),
         ValueError, r"invalid JSON sidecar '.*tiny\.json': Expecting property name"),
    Case("from_checkpoint: sidecar is a list", lambda t: HookedViT.from_checkpoint(tiny_checkpoint(t, "[1]")),
         ValueError, r"JSON sidecar '.*tiny\.json' must hold an object .*got list"),
    Case("from_checkpoint: sidecar field type", lambda t: HookedViT.from_checkpoint(
        tiny_checkpoint(t, sidecar(class_names="cat"))), ValueError, r"tiny\.json': 'class_names' must be a list"),
    Case("from_checkpoint: truncated safetensors", lambda t: HookedViT.from_checkpoint(
        tiny_checkpoint(t, sidecar(), cut=True)), ValueError,
         r"cannot read checkpoint '.*tiny\.safetensors' \(truncated"),
    Case("from_checkpoint: truncated .pth", lambda t: HookedViT.from_checkpoint(
        tiny_checkpoint(t, sidecar(), suffix=".pth", cut=True)), ValueError,
         r"cannot read checkpoint '.*tiny\.pth' .*truncated or corrupt"),
    Case("from_checkpoint: sidecar names an unknown timm model", lambda t: HookedViT.from_checkpoint(
        tiny_checkpoint(t, sidecar("vit_nope_patch16_224"))), ValueError,
         r"unknown timm model 'vit_nope_patch16_224' \('timm_model_name' in '.*tiny\.json'\); close matches"),
    Case("from_timm: unknown name", lambda t: HookedViT.from_timm("vit_nope_patch16_224", pretrained=False),
         ValueError, r"unknown timm model 'vit_nope_patch16_224'"),
    Case("from_timm: unknown pretrained tag", lambda t: HookedViT.from_timm("vit_base_patch16_224.bogus"),
         ValueError, r"unknown pretrained tag 'bogus' for timm model 'vit_base_patch16_224'.*available: "
                     r"vit_base_patch16_224\."),
    Case("from_timm: dynamic_img_size=True", lambda t: HookedViT.from_timm(timm.create_model(
        FAMILIES["vit"][0], dynamic_img_size=True, **FAMILIES["vit"][1])), UnsupportedModelError,
         r"dynamic_img_size=True"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_error(case: Case, tmp_path):
    with pytest.raises(case.error, match=case.match):
        case.fn(tmp_path)


# ---------------------------------------------------------------------------- documented correct behaviours
def test_large_radius_is_cheap_and_gives_the_whole_grid():
    """Item 6: any radius >= grid_h + grid_w - 2 selects the whole grid; enumeration is bounded by the grid."""
    grid = (16, 16)
    start = time.perf_counter()
    box, manhattan = all_neighbourhoods(grid, "box", 1000), all_neighbourhoods(grid, "manhattan", 1000)
    assert time.perf_counter() - start < 2  # (2r+1)^2 cells per patch took minutes
    assert box == all_neighbourhoods(grid, "box", 15) and manhattan == all_neighbourhoods(grid, "manhattan", 30)
    assert all(sorted(s) == list(range(256)) for s in box + manhattan)
    assert all_neighbourhoods(grid, "manhattan", 29) != manhattan  # 29 misses the opposite corner
    caap = CAAP(vit(), radius=10**9)
    assert all(len(s) == vit().cfg.n_patches for s in caap.neighbourhoods)


def test_timm_model_is_ported():
    timm_model = make_timm("vit")
    caap = CAAP(timm_model, layers=(0, 1))
    assert isinstance(caap.model, HookedViT)
    x = images(1)
    expected = CAAP(vit(), layers=(0, 1)).attribute(x, 2)
    assert torch.allclose(caap.attribute(x, 2), expected, atol=1e-5)


def test_integer_like_inputs_are_accepted():
    x = images()
    maps = attribute(torch.tensor([1, 2]), x)
    assert torch.allclose(attribute(np.array([1, 2]), x), maps)
    assert torch.allclose(attribute([np.int64(1), 2], x), maps)
    caap = CAAP(vit(), layers=(np.int64(0), 1), chunk_size=np.int32(5), memory_budget_gb=np.float32(0.5))
    assert caap.layers == (0, 1) and caap.chunk_size == 5
