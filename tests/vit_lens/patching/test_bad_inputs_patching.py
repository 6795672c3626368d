"""One clear error for each bad input to the patching engines (issue 13, items 4-5)."""
import pytest
import torch

from tests.conftest import make_hooked, make_timm, random_images
from vit_lens.patching import Intervention, run_patching

MODEL = make_hooked("vit")
X = random_images(MODEL, 2)
IVS = [Intervention.from_patches(MODEL.layout, [1, 2], 0, 1)]


def run(source=X, target=X[:1], ivs=IVS, model=MODEL, **kwargs):
    return run_patching(model, source, target, ivs, **kwargs)


def nan_images():
    x = X.clone()
    x[0, 1, 2, 3] = float("nan")
    return x


CASES = [
    ("timm model", lambda: run(model=make_timm("vit")), TypeError, r"model must be a HookedViT; got VisionTransformer.*from_timm"),
    ("empty batch", lambda: run(source=X[:0]), ValueError, r"source_images is an empty batch"),
    ("NaN pixels", lambda: run(source=nan_images()), ValueError, r"source_images must hold finite values; got 1 NaN"),
    ("chunk_size 0", lambda: run(chunk_size=0), ValueError, r"chunk_size must be an int >= 1; got 0"),
    ("chunk_size float", lambda: run(chunk_size=2.5), TypeError, r"chunk_size must be an int >= 1; got 2.5"),
    ("budget NaN", lambda: run(memory_budget_gb=float("nan")), ValueError, r"memory_budget_gb must be a finite number > 0; got nan"),
    ("budget inf", lambda: run(memory_budget_gb=float("inf")), ValueError, r"memory_budget_gb must be a finite number > 0; got inf"),
    ("target_classes length", lambda: run(target_classes=torch.tensor([1, 2, 3])), ValueError,
     r"target_classes must have one class per source image \(2\); got 3"),
    ("target_classes float", lambda: run(target_classes=torch.tensor([1.7, 2.0])), TypeError,
     r"target_classes must hold integer class indices; got dtype torch.float32"),
    ("target_classes range", lambda: run(target_classes=[1, 99]), ValueError, r"target classes must be in \[0, 7\)"),
    ("float position", lambda: run(ivs=[Intervention((5.5,), 0, 1)]), TypeError, r"interventions\[0\].positions must be ints; got \[5.5\]"),
    ("bool layer", lambda: run(ivs=[Intervention((5,), True, 1)]), TypeError, r"interventions\[0\].layer_start must be an int; got True"),
    ("float patch index", lambda: Intervention.from_patches(MODEL.layout, [1.7], 0, 1), TypeError,
     r"patch_indices must be integer patch indices; got \[1.7\]"),
    ("unknown engine", lambda: run(engine="fast"), ValueError, r"engine must be one of \('loop', 'parallel', 'efficient'\); got 'fast'"),
]


@pytest.mark.parametrize("fn, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_error(fn, error, match):
    with pytest.raises(error, match=match):
        fn()


def test_good_inputs_still_run():
    assert run(target_classes=3).shape == (2, 1)
    assert run(target_classes=torch.tensor([1, 2]), chunk_size=1).shape == (2, 1)
