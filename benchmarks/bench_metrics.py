"""Speed of the metric harness, per (image, method), against the plain work each metric needs. Target <= 1.15.

Paper curves (RISE protocol): one row's Deletion + Insertion curves (one image width of pixels per step: 225
points each at 224 px), AUPR and Pointing Game, divided by the same number of plain batched timm forwards
(same batch size).

Suite metrics (``--metrics``, default all; ``analysis.metrics.registry``): one ``score(ctx, [name], [map])`` call
divided by the plain work it needs, measured in the same run:

* forward-only (avg-drop, perturbation, infidelity, road): the same plain batched timm forwards (the metric's
  batch sizes; infidelity adds Captum's forward of the unperturbed image per batch). ROAD's noisy linear
  imputation is not a forward but is work the metric needs: the headline ratio divides by the same 14
  imputations called directly plus the plain forwards ("vs plain work"); the imputation's time inside the call
  is measured too and the ratio to forwards alone printed with it ("incl. imputation") and without it
  ("excl. imputation");
* explanation metrics (random-logit, max-sensitivity, mprt): the method's own explanations, as many and as
  batched as the metric makes them (max-sensitivity: the image, then Captum's perturbed copies in one batch;
  mprt: the method rebuilt on a randomized copy of the model, once per block), so the ratio is the metric's
  overhead over the explanations it needs;
* segmentation needs no forward: its absolute time per map is printed instead.

Rounds are interleaved (metric, plain, metric, ...) and the ratio is the median of per-round ratios, as the
other benchmarks do: this machine is shared. ``--model vit-b16`` (default): a random-weight timm ViT-B/16 at
224 px; ``--model dinov2-s14``: the real DINOv2-S/14 ``dinov2_vits14_davis20`` from ../shared/eval.
"""
import argparse
import copy
import statistics
import time
from pathlib import Path

import timm
import torch

import analysis.metrics.road as road
from analysis.evaluate import Protocol, score_attribution
from analysis.metrics.captum_metrics import INFIDELITY_SAMPLES, SENSITIVITY_SAMPLES
from analysis.metrics.mprt import randomize_block
from analysis.metrics.random_logit import image_seed, off_class
from analysis.metrics.registry import Context, get_metric
from caap import get_method
from caap.masking import batch_size_for
from vit_lens import HookedViT

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"
SUITE = ("avg-drop", "perturbation", "segmentation", "random-logit", "infidelity", "max-sensitivity", "mprt", "road")


def load(name: str):
    if name == "vit-b16":
        timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
        return HookedViT.from_timm(timm_model), timm_model
    from safetensors.torch import load_file
    model = HookedViT.from_checkpoint(EVAL / "models" / "dinov2_vits14_davis20.safetensors")
    timm_model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=20,
                                   global_pool="token").eval()
    timm_model.load_state_dict(load_file(EVAL / "models" / "dinov2_vits14_davis20.safetensors"))
    return model, timm_model


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(first, second, rounds: int) -> tuple[list[float], list[float]]:
    """One warm-up of each, then ``rounds`` of (first, second): the two time lists."""
    first(), second()
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(seconds(first))
        tb.append(seconds(second))
    return ta, tb


def chunks(n: int, batch: int) -> list[int]:
    return [min(batch, n - lo) for lo in range(0, n, batch)]


def report(name: str, needs: str, tm: list[float], tp: list[float], label: str = "") -> None:
    ratios = [a / b for a, b in zip(tm, tp)]
    print(f"{name}{label}: {needs}; metric {statistics.median(tm):.3f} s, plain {statistics.median(tp):.3f} s; "
          f"ratio per round {', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f} "
          f"(target <= 1.15)")


def paper_curves(args, model, timm_model, x) -> None:
    h, w = model.cfg.image_size
    attribution = torch.rand(1, *model.cfg.grid_size)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    batch = batch_size_for(model, args.memory_budget_gb)
    points = (h * w + w - 1) // w + 1

    def harness():
        score_attribution(model, x, attribution, 0, mask, protocol=Protocol(), memory_budget_gb=args.memory_budget_gb)

    def plain():
        with torch.inference_mode():
            for _ in range(2):  # two curves, each batched like the harness
                for lo in range(0, points, batch):
                    timm_model(x.expand(min(batch, points - lo), -1, -1, -1).contiguous())

    th, tp = interleaved(harness, plain, args.rounds)
    ratios = [a / b for a, b in zip(th, tp)]
    print(f"{args.model}: {2 * points} forwards per row (2 x {points} points, RISE step = {w} px), batch {batch} "
          f"(memory budget {args.memory_budget_gb} GB), {torch.get_num_threads()} threads")
    print(f"harness row {statistics.median(th):.2f} s, plain timm forwards {statistics.median(tp):.2f} s; "
          f"ratio per round {', '.join(f'{r:.3f}' for r in ratios)}; median ratio {statistics.median(ratios):.3f} "
          f"(target <= 1.15)")


