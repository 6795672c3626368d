"""Speed of the metric harness at the RISE protocol: one (image, method) row's Deletion + Insertion curves
(one image width of pixels per step: 225 points each at 224 px), AUPR and Pointing Game, divided by the
time of the same number of plain batched timm forwards (same batch size). Target <= 1.15.

Rounds are interleaved (harness, plain, harness, ...) and the ratio is the median of per-round ratios, as
the other benchmarks do: this machine is shared. ``--model vit-b16`` (default): a random-weight timm
ViT-B/16 at 224 px; ``--model dinov2-s14``: the real DINOv2-S/14 ``dinov2_vits14_davis20`` from ../shared/eval.
"""
import argparse
import statistics
import time
from pathlib import Path

import timm
import torch

from analysis.evaluate import Protocol, score_attribution
from caap.masking import batch_size_for
from vit_lens import HookedViT

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("vit-b16", "dinov2-s14"), default="vit-b16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-budget-gb", type=float, default=1.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model == "vit-b16":
        timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
        model = HookedViT.from_timm(timm_model)
    else:
        model = HookedViT.from_checkpoint(EVAL / "models" / "dinov2_vits14_davis20.safetensors")
        timm_model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=20,
                                       global_pool="token").eval()
        from safetensors.torch import load_file
        timm_model.load_state_dict(load_file(EVAL / "models" / "dinov2_vits14_davis20.safetensors"))
    h, w = model.cfg.image_size
    x = torch.randn(1, 3, h, w)
    attribution = torch.rand(1, *model.cfg.grid_size)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    batch = batch_size_for(model, args.memory_budget_gb)
    points = (h * w + w - 1) // w + 1
    n_forwards = 2 * points

    def harness():
        score_attribution(model, x, attribution, 0, mask, protocol=Protocol(), memory_budget_gb=args.memory_budget_gb)

    def plain():
        with torch.inference_mode():
            for _ in range(2):  # two curves, each batched like the harness
                for lo in range(0, points, batch):
                    timm_model(x.expand(min(batch, points - lo), -1, -1, -1).contiguous())

    harness(), plain()  # warm-up
    ratios, th, tp = [], [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        harness()
        a = time.perf_counter() - start
        start = time.perf_counter()
        plain()
        b = time.perf_counter() - start
        th.append(a), tp.append(b), ratios.append(a / b)
    print(f"{args.model}: {n_forwards} forwards per row (2 x {points} points, RISE step = {w} px), batch {batch} "
          f"(memory budget {args.memory_budget_gb} GB), {torch.get_num_threads()} threads")
    print(f"harness row {statistics.median(th):.2f} s, plain timm forwards {statistics.median(tp):.2f} s; "
          f"ratio per round {', '.join(f'{r:.3f}' for r in ratios)}; median ratio {statistics.median(ratios):.3f} "
          f"(target <= 1.15)")


if __name__ == "__main__":
    main()
