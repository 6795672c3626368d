"""Per-image cost of every registered attribution method, as multiples of one timm forward.

ViT-B/16 at 224 px with random weights (pretrained=False), CPU, all methods measured in one run with the
default options of :func:`caap.get_method` and a fixed target class. Fast methods are timed on ``--batch``
images in every one of ``--rounds`` interleaved rounds (drift of a shared machine hits every method
alike) and reported as the median over rounds of (method time / timm forward time on the same batch).
Methods whose warm-up call on one image takes longer than ``--slow-seconds`` (RISE, Simple Insertion /
Deletion, ...) are timed once on one image against the median one-image forward.

    python benchmarks/bench_baselines.py                       # every method in caap.list_methods()
    python benchmarks/bench_baselines.py --methods caap rollout gae ixg ixg+ libra-ixg+ --rounds 7
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402

from caap import get_method, list_methods  # noqa: E402
from caap.registry import _factory  # noqa: E402
from vit_lens import HookedViT  # noqa: E402


def build(name: str, model):
    """The registered method with its progress bar off when it has one."""
    factory, _ = _factory(name)
    try:
        accepts_progress = "progress" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts_progress = False
    return get_method(name, model, progress=False) if accepts_progress else get_method(name, model)


def once(fn) -> float:
    return median_seconds(fn, repeats=1, warmup=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=None, help="registered names (default: all)")
    parser.add_argument("--batch", type=int, default=2, help="images per call for the fast methods")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--slow-seconds", type=float, default=20.0,
                        help="a method whose one-image warm-up takes longer is timed once on one image")
    args = parser.parse_args()
    names = args.methods or list_methods()
    unknown = [n for n in names if n not in list_methods()]
    if unknown:
        parser.error(f"unknown methods {unknown}; registered: {', '.join(list_methods())}")
    if args.batch < 1 or args.rounds < 1:
        parser.error("--batch and --rounds must be >= 1")

    torch.manual_seed(0)
    timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    model = HookedViT.from_timm(timm_model)
    images = torch.randn(args.batch, 3, 224, 224)
    one = images[:1]
    methods = {name: build(name, model) for name in names}

    fast, slow = {}, {}
    for name, method in methods.items():  # warm-up (also fills per-model caches such as CAAP's blank context)
        start = time.perf_counter()
        with torch.inference_mode():
            method.attribute(one, target=0)
        seconds = time.perf_counter() - start
        (slow if seconds > args.slow_seconds else fast)[name] = method
        print(f"warm-up {name:<18s} {seconds:8.2f} s{'  (slow: timed once on one image)' if name in slow else ''}",
              flush=True)
    timm_model(images)

    ratios = {name: [] for name in fast}
    seconds = {name: [] for name in fast}
    forward_batch, forward_one = [], []
    for _ in range(args.rounds):
        forward_batch.append(once(lambda: timm_model(images)))
        forward_one.append(once(lambda: timm_model(one)))
        for name, method in fast.items():
            t = once(lambda: method.attribute(images, target=0))
            seconds[name].append(t)
            ratios[name].append(t / forward_batch[-1])
    rows = [(name, args.batch, statistics.median(seconds[name]) / args.batch, statistics.median(ratios[name]))
            for name in fast]
    t_one = statistics.median(forward_one)
    for name, method in slow.items():
        t = once(lambda: method.attribute(one, target=0))
        rows.append((name, 1, t, t / t_one))

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; ViT-B/16 224 px, random weights, CPU; "
          f"{args.rounds} interleaved rounds")
    print(f"timm forward: {statistics.median(forward_batch) / args.batch * 1e3:.1f} ms/image at batch {args.batch}, "
          f"{t_one * 1e3:.1f} ms at batch 1")
    print("| method | images per call | ms / image | × timm forward |")
    print("|---|---|---|---|")
    for name, n, t, ratio in rows:
        print(f"| {name} | {n} | {t * 1e3:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