def suite(args, model, timm_model, x) -> None:
    method, batch, target = args.method, batch_size_for(model, args.memory_budget_gb), 0
    t = torch.tensor([target])
    h, w = model.cfg.image_size
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    explain = get_method(method, model).attribute
    ctx = Context(model, x, target, mask, None, {method: explain}, lambda n, m: get_method(n, m).attribute,
                  sample="bench", seed=0, memory_budget_gb=args.memory_budget_gb, label=target)
    attribution = explain(x, t).float()
    print(f"suite metrics: method {method}, batch {batch}, {len(model.blocks)} blocks, explanation "
          f"{seconds(lambda: explain(x, t)):.3f} s (one call, not a round)")

    def forwards(sizes):
        def plain():
            with torch.inference_mode():
                for b in sizes:
                    timm_model(x.expand(b, -1, -1, -1).contiguous())
        return plain

    for name in args.metrics:
        score = get_metric(name).score

        def call():
            score(ctx, [method], [attribution])

        if name == "segmentation":
            tm = [seconds(call) for _ in range(args.rounds + 1)][1:]
            print(f"segmentation: 0 forwards; {statistics.median(tm) * 1e3:.1f} ms per map (rounds "
                  f"{', '.join(f'{s * 1e3:.1f}' for s in tm)} ms; absolute time, no ratio)")
            continue
        if name in ("avg-drop", "perturbation", "road"):
            n = {"avg-drop": 2, "perturbation": 18, "road": 2 * len(road.PERCENTAGES)}[name]
            sizes = chunks(n, batch)
            needs = f"{n} forwards (batches {'+'.join(map(str, sizes))})"
        elif name == "infidelity":
            sizes = [s for b in chunks(INFIDELITY_SAMPLES, min(batch, INFIDELITY_SAMPLES)) for s in (b, 1)]
            needs = f"{sum(sizes)} forwards (Captum: per batch the perturbed copies + the image; {'+'.join(map(str, sizes))})"
        if name in ("avg-drop", "perturbation", "road", "infidelity"):
            plain = forwards(sizes)
        elif name == "random-logit":
            other = torch.tensor([off_class(target, model.cfg.num_classes, image_seed(0, "bench"))])
            needs = "1 explanation (the off class)"

            def plain():
                explain(x, other)
        elif name == "max-sensitivity":
            sizes = chunks(SENSITIVITY_SAMPLES, min(batch, SENSITIVITY_SAMPLES))
            needs = f"{1 + SENSITIVITY_SAMPLES} explanations (the image + batches {'+'.join(map(str, sizes))})"

            def plain():
                explain(x, t)
                for b in sizes:
                    explain(x.expand(b, -1, -1, -1).contiguous(), t.expand(b))
        elif name == "mprt":
            randomized = copy.deepcopy(model)
            for layer in range(len(model.blocks)):
                randomize_block(randomized, layer, 0)
            needs = f"{len(model.blocks)} explanations (rebuilt on a randomized copy)"

            def plain():
                for _ in range(len(model.blocks)):
                    get_method(method, randomized).attribute(x, t)
        else:
            raise ValueError(f"--metrics: no plain reference for {name!r}; known: {', '.join(SUITE)}")
        if name != "road":
            report(name, needs, *interleaved(call, plain, args.rounds))
            continue
        spent = [0.0]
        solve = road.noisy_linear_imputation
        solves: list[tuple] = []  # the metric's own imputation calls, recorded once, replayed as plain work

        def timed_solve(*a, **k):
            if len(solves) < 2 * len(road.PERCENTAGES):
                solves.append((a, k))
            start = time.perf_counter()
            out = solve(*a, **k)
            spent[0] += time.perf_counter() - start
            return out

        def plain_with_imputation():  # the same 14 solves called directly, then the same forwards
            for a, k in solves:
                solve(*a, **k)
            plain()

        road.noisy_linear_imputation = timed_solve
        try:
            call()  # warm-up, recording the solves
            plain(), plain_with_imputation()
            tm, tp, ti, tq = [], [], [], []
            for _ in range(args.rounds):
                spent[0] = 0.0
                tm.append(seconds(call))
                ti.append(spent[0])
                tp.append(seconds(plain))
                tq.append(seconds(plain_with_imputation))
        finally:
            road.noisy_linear_imputation = solve
        report(name, needs, tm, tq, " vs plain work (metric time / (the 14 imputations called directly + plain "
                                    "forwards))")
        report(name, needs, tm, tp, " incl. imputation (metric time / plain forwards)")
        report(name, needs, [a - b for a, b in zip(tm, ti)], tp,
               " excl. imputation ((metric time - imputation time) / plain forwards)")
        print(f"road imputation: {len(road.PERCENTAGES) * 2} noisy linear solves, {statistics.median(ti):.3f} s per map "
              f"(rounds {', '.join(f'{s:.3f}' for s in ti)} s), share of the metric's time "
              f"{', '.join(f'{b / a:.1%}' for a, b in zip(tm, ti))}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("vit-b16", "dinov2-s14"), default="vit-b16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-budget-gb", type=float, default=1.0)
    parser.add_argument("--metrics", default=",".join(SUITE),
                        help=f"comma-separated suite metrics (default all: {','.join(SUITE)}); 'none' for none")
    parser.add_argument("--method", default="gae", help="the cheap method the explanation metrics re-run")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper curves' measurement")
    args = parser.parse_args()
    args.metrics = [] if args.metrics == "none" else [m for m in args.metrics.split(",") if m]
    unknown = [m for m in args.metrics if m not in SUITE]
    if unknown:
        parser.error(f"--metrics: unknown {', '.join(unknown)}; allowed: {', '.join(SUITE)} or none")
    torch.manual_seed(0)
    model, timm_model = load(args.model)
    x = torch.randn(1, 3, *model.cfg.image_size)
    if not args.no_paper:
        paper_curves(args, model, timm_model, x)
    if args.metrics:
        suite(args, model, timm_model, x)


if __name__ == "__main__":
    main()
