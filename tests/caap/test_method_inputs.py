"""The bad-input sweep over EVERY registered method (issue 18): a method added to the registry gets it for free.

For each name in ``caap.list_methods()`` the method is built on a tiny random model (a 3-block ViT; a tiny
``CNNClassifier`` for the CNN-only methods, and also for the input-level methods that accept a CNN) and
``attribute`` must refuse, with one ``TypeError``/``ValueError`` naming the parameter: NaN/inf pixels, uint8,
numpy arrays, a wrong shape, an empty batch, and float/bool/out-of-range targets.

Its numeric options are discovered from the factory's signature (annotation mentioning ``int``/``float``, or
an int/float default, registered defaults included): ``True``, NaN and a string must each be refused naming
the option. Which values are allowed is the method's own knowledge (checked in its ``__init__`` with
``caap.validation``); this file only knows that bools, NaN and strings are never numbers.
"""
from __future__ import annotations

import functools
import inspect
import re

import pytest
import torch
from torch import nn

from caap import get_method, list_methods
from caap.cnn_model import CNNClassifier
from caap.registry import _factory
from tests.conftest import make_hooked, random_images

CNN_ONLY = {"caap-cnn"}  # methods that take a CNN, not a ViT
ALSO_ON_CNN = {"simple-insertion", "simple-deletion"}  # input-level methods that also take a CNNClassifier
# small settings so that a method that wrongly accepts a bad input still finishes quickly (not validity knowledge)
FAST = {"rise": dict(n_masks=8), "mda": dict(max_candidates=2), "occlusion": dict(window=32)}


@functools.lru_cache(maxsize=None)
def vit():
    return make_hooked("vit")  # 64 px, 16-px patches, 3 blocks, 7 classes


@functools.lru_cache(maxsize=None)
def cnn() -> CNNClassifier:
    """A 3-conv CNN with 7 classes on 64-px images (stride 8 at the last block), random weights."""
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
    blocks = [nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 7))
    net = nn.Sequential(stem, *blocks, head).eval()
    return CNNClassifier(net, image_size=64, patch_size=16, stem=stem, blocks=blocks, head=head)


RUNS = [(name, "cnn" if name in CNN_ONLY else "vit") for name in list_methods()]
RUNS += [(name, "cnn") for name in list_methods() if name in ALSO_ON_CNN]
IDS = [f"{name}-{kind}" for name, kind in RUNS]


def build(name: str, kind: str, **options):
    return get_method(name, vit() if kind == "vit" else cnn(), **{**FAST.get(name, {}), **options})


def images(batch: int = 2) -> torch.Tensor:
    return random_images(vit(), batch)  # both models take [batch, 3, 64, 64]


def with_pixel(value: float) -> torch.Tensor:
    x = images()
    x[1, 2, 5, 7] = value
    return x


# (id, images, target, error, regex): every regex names the parameter and what was given
BAD_INPUTS = [
    ("NaN pixels", lambda: with_pixel(float("nan")), None, ValueError, r"images must hold finite values; got 1 NaN"),
    ("inf pixels", lambda: with_pixel(float("-inf")), None, ValueError, r"images must hold finite values; got 0 NaN and 1 inf"),
    ("uint8", lambda: (images().clamp(0, 1) * 255).to(torch.uint8), None, TypeError,
     r"images must be a floating-point tensor .*torch\.uint8"),
    ("float64", lambda: images().double(), None, TypeError, r"images .*dtype torch\.float64"),
    ("numpy", lambda: images().numpy(), None, TypeError, r"images must be a torch\.Tensor .*got ndarray"),
    ("no batch dim", lambda: images()[0], None, ValueError, r"images must .*\(3, 64, 64\)"),
    ("wrong size", lambda: images()[..., :48, :48], None, ValueError, r"images must .*48"),
    ("empty batch", lambda: images()[:0], None, ValueError, r"images must hold at least one image"),
    ("float target", images, 2.9, TypeError, r"target must be .*got 2\.9 \(float\)"),
    ("bool target", images, True, TypeError, r"target must be .*got True \(bool\)"),
    ("float tensor target", images, torch.tensor([1.0, 2.5]), TypeError,
     r"target must hold integer class indices; got dtype torch\.float32"),
    ("target = n_classes", images, 7, ValueError, r"target must be in \[0, 7\); got \[7, 7\]"),
    ("negative target", images, torch.tensor([0, -1]), ValueError, r"target must be in \[0, 7\); got \[0, -1\]"),
    ("3 targets for 2 images", images, [0, 1, 2], ValueError, r"target must be .*shape \[2\]\); got shape \(3,\)"),
]


@pytest.mark.parametrize("name,kind", RUNS, ids=IDS)
def test_bad_images_and_targets_are_refused(name, kind):
    method = build(name, kind)
    for case, make, target, error, regex in BAD_INPUTS:
        with pytest.raises(error, match=regex):
            method.attribute(make(), target)
            pytest.fail(f"{name} on the {kind} accepted {case}")


def numeric_options(name: str) -> list[str]:
    """Options of the factory that take a number: annotated ``int``/``float`` (alone or in a union), or
    with an int/float default (registered or in the signature)."""
    factory, registered = _factory(name)
    params = list(inspect.signature(factory).parameters.values())[1:]  # [0] is the model
    found = []
    for p in params:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        default = registered.get(p.name, p.default)
        number_default = isinstance(default, (int, float)) and not isinstance(default, bool)
        if re.search(r"\b(int|float)\b", annotation or "") or number_default:
            found.append(p.name)
    return found


OPTION_RUNS = [(name, "cnn" if name in CNN_ONLY else "vit", option) for name in list_methods()
               for option in numeric_options(name)]


