"""Time per forward of RISE and ViT-CX (batched through caap.masking) ÷ a plain batched timm forward.

ViT-B/16 at 224 px, random weights, one image; the masking engine's batch size B comes from the memory
budget, and the reference is timm's forward of a batch of B images. RISE runs ``--rise-batches`` · B masks;
ViT-CX runs 2k + 1 forwards (k clusters, counted by the method). Every overhead (mask generation,
clustering, weighted sums) is included. Interleaved rounds, median of per-round ratios. Target ≤ 1.2.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))

from caap.baselines.rise import RISE  # noqa: E402
from caap.baselines.vit_cx import ViTCX  # noqa: E402
from caap.masking import batch_size_for  # noqa: E402
from vit_lens import HookedViT  # noqa: E402


def seconds(fn) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-budget-gb", type=float, default=0.5)
    parser.add_argument("--rise-batches", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    model = HookedViT.from_timm(timm_model)
    image = torch.randn(1, 3, 224, 224)
    b = batch_size_for(model, args.memory_budget_gb)
    batch = torch.randn(b, 3, 224, 224)
    rise = RISE(model, n_masks=args.rise_batches * b, memory_budget_gb=args.memory_budget_gb, progress=False)
    vitcx = ViTCX(model, memory_budget_gb=args.memory_budget_gb, progress=False)
    runs = {"forward": lambda: timm_model(batch), "rise": lambda: rise.attribute(image, target=0),
            "vit-cx": lambda: vitcx.attribute(image, target=0)}
    for fn in runs.values():  # warm-up
        seconds(fn)
    n_forwards = {"forward": b, "rise": rise.n_masks, "vit-cx": 2 * vitcx.last_n_masks[0] + 1}
    per_forward = {name: [] for name in runs}
    for _ in range(args.rounds):  # interleaved rounds: drift of a shared machine hits every method alike
        for name, fn in runs.items():
            per_forward[name].append(seconds(fn) / n_forwards[name])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; ViT-B/16 224 px, random weights; "
          f"engine batch {b} ({args.memory_budget_gb} GB budget); {args.rounds} interleaved rounds")
    print(f"{'timm forward, batch ' + str(b):<28s} {statistics.median(per_forward['forward']) * 1e3:8.1f} ms/image")
    for name, label in (("rise", f"RISE ({rise.n_masks} masks)"), ("vit-cx", f"ViT-CX ({n_forwards['vit-cx']} fwd)")):
        ratio = statistics.median(x / y for x, y in zip(per_forward[name], per_forward["forward"]))
        print(f"{label:<28s} {statistics.median(per_forward[name]) * 1e3:8.1f} ms/forward  "
              f"{ratio:5.2f}x a batched timm forward (target <= 1.2)")


if __name__ == "__main__":
    main()