def test_every_method_has_numeric_options_discovered():
    """The discovery finds what the sweep must cover (a broken discovery would make the sweep vacuous)."""
    options = {name: set(numeric_options(name)) for name in list_methods()}
    assert {"start_layer"} <= options["t-attr"] & options["tam"] & options["mutex"] & options["rollout"]
    assert {"start_layer"} <= options["ixg+"] & options["libra-ixg+"]
    assert {"n_masks", "grid", "p_keep", "seed"} <= options["rise"]
    assert {"window", "stride", "baseline"} <= options["occlusion"]
    assert {"cutoff", "kappa", "gamma", "blur_size", "blur_sigma"} <= options["mda"]
    assert {"noise_std", "distance_threshold", "layer"} <= options["vit-cx"]
    assert {"layer"} <= options["grad-cam"] and {"chunk_size"} <= options["simple-insertion"]
    assert len(OPTION_RUNS) >= 60


@pytest.mark.parametrize("name,kind,option", OPTION_RUNS, ids=[f"{n}-{o}" for n, _, o in OPTION_RUNS])
def test_bool_nan_and_str_options_are_refused_naming_the_option(name, kind, option):
    for value, shown in ((True, "True"), (float("nan"), "nan"), ("a", "'a'")):
        with pytest.raises((TypeError, ValueError)) as info:
            build(name, kind, **{option: value})
            pytest.fail(f"{name} accepted {option}={value!r}")
        message = str(info.value)
        assert re.match(rf"{re.escape(option)}\b", message) and shown in message, message


# out-of-range and wrongly typed settings the sweep cannot guess (the list); (method, options, error, regex)
RANGE_CASES = [
    ("grad-cam", dict(layer=99), ValueError, r"^layer must be an int in \[0, 2\] or None; got 99"),
    ("simple-insertion", dict(chunk_size=0), ValueError, r"^chunk_size must be an int >= 1 or None; got 0"),
    ("simple-deletion", dict(memory_budget_gb=0), ValueError, r"^memory_budget_gb must be a finite number > 0; got 0"),
    ("rise", dict(p_keep="a"), TypeError, r"^p_keep must be a finite number in \(0, 1\]; got 'a' \(str\)"),
    ("rise", dict(p_keep=0), ValueError, r"^p_keep must be a finite number in \(0, 1\]; got 0"),
    ("rise", dict(seed="a"), TypeError, r"^seed must be an int >= 0; got 'a' \(str\)"),
    ("rise", dict(grid=0), ValueError, r"^grid \(cells per side\) must be an int >= 1; got 0"),
    ("occlusion", dict(window=(16, True)), TypeError, r"^window \(pixels\) must be an int >= 1 or a \(height, width\)"),
    ("occlusion", dict(baseline=torch.full((3, 64, 64), float("nan"))), ValueError,
     r"^baseline must hold finite values; got 12288 NaN"),
    ("mda", dict(kappa=-1), ValueError, r"^kappa must be a finite number >= 0; got -1"),
    ("mda", dict(blur_sigma=-1), ValueError, r"^blur_sigma must be a finite number > 0; got -1"),
    ("mda", dict(blur_sigma=0), ValueError, r"^blur_sigma must be a finite number > 0; got 0"),
    ("mda", dict(blur_size=0), ValueError, r"^blur_size must be an odd int >= 1 \(pixels\); got 0"),
    ("mda", dict(blur_size=-3), ValueError, r"^blur_size must be an odd int >= 1 \(pixels\); got -3"),
    ("mda", dict(blur_size=4), ValueError, r"^blur_size must be an odd int >= 1 \(pixels\); got 4"),
    ("mda", dict(cutoff=True), TypeError, r"^cutoff must be a finite number in \(0, 1\]; got True \(bool\)"),
    ("vit-cx", dict(noise_std=-1), ValueError, r"^noise_std must be a finite number >= 0; got -1"),
    ("vit-cx", dict(distance_threshold=3), ValueError, r"^distance_threshold \(cosine distance\) must be .*\(0, 2\]"),
    ("vit-cx", dict(hook="nope"), ValueError, r"^hook must name a hook point inside a block.*got 'nope'"),
    ("tam", dict(start_layer=3), ValueError, r"^start_layer must be an int in \[0, 2\].*; got 3"),
    ("tam", dict(steps=1), ValueError, r"^steps must be an int >= 2; got 1"),
    ("t-attr", dict(start_layer=-1), ValueError, r"^start_layer must be an int in \[0, 2\]; got -1"),
    ("rollout", dict(discard_ratio=1.0), ValueError, r"^discard_ratio must be a finite number in \[0, 1\); got 1\.0"),
    ("rollout", dict(head_fusion="median"), ValueError, r"^head_fusion must be one of \('mean', 'max', 'min'\)"),
    ("mutex", dict(token_ratio=0), ValueError, r"^token_ratio must be a finite number in \(0, 1\]; got 0"),
    ("ixg+", dict(start_layer=3), ValueError, r"^start_layer must be an int in \[0, 2\] or None; got 3"),
]


@pytest.mark.parametrize("name,options,error,regex", RANGE_CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v!r}'[:24] for k, v in c[1].items())}" for c in RANGE_CASES])
def test_out_of_range_options_are_refused(name, options, error, regex):
    with pytest.raises(error, match=regex):
        build(name, "vit", **options)


def test_cnn_caap_options_are_checked():
    with pytest.raises(TypeError, match=r"^freeze_context must be True or False; got 1 \(int\)"):
        build("caap-cnn", "cnn", freeze_context=1)
    with pytest.raises(ValueError, match=r"^chunk_size must be an int >= 1 or None; got 0"):
        build("caap-cnn", "cnn", chunk_size=0)
